import { describe, it, expect } from 'vitest'
import fc from 'fast-check'
import {
  allocateIpv4, parseIpv4, formatIpv4, parseSubnet4, parseSubnet6, inSubnet4, hostInterfaceIds6, hostRegionSize
} from '../../../node/network/ipam.ts'
import type { IpamVm } from '../../../node/network/ipam.ts'

const code = expect.objectContaining({ code: 'BAD_NETWORK_PLAN' })

/** A subnet from /22 to /29 inside 10.0.0.0/8. */
const subnetArb = fc.record({ len: fc.integer({ min: 22, max: 29 }), n: fc.nat() }).map(({ len, n }) => {
  const size = 2 ** (32 - len)
  const base = parseIpv4('10.0.0.0')! + (n % (2 ** 24 / size)) * size
  return `${formatIpv4(base)}/${len}`
})
const idsArb = fc.uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { maxLength: 12 })
const peersArb = fc.uniqueArray(fc.constantFrom('peer-a', 'peer-b', 'peer-c', 'peer-d'), { maxLength: 4 })

function check (subnet: string, vms: IpamVm[], hosts: string[]): void {
  const s = parseSubnet4(subnet)
  let out
  try {
    out = allocateIpv4('net', subnet, vms, hosts)
  } catch (err) {
    // Only a full subnet may refuse.
    expect(vms.length + hosts.length).toBeGreaterThan(s.size - 2)
    expect(err).toMatchObject({ code: 'BAD_NETWORK_PLAN', message: expect.stringContaining('is full') })
    return
  }
  const all = [...out.vms.values(), ...out.hosts.values()]
  expect(new Set(all).size).toBe(all.length)
  for (const a of all) {
    const n = parseIpv4(a)!
    expect(inSubnet4(s, n)).toBe(true)
    expect(n).not.toBe(s.base)
    expect(n).not.toBe(s.base + s.size - 1)
  }
  expect([...out.vms.keys()].sort()).toEqual(vms.map(v => v.id).sort())
}

describe('IPv4 text and subnets', () => {
  it('parses and formats dotted quads, refuses junk', () => {
    expect(parseIpv4('10.1.2.3')).toBe(0x0a010203)
    expect(formatIpv4(0xc0a80001)).toBe('192.168.0.1')
    for (const bad of ['10.1.2', '10.1.2.256', '01.1.1.1', 'a.b.c.d', '1.2.3.4 ']) expect(parseIpv4(bad)).toBeUndefined()
  })
  it('parses subnets, refuses host bits and bad lengths with a hint', () => {
    expect(parseSubnet4('10.0.0.0/24')).toMatchObject({ prefixLen: 24, size: 256, netmask: '255.255.255.0' })
    expect(() => parseSubnet4('10.0.0.5/24')).toThrow(expect.objectContaining({ message: expect.stringContaining('did you mean 10.0.0.0/24') }))
    expect(() => parseSubnet4('10.0.0.0/33')).toThrow(code)
    expect(() => parseSubnet4('10.0.0.0')).toThrow(code)
    expect(parseSubnet6('fd20::/64').cidr).toBe('fd20::/64')
    expect(() => parseSubnet6('fd20::1/64')).toThrow(code)
    expect(() => parseSubnet6('fd20::/96')).toThrow(code)
  })
})

