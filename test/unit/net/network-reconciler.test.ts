/**
 * The network reconciler's pure parts: the plan input built from the replicated state (members,
 * endpoints, networks, taps, VMs), deterministic resolution of bad input, endpoint derivation and
 * the config keys; and one loop over the fake driver (a second pass changes nothing).
 */
import { describe, it, expect } from 'vitest'
import nacl from 'tweetnacl'
import { buildPlanInput, planResilient, deriveEndpoints, memberEndpoints, NetworkReconciler } from '../../../node/reconciler/network.ts'
import { parseNetworkConfig, isEndpoint } from '../../../node/net/config.ts'
import { tapName, vmMac } from '../../../node/drivers/hypervisor/types.ts'
import { fakeNetworkDriver } from '../../../node/drivers/network/fake.ts'
import { silentLogger } from '../../../node/log.ts'
import type { MeshDoc } from '../../../crdt/schema.ts'
import type { World, VmEntry, NetEntry } from '../../../crdt/world.ts'

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const keys = ['A', 'B', 'C'].map(() => nacl.box.keyPair())
const config = parseNetworkConfig({}, 'test.toml')

function doc (extra: Partial<Record<string, Record<string, unknown>>> = {}): MeshDoc {
  const host = (i: number, port: number): any => ({
    name: ['a', 'b', 'c'][i], addresses: [`/ip4/10.0.0.${i + 1}/tcp/9777/p2p/x`, '/ip4/127.0.0.1/tcp/9777/p2p/x'], wgPublicKey: b64(keys[i].publicKey), version: '0', updated: '', wgPort: port, ...(extra[['pa', 'pb', 'pc'][i]] ?? {})
  })
  return {
    mesh: { id: 'mesh-1', name: 'm', founder: 'pa', created: '', policy: { admit: 'any-member', expellers: [] } },
    members: { pa: { name: 'a', admittedBy: 'pa', admittedAt: '' }, pb: { name: 'b', admittedBy: 'pa', admittedAt: '' }, pc: { name: 'c', admittedBy: 'pa', admittedAt: '' } },
    hosts: { pa: host(0, 51820), pb: host(1, 51821), pc: host(2, 51820) }
  }
}

function net (name: string, over: Partial<NetEntry['spec']> = {}, created = 1): NetEntry {
  return { id: `net-${name}`, name, owner: 'o', created, requests: [], spec: { name, subnet: { ipv4: '10.9.0.0/24' }, mode: 'static', gateway: 'none', labels: {}, ...over } }
}

function vm (id: string, host: string | null, nics: VmEntry['nics'], created = 1): VmEntry {
  return { id, name: `vm-${id}`, owner: 'o', labels: {}, spec: {} as any, needs: { vcpus: 1, memMiB: 64, diskGiB: 1 }, nics, desired: 'running', created, expires: 0, via: 'pa', requests: [], host, claimants: [] }
}

function world (nets: NetEntry[], vms: VmEntry[]): World {
  return { vms: new Map(vms.map(v => [v.id, v])), nets: new Map(nets.map(n => [n.name, n])), images: new Map(), requests: new Map(), revoked: new Set(), hosts: [], decisions: new Map() }
}

const opts = { self: 'pa', wgPrivateKey: b64(keys[0].secretKey), wgPublicKey: b64(keys[0].publicKey), config, runtimeDir: '/run/pc-test/net' }

describe('plan input from the replicated state', () => {
  it('lists every member with its key and endpoints, and per network the hosts, taps and VMs', () => {
    const w = world([net('lan')], [
      vm('aaaaaaaa01', 'pa', [{ net: 'lan', ip: '10.9.0.5' }]),
      vm('cccccccc01', 'pc', [{ net: 'other' }, { net: 'lan' }], 2),
      vm('bbbbbbbb01', null, [{ net: 'lan' }])
    ])
    const { input, problems } = buildPlanInput(doc(), w, opts)
    expect(problems).toEqual([])
    expect(input.members.map(m => [m.peerId, m.endpoints])).toEqual([['pa', ['10.0.0.1:51820']], ['pb', ['10.0.0.2:51821']], ['pc', ['10.0.0.3:51820']]])
    expect(input.networks).toHaveLength(1)
    const n = input.networks[0]
    expect(n).toMatchObject({ id: 'net-lan', hostsWithVms: ['pa', 'pc'], localTaps: [tapName('aaaaaaaa01', 0)], mode: 'static' })
    expect(n.vms).toEqual([
      { id: 'aaaaaaaa01', name: 'vm-aaaaaaaa01', mac: vmMac('aaaaaaaa01', 0), ip: '10.9.0.5', hostPeerId: 'pa', created: 1 },
      { id: 'cccccccc01', name: 'vm-cccccccc01', mac: vmMac('cccccccc01', 1), hostPeerId: 'pc', created: 2 }
    ])
    expect(input.self).toMatchObject({ peerId: 'pa', listenPort: 51820 })
  })

  it('prefers published endpoints and drops members whose key another member also publishes', () => {
    const d = doc({ pb: { wgEndpoints: ['[2001:db8::2]:51820', 'bogus'], wgPublicKey: b64(keys[2].publicKey) } })
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(input.members.map(m => m.peerId)).toEqual(['pa'])
    expect(problems[0]).toMatch(/published by pb, pc/)
    expect(memberEndpoints(d.hosts.pb)).toEqual(['[2001:db8::2]:51820'])
  })

  it('bad static addresses: outside the subnet or taken → the later VM keeps none, the network still works', () => {
    const w = world([net('lan')], [
      vm('v1', 'pa', [{ net: 'lan', ip: '10.9.0.7' }], 1),
      vm('v2', 'pc', [{ net: 'lan', ip: '10.9.0.7' }], 2),
      vm('v3', 'pc', [{ net: 'lan', ip: '10.10.0.7' }], 3),
      vm('v4', 'pc', [{ net: 'lan', ip: 'fd00::1' }], 4)
    ])
    const { input, problems } = buildPlanInput(doc(), w, opts)
    expect(input.networks[0].vms?.map(v => v.ip ?? '-')).toEqual(['10.9.0.7', '-', '-', '-'])
    expect(problems).toHaveLength(3)
    expect(problems.join('\n')).toMatch(/already given to vm-v1[\s\S]*not a usable address of 10\.9\.0\.0\/24[\s\S]*no IPv6 subnet/)
    const { desired, excluded } = planResilient(input, ['net-lan'])
    expect(excluded).toEqual([])
    expect(desired.networks.map(n => n.name)).toEqual(['lan'])
  })

  it('networks that cannot be planned together: the later one is left out here, the VNIs of the others do not move', () => {
    const nets = [net('first', { mode: 'dhcp', subnet: { ipv4: '10.9.0.0/24' } }, 1), net('second', { mode: 'dhcp', subnet: { ipv4: '10.9.0.128/25' } }, 2), net('third', {}, 3)]
    const w = world(nets, [vm('v1', 'pa', [{ net: 'first' }]), vm('v2', 'pa', [{ net: 'second' }]), vm('v3', 'pa', [{ net: 'third' }])])
    const { input } = buildPlanInput(doc(), w, opts)
    const { desired, excluded } = planResilient(input, ['net-first', 'net-second', 'net-third'])
    expect(excluded.map(e => e.network)).toEqual(['second'])
    expect(excluded[0].reason).toMatch(/overlap/)
    expect(desired.networks.map(n => n.name).sort()).toEqual(['first', 'third'])
    const alone = planResilient(buildPlanInput(doc(), world(nets, [vm('v3', 'pa', [{ net: 'third' }])]), opts).input, [])
    expect(desired.networks.find(n => n.name === 'third')?.vni).toBe(alone.desired.networks[0].vni)
  })
})

