/**
 * Isolation between networks, for real: two hosts in network namespaces (WireGuard + VXLAN), two
 * host-nat networks carried by both and a third network the host has no address in. A guest of
 * one network must never reach a guest of another through a host (on the same host or across the
 * overlay), whatever route or neighbour entry it sets itself, while traffic inside a network and
 * host-nat to the outside keep working. Arrival is read from the target's own ICMP counters, so
 * a packet that gets there counts even when no reply could come back.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { linuxNetworkDriver } from '../../node/network/drivers/linux.ts'
import { reconcileNetwork } from '../../node/network/reconcile.ts'
import { planHost } from '../../node/network/plan.ts'
import type { PlanInput, PlanNetwork } from '../../node/network/plan.ts'
import { assignOverlayAddresses, networkMtu } from '../../node/network/addressing.ts'
import { check } from '../../node/exec.ts'
import { addOutside, createTopology, netnsUnavailableReason, wireguardUnavailableReason } from '../helpers/netns.ts'
import type { Topology, TestGuest } from '../helpers/netns.ts'
import { waitFor } from '../helpers/wait.ts'

const reason = await netnsUnavailableReason(['ping', 'nft', 'sysctl']) ?? await wireguardUnavailableReason()
if (reason !== undefined) console.log(`skipping isolation netns tests: ${reason}`)

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const UNDERLAY_MTU = 1500
const MTU = networkMtu(UNDERLAY_MTU, false)
const OUTSIDE = '203.0.113.20' // TEST-NET-3, lives only on the test's "outside" namespace

describe.skipIf(reason !== undefined)('isolation between networks in network namespaces', () => {
  let topo: Topology
  const peers = ['peer-a', 'peer-b']
  const keys = peers.map(() => nacl.box.keyPair())
  let members: PlanInput['members']
  let dir: string
  const guests: Record<string, TestGuest> = {}
  const tapNetwork = new Map<string, string>()
  const networks: PlanNetwork[] = [
    { id: 'net-iso-2', name: 'lan2', subnet4: '10.52.0.0/24', mode: 'static', gateway: 'host-nat', hostsWithVms: peers, localTaps: [] },
    { id: 'net-iso-3', name: 'lan3', subnet4: '10.53.0.0/24', mode: 'static', gateway: 'host-nat', hostsWithVms: peers, localTaps: [] },
    // No router, no DHCP: host A has no address on it at all.
    { id: 'net-iso-4', name: 'lan4', subnet4: '10.54.0.0/24', mode: 'static', gateway: 'none', hostsWithVms: ['peer-a'], localTaps: [] }
  ]
  const inputFor = (i: number): PlanInput => ({
    self: { peerId: peers[i], wgPrivateKey: b64(keys[i].secretKey), listenPort: 51820 },
    members,
    networks: networks.map(n => ({ ...n, localTaps: topo.guests.filter(g => g.host.index === i && tapNetwork.get(g.name) === n.id).map(g => g.tap) })),
    underlayMtu: UNDERLAY_MTU,
    wgIfname: topo.hosts[i].wgIfname,
    runtimeDir: join(dir, `h${i}`, 'net')
  })
  const planned = (i: number, id: string) => planHost(inputFor(i)).networks.find(n => n.networkId === id)!
  const ping = async (from: TestGuest, to: string): Promise<boolean> =>
    (await from.exec('ping', ['-c', '1', '-W', '1', to])).code === 0
  /** ICMP echo requests the guest's own stack has received (per namespace). */
  const echoesAt = async (g: TestGuest): Promise<number> => {
    const lines = (await check(g.exec, 'cat', ['/proc/net/snmp'])).split('\n').filter(l => l.startsWith('Icmp:'))
    const [names, values] = lines.map(l => l.split(/\s+/))
    return Number(values[names.indexOf('InEchos')])
  }
  /** Sends `count` pings that must not arrive; true when none did. */
  const noneArrive = async (from: TestGuest, to: TestGuest, count = 3): Promise<boolean> => {
    const before = await echoesAt(to)
    await from.exec('ping', ['-c', String(count), '-i', '0.2', '-W', '1', to.addr4!])
    return await echoesAt(to) === before
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pct-iso-'))
    topo = await createTopology(2)
    const addrs = assignOverlayAddresses(`mesh-${topo.prefix}`, peers)
    members = peers.map((p, i) => ({ peerId: p, wgPublicKey: b64(keys[i].publicKey), endpoints: [`${topo.hosts[i].underlayAddr}:51820`], overlayAddr: addrs.get(p)! }))
    const add = async (name: string, host: number, net: string, addr4: string): Promise<void> => {
      guests[name] = await topo.addGuest(topo.hosts[host], { name, addr4, mtu: MTU })
      tapNetwork.set(name, net)
    }
    await add('a2', 0, 'net-iso-2', '10.52.0.11/24')
    await add('b2', 1, 'net-iso-2', '10.52.0.12/24')
    await add('a3', 0, 'net-iso-3', '10.53.0.11/24')
    await add('b3', 1, 'net-iso-3', '10.53.0.12/24')
    await add('a4', 0, 'net-iso-4', '10.54.0.11/24')
    // Each host-nat guest routes through its own host's address on its network.
    for (const [g, host, net] of [['a2', 0, 'net-iso-2'], ['b2', 1, 'net-iso-2'], ['a3', 0, 'net-iso-3'], ['b3', 1, 'net-iso-3']] as const) {
      await check(guests[g].exec, 'ip', ['route', 'add', 'default', 'via', planned(host, net).gateway4!])
    }
    await addOutside(topo, topo.hosts[0], OUTSIDE)
    const drivers = topo.hosts.map(h => linuxNetworkDriver({ exec: h.exec }))
    await Promise.all(topo.hosts.map(async (_, i) => await reconcileNetwork(drivers[i], inputFor(i))))
  })

  afterAll(async () => {
    await topo?.cleanup()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('traffic inside a network crosses the overlay, and host-nat still reaches the outside', async () => {
    await waitFor(async () => await ping(guests.a2, '10.52.0.12'), { timeoutMs: 20_000, what: 'ping a2 → b2 (lan2, across hosts)' })
    await waitFor(async () => await ping(guests.b3, '10.53.0.11'), { timeoutMs: 20_000, what: 'ping b3 → a3 (lan3, across hosts)' })
    await waitFor(async () => await ping(guests.a2, OUTSIDE), { timeoutMs: 10_000, what: `ping a2 → ${OUTSIDE} through host A's NAT` })
    await waitFor(async () => await ping(guests.a3, OUTSIDE), { timeoutMs: 10_000, what: `ping a3 → ${OUTSIDE} through host A's NAT` })
  })

  it('a guest never reaches another network through its router, on the same host or on another', async () => {
    expect(await noneArrive(guests.a2, guests.a3)).toBe(true) // same host, both host-nat
    expect(await noneArrive(guests.a2, guests.b3)).toBe(true) // A routes into lan3, which B carries
    expect(await noneArrive(guests.b3, guests.a2)).toBe(true) // and the other way round, from B
    expect(await noneArrive(guests.a3, guests.b2)).toBe(true)
    // The counters do move when an echo does arrive (the check above can fail).
    expect(await noneArrive(guests.a2, guests.b2)).toBe(false)
  })

  it('a guest of a network the host has no address in cannot use the host as a router either', async () => {
    // The attacker aims frames at host A's bridge MAC on lan4, as if A were its router.
    const mac = planned(0, 'net-iso-4').bridge.mac
    const a4 = guests.a4
    await check(a4.exec, 'ip', ['neigh', 'replace', '10.54.0.1', 'lladdr', mac, 'dev', 'eth0', 'nud', 'permanent'])
    await check(a4.exec, 'ip', ['route', 'add', 'default', 'via', '10.54.0.1'])
    expect(await noneArrive(a4, guests.a3)).toBe(true)
    expect(await noneArrive(a4, guests.b2)).toBe(true)
  })

  it('the rules are put back when removed behind the daemon\'s back', async () => {
    await check(topo.hosts[0].exec, 'nft', ['flush', 'chain', 'inet', 'pc-net', 'forward'])
    const steps = await reconcileNetwork(linuxNetworkDriver({ exec: topo.hosts[0].exec }), inputFor(0))
    expect(steps.map(s => s.type)).toEqual(['firewall.replace'])
    expect(await noneArrive(guests.a2, guests.a3)).toBe(true)
  })
})
