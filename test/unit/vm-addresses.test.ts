/**
 * What `vm list` and `vm show` print as a VM's addresses (node/network/vm-addresses.ts), and the
 * `vm list` output formats. That the printed address is the one the guest gets from DHCP is shown
 * with real guests in test/netns/mesh-network.test.ts.
 */
import { describe, it, expect } from 'vitest'
import { vmAddresses } from '../../node/network/vm-addresses.ts'
import { allocateIpv4, allocateIpv6, parseSubnet6 } from '../../node/network/ipam.ts'
import { toYaml } from '../../node/cli/user-commands.ts'
import { commands, type Io } from '../../node/cli/commands.ts'
import type { World, VmEntry } from '../../crdt/world.ts'
import type { ApiClient } from '../../node/api/client.ts'

const id = (c: string): string => c.repeat(64)
const vm = (c: string, created: number, net: string, host: string | null, ip?: string, extra: Partial<VmEntry> = {}): VmEntry => ({
  id: id(c), name: `vm-${c}`, owner: 'F'.repeat(40), labels: {}, desired: 'running', host, claimants: [], requests: [], created, expires: 0, via: '', vias: [],
  spec: {} as VmEntry['spec'], needs: { vcpus: 1, memMiB: 256, diskGiB: 1 }, nics: [{ net, ...(ip === undefined ? {} : { ip }) }], ...extra
})
const world = (vms: VmEntry[], mode: 'dhcp' | 'static' | 'dhcpv6', gateway = 'none'): World => ({
  vms: new Map(vms.map(v => [v.id, v])),
  nets: new Map([['lan', { id: id('9'), name: 'lan', owner: 'F'.repeat(40), created: 0, requests: [], spec: { name: 'lan', subnet: { ipv4: '10.9.0.0/24', ipv6: 'fd09::/64' }, mode, gateway } as any }]]),
  images: new Map(), requests: new Map(), revoked: new Set(), hosts: [], decisions: new Map()
})

describe('VM addresses', () => {
  it('dhcp: the allocation every host computes for its DHCP server; static addresses first, the first claimant keeps a duplicate', () => {
    const vms = [vm('a', 1, 'lan', 'H1', '10.9.0.50'), vm('b', 2, 'lan', 'H2'), vm('c', 3, 'lan', 'H1', '10.9.0.50'), vm('d', 4, 'lan', 'H2', 'fd09::7')]
    const out = vmAddresses(world(vms, 'dhcp'))
    const expected = allocateIpv4(id('9'), '10.9.0.0/24', [{ id: id('a'), created: 1, ip: '10.9.0.50' }, { id: id('b'), created: 2 }, { id: id('c'), created: 3 }, { id: id('d'), created: 4 }], ['H1', 'H2'])
    expect(out.get(id('a'))).toEqual([{ net: 'lan', address: '10.9.0.50' }])
    expect(out.get(id('b'))).toEqual([{ net: 'lan', address: expected.vms.get(id('b')) }])
    // c asked for a's address: it gets an allocated one instead.
    expect(out.get(id('c'))?.[0].address).not.toBe('10.9.0.50')
    expect(out.get(id('d'))).toEqual(expect.arrayContaining([{ net: 'lan', address: 'fd09::7' }]))
  })

  it('dhcpv6: the IPv4 address as in dhcp mode and the IPv6 address the data plane hands out; a static IPv6 address wins', () => {
    const vms = [vm('a', 1, 'lan', 'H1'), vm('b', 2, 'lan', 'H2', 'fd09::7')]
    const out = vmAddresses(world(vms, 'dhcpv6'))
    const v6 = allocateIpv6(id('9'), parseSubnet6('fd09::/64').prefix, [id('a')], new Set(['fd09::7']))
    expect(out.get(id('a'))).toEqual(expect.arrayContaining([{ net: 'lan', address: v6.get(id('a')) }]))
    expect(out.get(id('a'))?.find(a => !a.address.includes(':'))?.address).toMatch(/^10\.9\.0\./)
    expect(out.get(id('b'))).toEqual(expect.arrayContaining([{ net: 'lan', address: 'fd09::7' }]))
    expect(out.get(id('b'))?.filter(a => a.address.includes(':'))).toHaveLength(1)
  })

  it('static mode: only static addresses; unplaced, destroyed and rejected VMs have none', () => {
    const vms = [vm('a', 1, 'lan', 'H1', '10.9.0.5'), vm('b', 2, 'lan', 'H1'), vm('c', 3, 'lan', null, '10.9.0.6'),
      vm('d', 4, 'lan', 'H1', '10.9.0.7', { desired: 'destroyed' }), vm('e', 5, 'lan', 'H1', '10.9.0.255')]
    const out = vmAddresses(world(vms, 'static'))
    expect(out.get(id('a'))).toEqual([{ net: 'lan', address: '10.9.0.5' }])
    for (const c of ['b', 'c', 'd', 'e']) expect(out.get(id(c)), c).toBeUndefined()
  })
})

describe('vm list --output', () => {
  const view = { id: id('a'), name: 'web', owner: 'F'.repeat(40), host: 'H', hostName: 'alpha', status: 'running', desired: 'running', labels: { tier: 'front' }, image: 'tiny', vcpus: 1, memMiB: 256, diskGiB: 10, arch: 'x86_64', nics: [], claimants: [], created: new Date(Date.now() - 3_600_000).toISOString(), runs: true, ha: 'restart', addresses: [{ net: 'lan', address: '10.9.0.5' }] }
  async function run (output?: string): Promise<string> {
    const out: string[] = []
    const io: Io = { out: s => { out.push(s) }, err: s => { out.push(s) } }
    const c = commands.find(c => c.name === 'vm list')
    await c?.run({ values: output === undefined ? {} : { output }, positionals: [], g: { socket: '/nonexistent', json: false }, io, api: { call: async () => [view] } as unknown as ApiClient })
    return out.join('\n')
  }

  it('table shows addresses; wide adds image, size, HA policy and age; json and yaml carry the same data', async () => {
    expect(await run()).toMatch(/NAME +ID +STATUS +HOST +ADDRESSES[\s\S]*web .*10\.9\.0\.5/)
    const wide = await run('wide')
    expect(wide).toMatch(/IMAGE +SIZE +HA +AGE/)
    expect(wide).toMatch(/tiny +1c\/256M\/10G +restart +60m ago/)
    expect(JSON.parse(await run('json'))).toEqual([view])
    const yaml = await run('yaml')
    expect(yaml).toMatch(/^- "id": "a{64}"\n {2}"name": "web"/)
    expect(yaml).toContain('"addresses":\n    - "net": "lan"\n      "address": "10.9.0.5"')
  })

  it('an unknown format is a usage error, before anything is asked of the daemon', async () => {
    await expect(run('xml')).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/--output must be one of table, wide, json, yaml/) })
  })

  it('toYaml of empty and nested values', () => {
    expect(toYaml([])).toBe('[]')
    expect(toYaml({})).toBe('{}')
    expect(toYaml({ a: { b: [1, 'x'] } })).toBe('\n"a":\n  "b":\n    - 1\n    - "x"')
  })
})
