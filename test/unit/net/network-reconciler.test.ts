/**
 * The network reconciler's pure parts: the plan input built from the replicated state (members and
 * their WireGuard keys derived from their peer ids, endpoints, networks, taps, VMs), deterministic
 * resolution of bad input, endpoint derivation and the config keys; and one loop over the fake
 * driver (a second pass changes nothing).
 */
import { describe, it, expect } from 'vitest'
import nacl from 'tweetnacl'
import { ImmutableString } from '@automerge/automerge'
import { generateKeyPair, generateKeyPairFromSeed, publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { buildPlanInput, planResilient, deriveEndpoints, memberEndpoints, NetworkReconciler } from '../../../node/network/reconciler.ts'
import { planHost } from '../../../node/network/plan.ts'
import { compareStrings } from '../../../node/network/addressing.ts'
import { parseNetworkConfig, isEndpoint } from '../../../node/network/config.ts'
import { tapName, vmMac } from '../../../node/compute/hypervisor/types.ts'
import { fakeNetworkDriver } from '../../../node/network/drivers/fake.ts'
import { silentLogger } from '../../../node/log.ts'
import { wireguardKeyFromPeerKey, wireguardPublicKeyForPeer, type WireguardKeyPair } from '../../../keys/wireguard.ts'
import type { MeshDoc } from '../../../crdt/schema.ts'
import type { World, VmEntry, NetEntry } from '../../../crdt/world.ts'

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const config = parseNetworkConfig({}, 'test.toml')

// Three hosts with real Ed25519 peer keys, named pa < pb < pc in peer id order.
const peerKeys = await Promise.all([1, 2, 3].map(async i => await generateKeyPairFromSeed('Ed25519', new Uint8Array(32).fill(i))))
const hosts = peerKeys.map(k => ({ id: peerIdFromPrivateKey(k).toString(), wg: wireguardKeyFromPeerKey(k) })).sort((a, b) => compareStrings(a.id, b.id))
const [pa, pb, pc] = hosts.map(h => h.id)
const wg: Record<string, WireguardKeyPair> = Object.fromEntries(hosts.map(h => [h.id, h.wg]))
/** Another Ed25519 key with the sign of x flipped: a different peer id with the same WireGuard key. */
const negated = (peer: string): string => {
  const raw = new Uint8Array(peerIdFromString(peer).publicKey!.raw); raw[31] ^= 0x80
  return peerIdFromPublicKey(publicKeyFromRaw(raw)).toString()
}

function doc (extra: Partial<Record<string, Record<string, unknown>>> = {}): MeshDoc {
  const host = (i: number, port: number): any => ({
    name: ['a', 'b', 'c'][i], addresses: [`/ip4/10.0.0.${i + 1}/tcp/9777/p2p/x`, '/ip4/127.0.0.1/tcp/9777/p2p/x'], wgPublicKey: wg[[pa, pb, pc][i]].publicKey, version: '0', updated: '', wgPort: port, ...(extra[[pa, pb, pc][i]] ?? {})
  })
  return {
    mesh: { id: 'mesh-1', name: 'm', founder: pa, created: '', policy: { admit: 'any-member', expellers: [] }, format: 2, nonce: '' } as MeshDoc['mesh'],
    members: { [pa]: { name: 'a', admittedBy: pa, admittedAt: '' }, [pb]: { name: 'b', admittedBy: pa, admittedAt: '' }, [pc]: { name: 'c', admittedBy: pa, admittedAt: '' } },
    hosts: { [pa]: host(0, 51820), [pb]: host(1, 51821), [pc]: host(2, 51820) }
  } as MeshDoc
}

function net (name: string, over: Partial<NetEntry['spec']> = {}, created = 1): NetEntry {
  return { id: `net-${name}`, name, owner: 'o', created, requests: [], spec: { name, subnet: { ipv4: '10.9.0.0/24' }, mode: 'static', gateway: 'none', labels: {}, ...over } }
}

function vm (id: string, host: string | null, nics: VmEntry['nics'], created = 1): VmEntry {
  return { id, name: `vm-${id}`, owner: 'o', labels: {}, spec: {} as any, needs: { vcpus: 1, memMiB: 64, diskGiB: 1 }, nics, desired: 'running', created, expires: 0, vias: [], via: pa, requests: [], host, claimants: [] }
}

function world (nets: NetEntry[], vms: VmEntry[]): World {
  return { vms: new Map(vms.map(v => [v.id, v])), nets: new Map(nets.map(n => [n.name, n])), images: new Map(), requests: new Map(), revoked: new Set(), hosts: [], decisions: new Map() }
}

const opts = { self: pa, wgPrivateKey: wg[pa].privateKey, config, runtimeDir: '/run/pc-test/net' }

describe('plan input from the replicated state', () => {
  it('lists every member with its key and endpoints, and per network the hosts, taps and VMs', () => {
    const w = world([net('lan')], [
      vm('aaaaaaaa01', pa, [{ net: 'lan', ip: '10.9.0.5' }]),
      vm('cccccccc01', pc, [{ net: 'other' }, { net: 'lan' }], 2),
      vm('bbbbbbbb01', null, [{ net: 'lan' }])
    ])
    const { input, problems } = buildPlanInput(doc(), w, opts)
    expect(problems).toEqual([])
    expect(input.members.map(m => [m.peerId, m.wgPublicKey, m.endpoints])).toEqual([
      [pa, wg[pa].publicKey, ['10.0.0.1:51820']], [pb, wg[pb].publicKey, ['10.0.0.2:51821']], [pc, wg[pc].publicKey, ['10.0.0.3:51820']]
    ])
    expect(input.networks).toHaveLength(1)
    const n = input.networks[0]
    expect(n).toMatchObject({ id: 'net-lan', hostsWithVms: [pa, pc], localTaps: [tapName('aaaaaaaa01', 0)], mode: 'static' })
    expect(n.vms).toEqual([
      { id: 'aaaaaaaa01', name: 'vm-aaaaaaaa01', mac: vmMac('aaaaaaaa01', 0), ip: '10.9.0.5', hostPeerId: pa, created: 1 },
      { id: 'cccccccc01', name: 'vm-cccccccc01', mac: vmMac('cccccccc01', 1), hostPeerId: pc, created: 2 }
    ])
    expect(input.self).toMatchObject({ peerId: pa, listenPort: 51820 })
  })

  it('prefers published endpoints', () => {
    const d = doc({ [pb]: { wgEndpoints: ['[2001:db8::2]:51820', 'bogus'] } })
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(problems).toEqual([])
    expect(input.members.find(m => m.peerId === pb)?.endpoints).toEqual(['[2001:db8::2]:51820'])
    expect(memberEndpoints(d.hosts[pb])).toEqual(['[2001:db8::2]:51820'])
  })
  it('bad static addresses: outside the subnet or taken → the later VM keeps none, the network still works', () => {
    const w = world([net('lan')], [
      vm('v1', pa, [{ net: 'lan', ip: '10.9.0.7' }], 1),
      vm('v2', pc, [{ net: 'lan', ip: '10.9.0.7' }], 2),
      vm('v3', pc, [{ net: 'lan', ip: '10.10.0.7' }], 3),
      vm('v4', pc, [{ net: 'lan', ip: 'fd00::1' }], 4)
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
    const w = world(nets, [vm('v1', pa, [{ net: 'first' }]), vm('v2', pa, [{ net: 'second' }]), vm('v3', pa, [{ net: 'third' }])])
    const { input } = buildPlanInput(doc(), w, opts)
    const { desired, excluded } = planResilient(input, ['net-first', 'net-second', 'net-third'])
    expect(excluded.map(e => e.network)).toEqual(['second'])
    expect(excluded[0].reason).toMatch(/overlap/)
    expect(desired.networks.map(n => n.name).sort()).toEqual(['first', 'third'])
    const alone = planResilient(buildPlanInput(doc(), world(nets, [vm('v3', pa, [{ net: 'third' }])]), opts).input, [])
    expect(desired.networks.find(n => n.name === 'third')?.vni).toBe(alone.desired.networks[0].vni)
  })
})

describe('WireGuard keys come from the peer ids, never from the records', () => {
  const peerKey = (input: ReturnType<typeof buildPlanInput>['input'], peer: string): string | undefined => input.members.find(m => m.peerId === peer)?.wgPublicKey
  const wgPeers = (input: ReturnType<typeof buildPlanInput>['input']): Array<[string, string, string[]]> =>
    planHost(input).wireguard.peers.map(p => [p.peerId, p.publicKey, p.endpoints])

  it('a member publishing another host\'s key changes nothing for that host; the liar is reported', () => {
    const honest = buildPlanInput(doc(), world([], []), opts).input
    const d = doc({ [pc]: { wgPublicKey: wg[pb].publicKey } })
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(peerKey(input, pb)).toBe(wg[pb].publicKey)
    expect(peerKey(input, pc)).toBe(wg[pc].publicKey)
    expect(wgPeers(input)).toEqual(wgPeers(honest))
    expect(wgPeers(input)).toEqual([[pb, wg[pb].publicKey, ['10.0.0.2:51821']], [pc, wg[pc].publicKey, ['10.0.0.3:51820']]])
    expect(problems).toEqual([`host ${pc} ("c") publishes WireGuard key ${wg[pb].publicKey.slice(0, 8)}…, not the one derived from its peer id (${wg[pc].publicKey.slice(0, 8)}…): the published key is ignored`])
    // On the victim's side too: it keeps the liar as a peer with the liar's own key.
    const atVictim = buildPlanInput(d, world([], []), { ...opts, self: pb, wgPrivateKey: wg[pb].privateKey })
    expect(wgPeers(atVictim.input).map(p => p.slice(0, 2))).toEqual([[pa, wg[pa].publicKey], [pc, wg[pc].publicKey]])
    expect(atVictim.problems).toHaveLength(1)
  })

  it('every member\'s derived key is used, whatever the records publish (e.g. random keys of older daemons)', () => {
    const random = (): string => b64(nacl.box.keyPair().publicKey)
    const d = doc({ [pa]: { wgPublicKey: random() }, [pb]: { wgPublicKey: random() }, [pc]: { wgPublicKey: 'junk' } })
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(input.members.map(m => [m.peerId, m.wgPublicKey])).toEqual([pa, pb, pc].map(p => [p, wireguardPublicKeyForPeer(p)]))
    expect(problems.map(p => p.split(' publishes')[0])).toEqual([`host ${pa} ("a")`, `host ${pb} ("b")`, `host ${pc} ("c")`])
    // The right key, stored as a scalar string, is no mismatch.
    expect(buildPlanInput(doc({ [pb]: { wgPublicKey: new ImmutableString(wg[pb].publicKey) } }), world([], []), opts).problems).toEqual([])
  })

  it('admitting a peer id that maps to another host\'s key (its negation) leaves that host in; the twin, with no record, is no peer', () => {
    const twin = negated(pb)
    expect(wireguardPublicKeyForPeer(twin)).toBe(wg[pb].publicKey)
    const d = doc()
    d.members[twin] = { name: 'b', admittedBy: pc, admittedAt: '' }
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(problems).toEqual([])
    expect(input.members.map(m => m.peerId)).toEqual([pa, pb, pc])
    expect(peerKey(input, pb)).toBe(wg[pb].publicKey)
  })

  it('two peer ids with one key: never this host, and the other is left out and reported', () => {
    // A record for the twin of this host could only be signed with this host's key; the rule holds anyway.
    const twin = negated(pa)
    const d = doc()
    d.members[twin] = { name: 'z', admittedBy: pc, admittedAt: '' }
    d.hosts[twin] = { ...d.hosts[pc], name: 'z', wgPublicKey: wg[pa].publicKey }
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(input.members.map(m => m.peerId).sort(compareStrings)).toEqual([pa, pb, pc])
    expect(problems).toEqual([`peer ids ${[pa, twin].sort(compareStrings).join(', ')} have the same WireGuard key ${wg[pa].publicKey.slice(0, 8)}…: ${twin} left out`])
  })

  it('a member whose peer id has no WireGuard key is left out and reported; the others are not touched', async () => {
    const odd = peerIdFromPrivateKey(await generateKeyPair('secp256k1')).toString()
    const d = doc()
    d.members[odd] = { name: 'k', admittedBy: pa, admittedAt: '' }
    d.hosts[odd] = { ...d.hosts[pc], name: 'k' }
    const { input, problems } = buildPlanInput(d, world([], []), opts)
    expect(input.members.map(m => m.peerId)).toEqual([pa, pb, pc])
    expect(problems).toEqual([expect.stringMatching(new RegExp(`^host ${odd} \\("k"\\) is left out of WireGuard: .*secp256k1`))])
  })

  it('says so when this host\'s private key is not the one derived from its peer key', () => {
    const { input, problems } = buildPlanInput(doc(), world([], []), { ...opts, wgPrivateKey: b64(nacl.box.keyPair().secretKey) })
    expect(peerKey(input, pa)).toBe(wg[pa].publicKey)
    expect(problems).toEqual([expect.stringMatching(/this host's WireGuard private key is not the one derived from its peer key/)])
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
      inMesh: true, self: pa, get doc () { return d },
      // A change writes this host's own feed: its record is what the view shows as hosts[pa].
      async change (what: string, fn: (x: any) => void) { changes.push(what); fn({ get host () { return d.hosts[pa] } }) }
    }
    const driver = fakeNetworkDriver()
    const w = world([net('lan')], [vm('aaaaaaaa01', pa, [{ net: 'lan' }]), vm('cccccccc01', pc, [{ net: 'lan' }])])
    const r = new NetworkReconciler({ store, world: () => w, driver, config, wgPrivateKey: opts.wgPrivateKey, runtimeDir: opts.runtimeDir, log: silentLogger })
    await r.settle()
    expect(r.stats.errors).toBe(0)
    const first = r.stats.steps
    expect(first).toBeGreaterThan(3)
    expect(Object.values((d.hosts[pa] as any).nets)).toMatchObject([{ fdb: [expect.stringMatching(/^fd/)], taps: [tapName('aaaaaaaa01', 0)], dnsmasq: false }])
    await r.settle()
    expect(r.stats.steps).toBe(first)
    expect(changes).toEqual(['publish network status'])
    r.stop()
  })
})