describe('allocateIpv4', () => {
  it('gives unique addresses inside the subnet, never network, broadcast or a host address (property)', () => {
    fc.assert(fc.property(subnetArb, idsArb, peersArb, (subnet, ids, hosts) => {
      check(subnet, ids.map(id => ({ id })), hosts)
    }))
  })
  it('is deterministic and independent of input order (property)', () => {
    fc.assert(fc.property(idsArb, peersArb, fc.array(fc.nat({ max: 5 }), { minLength: 12, maxLength: 12 }), (ids, hosts, created) => {
      const vms = ids.map((id, i) => ({ id, created: created[i] }))
      const a = allocateIpv4('net', '10.9.0.0/24', vms, hosts)
      const b = allocateIpv4('net', '10.9.0.0/24', [...vms].reverse(), [...hosts].reverse())
      expect([...b.vms.entries()].sort()).toEqual([...a.vms.entries()].sort())
      expect([...b.hosts.entries()].sort()).toEqual([...a.hosts.entries()].sort())
    }))
  })
  it('keeps every address when VMs created later are added (property)', () => {
    fc.assert(fc.property(subnetArb, idsArb, idsArb, peersArb, (subnet, ids, more, hosts) => {
      const first = ids.map(id => ({ id, created: 1 }))
      const later = more.filter(id => !ids.includes(id)).map(id => ({ id, created: 2 }))
      let before
      try { before = allocateIpv4('net', subnet, first, hosts) } catch { return } // full already
      let after
      try { after = allocateIpv4('net', subnet, [...first, ...later], hosts) } catch { return } // full now
      for (const [id, a] of before.vms) expect(after.vms.get(id)).toBe(a)
      expect(after.hosts).toEqual(before.hosts)
    }))
  })
  it('keeps VM addresses when hosts join, while the hosts fit in the top region (property)', () => {
    fc.assert(fc.property(idsArb, peersArb, (ids, hosts) => {
      const vms = ids.map(id => ({ id }))
      const alone = allocateIpv4('net', '10.9.0.0/24', vms, [])
      const withHosts = allocateIpv4('net', '10.9.0.0/24', vms, hosts)
      expect(withHosts.vms).toEqual(alone.vms)
    }))
  })
  it('puts hosts at the top of the subnet and VMs below', () => {
    const out = allocateIpv4('net', '10.9.0.0/24', [{ id: 'vm-1' }, { id: 'vm-2' }], ['peer-a', 'peer-b'])
    const region = hostRegionSize(254)
    for (const a of out.hosts.values()) expect(parseIpv4(a)! & 0xff).toBeGreaterThan(254 - region)
    for (const a of out.vms.values()) expect(parseIpv4(a)! & 0xff).toBeLessThanOrEqual(254 - region)
  })
  it('lets static addresses win and checks them', () => {
    const out = allocateIpv4('net', '10.9.0.0/24', [{ id: 'b', ip: '10.9.0.5' }, { id: 'a' }], ['peer-a'])
    expect(out.vms.get('b')).toBe('10.9.0.5')
    expect(out.vms.get('a')).not.toBe('10.9.0.5')
    expect(() => allocateIpv4('net', '10.9.0.0/24', [{ id: 'a', ip: '10.8.0.5' }])).toThrow(expect.objectContaining({ message: 'network net: VM a has the static address 10.8.0.5, outside the subnet 10.9.0.0/24' }))
    expect(() => allocateIpv4('net', '10.9.0.0/24', [{ id: 'a', ip: '10.9.0.255' }])).toThrow(expect.objectContaining({ message: expect.stringContaining('broadcast') }))
    expect(() => allocateIpv4('net', '10.9.0.0/24', [{ id: 'a', ip: '10.9.0.9' }, { id: 'b', ip: '10.9.0.9' }])).toThrow(expect.objectContaining({ message: 'network net: the static address 10.9.0.9 is given to two VMs (a and b)' }))
    expect(() => allocateIpv4('net', '10.9.0.0/24', [{ id: 'a', ip: 'x' }])).toThrow(code)
    expect(() => allocateIpv4('net', '10.9.0.0/24', [{ id: 'a' }, { id: 'a' }])).toThrow(code)
  })
  it('refuses a subnet that is full or too small', () => {
    expect(() => allocateIpv4('net', '10.9.0.0/30', [{ id: 'a' }, { id: 'b' }], ['peer-a'])).toThrow(expect.objectContaining({ message: expect.stringContaining('is full') }))
    expect(() => allocateIpv4('net', '10.9.0.0/31', [])).toThrow(expect.objectContaining({ message: expect.stringContaining('too small') }))
  })
})

describe('hostInterfaceIds6', () => {
  it('gives distinct, stable, non-EUI-64 interface ids', () => {
    const a = hostInterfaceIds6('net', ['peer-a', 'peer-b', 'peer-c'])
    const b = hostInterfaceIds6('net', ['peer-c', 'peer-a'])
    expect(Buffer.from(b.get('peer-a')!)).toEqual(Buffer.from(a.get('peer-a')!))
    expect(new Set([...a.values()].map(x => Buffer.from(x).toString('hex'))).size).toBe(3)
    for (const iid of a.values()) expect(iid[3] === 0xff && iid[4] === 0xfe).toBe(false)
  })
})
