import { describe, it, expect } from 'vitest'
import fc from 'fast-check'
import {
  meshPrefix, hostSubnet, assignOverlayAddresses, overlayAddress, findAddressCollisions, parseIpv6, formatIpv6,
  assignVnis, rawVni, bridgeName, vxlanName, isOurIfname, checkIfname, networkMtu, wireguardMtu, deriveMac,
  isReservedInterfaceId, VNI_MIN, VNI_MAX, IFNAME_MAX
} from '../../../node/network/addressing.ts'

describe('mesh prefix and host addresses', () => {
  it('is a ULA /48 under fd00::/8, stable for a mesh id', () => {
    const p = meshPrefix('mesh-1')
    expect(p).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/)
    expect(meshPrefix('mesh-1')).toBe(p)
    expect(meshPrefix('mesh-2')).not.toBe(p)
    expect(hostSubnet('mesh-1')).toBe(p.replace('/48', '/64'))
  })
  it('puts every host in the host /64 of its mesh', () => {
    const a = overlayAddress('mesh-1', '12D3KooWA')
    const b = parseIpv6(a)
    expect([...b.subarray(0, 8)]).toEqual([...parseIpv6(hostSubnet('mesh-1').split('/')[0]).subarray(0, 8)])
    expect(assignOverlayAddresses('mesh-1', ['12D3KooWA']).get('12D3KooWA')).toBe(a)
  })
  it('does not depend on input order or duplicates', () => {
    fc.assert(fc.property(fc.uniqueArray(fc.string({ minLength: 1 }), { maxLength: 20 }), fc.string({ minLength: 1 }), (ids, mesh) => {
      const a = assignOverlayAddresses(mesh, ids)
      const b = assignOverlayAddresses(mesh, [...ids].reverse().concat(ids))
      expect([...b.entries()].sort()).toEqual([...a.entries()].sort())
      expect(new Set(a.values()).size).toBe(ids.length)
    }))
  })
  it('resolves collisions deterministically (forced through reserved ids and rehashing)', () => {
    // No natural 64-bit collision can be found in a test; check the resolver with a tiny space
    // instead: every address unique, and findAddressCollisions reports none for distinct hashes.
    const ids = Array.from({ length: 300 }, (_, i) => `peer-${i}`)
    const addrs = assignOverlayAddresses('m', ids)
    expect(new Set(addrs.values()).size).toBe(300)
    expect(findAddressCollisions(ids)).toEqual([])
    expect(findAddressCollisions(['x', 'x'])).toEqual([]) // duplicates are one peer
  })
  it('resolves forced collisions: the smallest peer id keeps its address, the others rehash', () => {
    // A 2-bit hash so that collisions are certain.
    const tiny = (peerId: string, attempt: number): Uint8Array => {
      let h = attempt * 7
      for (const c of peerId) h = (h * 31 + c.charCodeAt(0)) >>> 0
      return Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 1 + (h % 4)])
    }
    fc.assert(fc.property(fc.uniqueArray(fc.string({ minLength: 1 }), { minLength: 1, maxLength: 4 }), ids => {
      const a = assignOverlayAddresses('m', ids, tiny)
      expect(new Set(a.values()).size).toBe(ids.length)
      expect([...assignOverlayAddresses('m', [...ids].reverse(), tiny).entries()].sort()).toEqual([...a.entries()].sort())
      const smallest = [...ids].sort()[0]
      expect(a.get(smallest)).toBe(assignOverlayAddresses('m', [smallest], tiny).get(smallest))
    }))
    expect(findAddressCollisions(['a', 'e'], tiny)).toEqual([['a', 'e']])
  })
  it('knows reserved interface ids', () => {
    expect(isReservedInterfaceId(new Uint8Array(8))).toBe(true)
    expect(isReservedInterfaceId(Uint8Array.from([0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80]))).toBe(true)
    expect(isReservedInterfaceId(Uint8Array.from([0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]))).toBe(false)
  })
})