describe('endpoints and config', () => {
  it('derives endpoints from libp2p addresses, leaving out loopback and unspecified unless that is all', () => {
    expect(deriveEndpoints(['/ip4/0.0.0.0/tcp/1', '/ip4/127.0.0.1/tcp/1', '/ip4/192.0.2.1/tcp/1/p2p/x', '/ip6/2001:db8:0::1/tcp/1', '/ip6/fe80::1/tcp/1'], 51820))
      .toEqual(['192.0.2.1:51820', '[2001:db8::1]:51820'])
    expect(deriveEndpoints(['/ip4/127.0.0.1/tcp/1', '/ip4/0.0.0.0/tcp/1'], 7)).toEqual(['127.0.0.1:7'])
    expect(deriveEndpoints(['/dns4/example.org/tcp/1'], 7)).toEqual([])
  })
  it('parses the network keys with clear errors', () => {
    expect(config).toEqual({ mode: 'auto', wgIfname: 'pc-wg0', wgPort: 51820, endpoints: [], underlayMtu: 1500 })
    expect(parseNetworkConfig({ network: 'linux', wireguard_interface: 'pc-wg1', wireguard_port: 51000, wireguard_endpoints: ['203.0.113.7:51000', '[2001:db8::7]:51000'], underlay_mtu: 9000 }, 'f'))
      .toEqual({ mode: 'linux', wgIfname: 'pc-wg1', wgPort: 51000, endpoints: ['203.0.113.7:51000', '[2001:db8::7]:51000'], underlayMtu: 9000 })
    expect(() => parseNetworkConfig({ network: 'ovs' }, 'f')).toThrow(/network must be "auto", "linux" or "none"/)
    expect(() => parseNetworkConfig({ wireguard_interface: 'wg0' }, 'f')).toThrow(/pc- prefix/)
    expect(() => parseNetworkConfig({ wireguard_endpoints: ['host.example:51820'] }, 'f')).toThrow(/wireguard_endpoints/)
    expect(() => parseNetworkConfig({ underlay_mtu: 1300 }, 'f')).toThrow(/underlay_mtu/)
    expect(isEndpoint('256.1.1.1:1')).toBe(false)
    expect(isEndpoint('1.1.1.1:0')).toBe(false)
  })
})

describe('the loop over the fake driver', () => {
  it('builds the data plane, publishes its view once, and a second pass applies nothing', async () => {
    const d = doc()
    const changes: string[] = []
    const store: any = {
      inMesh: true, self: 'pa', get doc () { return d },
      async change (what: string, fn: (x: any) => void) { changes.push(what); fn(d) }
    }
    const driver = fakeNetworkDriver()
    const w = world([net('lan')], [vm('aaaaaaaa01', 'pa', [{ net: 'lan' }]), vm('cccccccc01', 'pc', [{ net: 'lan' }])])
    const r = new NetworkReconciler({ store, world: () => w, driver, config, wgPrivateKey: opts.wgPrivateKey, wgPublicKey: opts.wgPublicKey, runtimeDir: opts.runtimeDir, log: silentLogger })
    await r.settle()
    expect(r.stats.errors).toBe(0)
    const first = r.stats.steps
    expect(first).toBeGreaterThan(3)
    expect(Object.values((d.hosts.pa as any).nets)).toMatchObject([{ fdb: [expect.stringMatching(/^fd/)], taps: [tapName('aaaaaaaa01', 0)], dnsmasq: false }])
    await r.settle()
    expect(r.stats.steps).toBe(first)
    expect(changes).toEqual(['publish network status'])
    r.stop()
  })
})
