/**
 * The data plane for real: three hosts in network namespaces on one underlay bridge, WireGuard
 * (kernel or wireguard-go) between them, a private network as bridges + VXLAN over the WireGuard
 * overlay, guests as namespaces on the bridges. Plan and apply are driven directly (no daemon).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { realExec } from '../../node/exec.ts'
import { linuxNetworkDriver } from '../../node/network/drivers/linux.ts'
import type { LinuxNetworkDriver } from '../../node/network/drivers/linux.ts'
import { reconcileNetwork } from '../../node/network/reconcile.ts'
import { planHost } from '../../node/network/plan.ts'
import type { PlanInput, PlanNetwork, ActualState } from '../../node/network/plan.ts'
import { assignOverlayAddresses, networkMtu } from '../../node/network/addressing.ts'
import { createTopology, netnsUnavailableReason, wireguardUnavailableReason, waitForOutput, stopChild } from '../helpers/netns.ts'
import type { Topology, TestGuest } from '../helpers/netns.ts'
import { waitFor } from '../helpers/wait.ts'

const reason = await netnsUnavailableReason(['tcpdump', 'ping']) ?? await wireguardUnavailableReason()
if (reason !== undefined) console.log(`skipping data-plane netns tests: ${reason}`)

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const UNDERLAY_MTU = 1500
const MTU = networkMtu(UNDERLAY_MTU, false)

describe.skipIf(reason !== undefined)('data plane in network namespaces', () => {
  let topo: Topology
  const peers = ['peer-a', 'peer-b', 'peer-c']
  const keys = peers.map(() => nacl.box.keyPair())
  let members: PlanInput['members']
  let drivers: LinuxNetworkDriver[]
  let gA: TestGuest, gC: TestGuest, gX: TestGuest
  let gB: TestGuest | undefined
  let captureDir: string
  // Which hosts carry VMs of `lan`, and which guests are on which network.
  let lanHosts = ['peer-a', 'peer-c']

  const networksFor = (host: number): PlanNetwork[] => {
    const taps = (net: string): string[] => topo.guests.filter(g => g.host.index === host && (net === 'lan' ? g !== gX : g === gX)).map(g => g.tap)
    return [
      { id: 'net-lan', name: 'lan', subnet4: '10.20.0.0/24', subnet6: 'fd20::/64', mode: 'static', hostsWithVms: lanHosts, localTaps: taps('lan') },
      { id: 'net-other', name: 'other', subnet4: '10.20.0.0/24', mode: 'static', hostsWithVms: ['peer-a'], localTaps: taps('other') }
    ]
  }
  const inputFor = (i: number, networks = networksFor(i)): PlanInput => ({
    self: { peerId: peers[i], wgPrivateKey: b64(keys[i].secretKey), listenPort: 51820 },
    members,
    networks,
    underlayMtu: UNDERLAY_MTU,
    wgIfname: topo.hosts[i].wgIfname
  })
  const reconcileAll = async (networks?: (i: number) => PlanNetwork[]) =>
    await Promise.all(topo.hosts.map(async (_, i) => await reconcileNetwork(drivers[i], inputFor(i, networks?.(i)))))
  const state = async (i: number): Promise<ActualState> => await drivers[i].readState({ wgIfname: topo.hosts[i].wgIfname })
  const ping = async (from: TestGuest, to: string, extra: string[] = []): Promise<boolean> =>
    (await from.exec('ping', [...(to.includes(':') ? ['-6'] : []), '-c', '1', '-W', '1', ...extra, to])).code === 0

  beforeAll(async () => {
    captureDir = await mkdtemp(join(tmpdir(), 'pct-capture-'))
    topo = await createTopology(3)
    const addrs = assignOverlayAddresses(`mesh-${topo.prefix}`, peers)
    members = peers.map((p, i) => ({ peerId: p, wgPublicKey: b64(keys[i].publicKey), endpoints: [`${topo.hosts[i].underlayAddr}:51820`], overlayAddr: addrs.get(p)! }))
    drivers = topo.hosts.map(h => linuxNetworkDriver({ exec: h.exec }))
    gA = await topo.addGuest(topo.hosts[0], { name: 'a', addr4: '10.20.0.1/24', addr6: 'fd20::1/64', mtu: MTU })
    gC = await topo.addGuest(topo.hosts[2], { name: 'c', addr4: '10.20.0.3/24', addr6: 'fd20::3/64', mtu: MTU })
    gX = await topo.addGuest(topo.hosts[0], { name: 'x', addr4: '10.20.0.9/24', addr6: 'fd20::9/64', mtu: MTU })
  })

  afterAll(async () => {
    await topo?.cleanup()
    await rm(captureDir, { recursive: true, force: true })
  })

  it('builds WireGuard on every host and the network on exactly the hosts that carry it', async () => {
    const steps = await reconcileAll()
    expect(steps.every(s => s.length > 0)).toBe(true)
    const [a, b, c] = await Promise.all([0, 1, 2].map(state))
    const lan = planHost(inputFor(0)).networks.find(n => n.networkId === 'net-lan')!
    for (const s of [a, c]) {
      expect(s.links.find(l => l.ifname === lan.bridge.ifname)).toMatchObject({ kind: 'bridge', up: true, mtu: MTU })
      expect(s.links.find(l => l.ifname === lan.vxlan.ifname)).toMatchObject({ kind: 'vxlan', master: lan.bridge.ifname, vxlan: { vni: lan.vni } })
    }
    expect(b.links.filter(l => l.ifname.startsWith('pc-br') || l.ifname.startsWith('pc-vx'))).toEqual([])
    expect(a.fdb).toEqual([{ ifname: lan.vxlan.ifname, dst: members[2].overlayAddr }])
    expect(b.wireguard?.peers.map(p => p.allowedIps.join()).sort()).toEqual([`${members[0].overlayAddr}/128`, `${members[2].overlayAddr}/128`].sort())
    expect(['kernel', 'userspace']).toContain(drivers[0].backend())
  })

  it('carries IPv4 and IPv6 between guests on A and C, full-size with don\'t-fragment, encrypted only', async () => {
    const file = join(captureDir, 'underlay.pcap')
    const wg = /^\S+ IP 10\.255\.0\.\d+\.51820 > 10\.255\.0\.\d+\.51820: UDP, length (\d+)$/
    const readCapture = async (): Promise<string[]> => (await realExec('tcpdump', ['-r', file, '-n', '-tt'])).stdout.split('\n').filter(Boolean)
    const fullSize = UNDERLAY_MTU - 28 // a WireGuard datagram that fills the underlay MTU exactly
    const countFull = (lines: string[]) => lines.filter(l => Number(wg.exec(l)?.[1]) === fullSize).length
    // On A's port of the underlay bridge: everything A sends to or receives from C and B.
    const tcpdump = topo.spawnIn(topo.underlayNs, 'tcpdump', ['-i', topo.hosts[0].underlayPort, '--immediate-mode', '-n', '-U', '-Z', 'root', '-w', file])
    try {
      await waitForOutput(tcpdump, 'listening on')
      await waitFor(async () => await ping(gA, gC.addr4!), { timeoutMs: 20_000, what: 'IPv4 ping from guest a to guest c' })
      expect(await ping(gC, gA.addr4!)).toBe(true)
      await waitFor(async () => await ping(gA, gC.addr6!), { timeoutMs: 10_000, what: 'IPv6 ping from guest a to guest c' })
      // Largest payloads the network MTU allows, with don't-fragment.
      expect(await ping(gA, gC.addr4!, ['-M', 'do', '-s', String(MTU - 28)])).toBe(true)
      expect(await ping(gA, gC.addr6!, ['-M', 'do', '-s', String(MTU - 48)])).toBe(true)
      // Both full-size echoes and their replies have reached the capture file.
      await waitFor(async () => countFull(await readCapture()) >= 4, { timeoutMs: 10_000, what: 'full-size datagrams in the capture' })
    } finally {
      await stopChild(tcpdump)
    }
    const lines = await readCapture()
    // Underlay housekeeping that may fall in the window: ARP, and the multicast reports that
    // interfaces without addresses send at link-up (unspecified source: not a guest's traffic).
    const housekeeping = /^\S+ (ARP, |IP 0\.0\.0\.0 > 224\.0\.0\.22: igmp|IP6 :: > ff02::16: HBH ICMP6, multicast listener report)/
    const rest = lines.filter(l => !housekeeping.test(l))
    expect(rest.filter(l => !wg.test(l))).toEqual([])
    expect(rest.some(l => / 4789|ICMP|icmp|frag/.test(l))).toBe(false)
    const lengths = lines.map(l => wg.exec(l)).filter(m => m !== null).map(m => Number(m[1]))
    expect(lengths.length).toBeGreaterThan(8)
    // The full-size pings crossed as single WireGuard datagrams, none larger.
    expect(Math.max(...lengths)).toBe(fullSize)
  })

  it('keeps another network apart', async () => {
    expect(await ping(gX, gC.addr4!)).toBe(false)
    expect(await ping(gX, gA.addr4!)).toBe(false)
    expect(await ping(gX, gC.addr6!)).toBe(false)
  })

  it('changes nothing when run again, and keeps every device (same ifindex)', async () => {
    const before = await Promise.all([0, 1, 2].map(state))
    const steps = await reconcileAll()
    expect(steps).toEqual([[], [], []])
    const after = await Promise.all([0, 1, 2].map(state))
    const indexes = (s: ActualState) => s.links.filter(l => l.ifname.startsWith('pc-')).map(l => `${l.ifname}#${l.ifindex}`).sort()
    expect(after.map(indexes)).toEqual(before.map(indexes))
  })

  it('extends the network to B: FDB entries on A and C, B reaches both', async () => {
    gB = await topo.addGuest(topo.hosts[1], { name: 'b', addr4: '10.20.0.2/24', addr6: 'fd20::2/64', mtu: MTU })
    lanHosts = ['peer-a', 'peer-b', 'peer-c']
    const [a, , c] = await reconcileAll()
    expect(a.map(s => s.type)).toEqual(['fdb.add'])
    expect(c.map(s => s.type)).toEqual(['fdb.add'])
    expect(a[0]).toMatchObject({ dst: members[1].overlayAddr })
    const fdbA = (await state(0)).fdb.map(e => e.dst).sort()
    expect(fdbA).toEqual([members[1].overlayAddr, members[2].overlayAddr].sort())
    await waitFor(async () => await ping(gB!, gA.addr4!), { timeoutMs: 20_000, what: 'ping from guest b to guest a' })
    await waitFor(async () => await ping(gB!, gC.addr6!), { timeoutMs: 10_000, what: 'IPv6 ping from guest b to guest c' })
  })

  it('removing the networks removes every bridge and VXLAN on every host', async () => {
    const steps = await reconcileAll(() => [])
    expect(steps.map(s => s.every(x => x.type === 'link.delete' || x.type === 'firewall.delete'))).toEqual([true, true, true])
    for (const i of [0, 1, 2]) expect((await topo.hosts[i].exec('nft', ['list', 'table', 'inet', 'pc-net'])).code).not.toBe(0)
    for (const s of await Promise.all([0, 1, 2].map(state))) {
      expect(s.links.filter(l => l.ifname.startsWith('pc-br') || l.ifname.startsWith('pc-vx'))).toEqual([])
      expect(s.fdb).toEqual([])
      expect(s.links.filter(l => l.ifname.startsWith('pc-tg')).every(l => l.master === undefined)).toBe(true)
    }
    expect(await ping(gA, gC.addr4!)).toBe(false)
  })
})