describe('IPv6 text', () => {
  it('formats per RFC 5952', () => {
    expect(formatIpv6(parseIpv6('FD00:0:0:0:0:0:0:1'))).toBe('fd00::1')
    expect(formatIpv6(parseIpv6('fd00:0:0:1:0:0:0:1'))).toBe('fd00:0:0:1::1')
    expect(formatIpv6(parseIpv6('fd00:1:0:1:0:1:0:1'))).toBe('fd00:1:0:1:0:1:0:1')
    expect(formatIpv6(parseIpv6('::'))).toBe('::')
  })
  it('round-trips any 16 bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), bytes => {
      expect([...parseIpv6(formatIpv6(bytes))]).toEqual([...bytes])
    }))
  })
  it('rejects junk', () => {
    for (const bad of ['', '1:2:3', 'fd00::1::2', 'g::1', '1.2.3.4', '1:2:3:4:5:6:7:8:9']) {
      expect(() => parseIpv6(bad)).toThrow(expect.objectContaining({ code: 'BAD_ADDRESS' }))
    }
  })
})

describe('VNIs', () => {
  it('are in 1..0xfffffe, unique, and independent of input order', () => {
    fc.assert(fc.property(fc.uniqueArray(fc.string(), { maxLength: 30 }), ids => {
      const a = assignVnis(ids)
      const b = assignVnis([...ids].reverse())
      expect([...b.entries()].sort()).toEqual([...a.entries()].sort())
      const values = [...a.values()]
      expect(new Set(values).size).toBe(ids.length)
      for (const v of values) { expect(v).toBeGreaterThanOrEqual(VNI_MIN); expect(v).toBeLessThanOrEqual(VNI_MAX) }
    }))
  })
  it('resolves a real collision by order of network id', () => {
    // Find two ids with the same raw VNI (birthday bound: ~5000 tries for 2^24).
    const seen = new Map<number, string>()
    let pair: [string, string] | undefined
    for (let i = 0; pair === undefined; i++) {
      const id = `net-${i}`
      const v = rawVni(id)
      const other = seen.get(v)
      if (other !== undefined) pair = [other, id]
      seen.set(v, id)
    }
    const [first, second] = pair.sort()
    const vnis = assignVnis([second, first])
    expect(vnis.get(first)).toBe(rawVni(first))
    expect(vnis.get(second)).toBe(rawVni(first) === VNI_MAX ? VNI_MIN : rawVni(first) + 1)
  })
})

describe('device names, MTU, MACs', () => {
  it('names fit IFNAMSIZ with the pc- prefix', () => {
    fc.assert(fc.property(fc.integer({ min: VNI_MIN, max: VNI_MAX }), vni => {
      for (const n of [bridgeName(vni), vxlanName(vni)]) {
        expect(n.length).toBeLessThanOrEqual(IFNAME_MAX)
        expect(isOurIfname(n)).toBe(true)
      }
      expect(bridgeName(vni)).not.toBe(vxlanName(vni))
    }))
    expect(() => bridgeName(0)).toThrow()
    expect(() => checkIfname('eth0')).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    expect(() => checkIfname('pc-' + 'x'.repeat(13))).toThrow()
    expect(checkIfname('pc-wg0')).toBe('pc-wg0')
  })
  it('computes MTUs from the underlay', () => {
    expect(wireguardMtu(1500, false)).toBe(1440)
    expect(wireguardMtu(1500, true)).toBe(1420)
    expect(networkMtu(1500, false)).toBe(1370)
    expect(networkMtu(1500, true)).toBe(1350)
    expect(networkMtu(9000, true)).toBe(8850)
    expect(() => networkMtu(1400, true)).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
  })
  it('derives locally administered unicast MACs', () => {
    fc.assert(fc.property(fc.string(), seed => {
      const mac = deriveMac(seed)
      expect(mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/)
      const first = parseInt(mac.slice(0, 2), 16)
      expect(first & 1).toBe(0)
      expect(first & 2).toBe(2)
    }))
  })
})
