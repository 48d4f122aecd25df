/**
 * Network services for real: three hosts in network namespaces (WireGuard + VXLAN as in
 * dataplane.test.ts), dnsmasq per network per host handing out the addresses of the replicated
 * state to guests (namespaces on veths) by DHCP and SLAAC with the network's MTU, host-nat to a
 * namespace "outside" behind host A's default route, reconciliation of dnsmasq and nftables, and a
 * forced VNI collision. Plan and apply are driven directly (no daemon).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile, readFile, access } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { linuxNetworkDriver, runningDnsmasq } from '../../node/network/drivers/linux.ts'
import type { LinuxNetworkDriver } from '../../node/network/drivers/linux.ts'
import { reconcileNetwork } from '../../node/network/reconcile.ts'
import { planHost, networkDirName } from '../../node/network/plan.ts'
import type { PlanInput, PlanNetwork, PlanVm } from '../../node/network/plan.ts'
import { assignOverlayAddresses, assignVnis, networkMtu, rawVni, VNI_MAX, VNI_MIN } from '../../node/network/addressing.ts'
import { check } from '../../node/exec.ts'
import { addOutside, createTopology, netnsUnavailableReason, wireguardUnavailableReason } from '../helpers/netns.ts'
import type { Topology, TestGuest } from '../helpers/netns.ts'
import { waitFor } from '../helpers/wait.ts'

const reason = await netnsUnavailableReason(['ping', 'dnsmasq', 'nft', 'busybox', 'sysctl', 'dhclient']) ?? await wireguardUnavailableReason()
if (reason !== undefined) console.log(`skipping network-services netns tests: ${reason}`)

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const UNDERLAY_MTU = 1500
const MTU = networkMtu(UNDERLAY_MTU, false)
const OUTSIDE = '203.0.113.10' // TEST-NET-3, lives only on the test's "outside" namespace

/** Two network ids with the same hashed VNI (found, not guessed: ~5000 tries for 24 bits). */
function collidingIds (): [string, string] {
  const seen = new Map<number, string>()
  for (let i = 0; ; i++) {
    const id = `net-vc-${i}`
    const other = seen.get(rawVni(id))
    if (other !== undefined) return [other, id].sort() as [string, string]
    seen.set(rawVni(id), id)
  }
}

/** udhcpc script: configures eth0 from the lease and writes the lease's variables to a file. */
const UDHCPC_SCRIPT = `#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
[ -n "$router" ] && ip route add default via "$router" dev "$interface"
printf 'ip=%s\\nmask=%s\\nrouter=%s\\nmtu=%s\\ndns=%s\\n' "$ip" "$mask" "$router" "$mtu" "$dns" > "$LEASE_OUT"
`

/** dhclient script: the DHCPv6 lease's address, written to `out` (dhclient clears the environment; the address is not configured). */
const dhclient6Script = (out: string): string => `#!/bin/sh
case "$reason" in BOUND6|RENEW6|REBIND6|REBOOT6) printf 'ip6=%s\\n' "$new_ip6_address" > '${out}' ;; esac
exit 0
`

describe.skipIf(reason !== undefined)('network services in network namespaces', () => {
  let topo: Topology
  const peers = ['peer-a', 'peer-b', 'peer-c']
  const keys = peers.map(() => nacl.box.keyPair())
  let members: PlanInput['members']
  let drivers: LinuxNetworkDriver[]
  let dir: string
  const runtimeDir = (i: number): string => join(dir, `h${i}`, 'net')
  let gA: TestGuest, gC: TestGuest, gS: TestGuest
  let vms: PlanVm[]
  let networks: PlanNetwork[]
  const [vc1, vc2] = collidingIds()

  const macOf = async (g: TestGuest): Promise<string> => {
    const [link] = JSON.parse(await check(g.exec, 'ip', ['-j', 'link', 'show', 'eth0'])) as Array<{ address: string }>
    return link.address
  }
  const local = (i: number): PlanNetwork[] => networks.map(n => ({
    ...n,
    localTaps: topo.guests.filter(g => g.host.index === i && tapNetwork.get(g.name) === n.id).map(g => g.tap)
  }))
  const tapNetwork = new Map<string, string>()
  /** The mesh's domain: names are served only while it is set (the names test). */
  let domain: string | undefined
  const inputFor = (i: number, nets = local(i)): PlanInput => ({
    ...(domain === undefined ? {} : { domain }),
    self: { peerId: peers[i], wgPrivateKey: b64(keys[i].secretKey), listenPort: 51820 },
    members,
    networks: nets,
    underlayMtu: UNDERLAY_MTU,
    wgIfname: topo.hosts[i].wgIfname,
    runtimeDir: runtimeDir(i)
  })
  const reconcileAll = async (nets?: (i: number) => PlanNetwork[]) =>
    await Promise.all(topo.hosts.map(async (_, i) => await reconcileNetwork(drivers[i], inputFor(i, nets?.(i)))))
  const ping = async (from: TestGuest, to: string): Promise<boolean> =>
    (await from.exec('ping', [...(to.includes(':') ? ['-6'] : []), '-c', '1', '-W', '1', to])).code === 0
  const dhcp = async (g: TestGuest): Promise<Record<string, string>> => {
    const out = join(dir, `lease-${g.name}`)
    await rm(out, { force: true })
    const r = await g.exec('busybox', ['udhcpc', '-i', 'eth0', '-f', '-q', '-n', '-t', '10', '-T', '1', '-O', 'mtu', '-s', join(dir, 'udhcpc.sh')],
      { env: { ...process.env, LEASE_OUT: out }, timeoutMs: 30_000 })
    if (r.code !== 0) throw new Error(`udhcpc in ${g.name} failed: ${r.stderr}`)
    return Object.fromEntries((await readFile(out, 'utf8')).trim().split('\n').map(l => l.split('=') as [string, string]))
  }
  const nftTable = async (i: number): Promise<string> => (await topo.hosts[i].exec('nft', ['list', 'table', 'inet', 'pc-net'])).stdout

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pct-dhcp-'))
    await writeFile(join(dir, 'udhcpc.sh'), UDHCPC_SCRIPT, { mode: 0o755 })
    topo = await createTopology(3)
    const addrs = assignOverlayAddresses(`mesh-${topo.prefix}`, peers)
    members = peers.map((p, i) => ({ peerId: p, wgPublicKey: b64(keys[i].publicKey), endpoints: [`${topo.hosts[i].underlayAddr}:51820`], overlayAddr: addrs.get(p)! }))
    drivers = topo.hosts.map(h => linuxNetworkDriver({ exec: h.exec }))
    // Guests start with the link MTU 1500: the network's MTU must come from DHCP and RA.
    gA = await topo.addGuest(topo.hosts[0], { name: 'a', mtu: 1500 })
    gC = await topo.addGuest(topo.hosts[2], { name: 'c', mtu: 1500 })
    gS = await topo.addGuest(topo.hosts[0], { name: 's', mtu: 1500 })
    tapNetwork.set('a', 'net-dhcp').set('c', 'net-dhcp').set('s', 'net-slaac')
    vms = [
      { id: 'vm-a', name: 'a', mac: await macOf(gA), hostPeerId: 'peer-a', created: 1 },
      { id: 'vm-c', name: 'c', mac: await macOf(gC), hostPeerId: 'peer-c', created: 2 },
      // A VM of the state with a static address and no guest: DHCP must never hand out its address.
      { id: 'vm-static', mac: '02:00:00:00:00:77', ip: '10.30.0.77', hostPeerId: 'peer-c', created: 3 }
    ]
    networks = [
      { id: 'net-dhcp', name: 'lan', subnet4: '10.30.0.0/24', mode: 'dhcp', gateway: 'host-nat', hostsWithVms: ['peer-a', 'peer-c'], localTaps: [], vms },
      { id: 'net-slaac', name: 'v6', subnet6: 'fd31::/64', mode: 'slaac', hostsWithVms: ['peer-a'], localTaps: [], vms: [{ id: 'vm-s', mac: await macOf(gS), hostPeerId: 'peer-a' }] }
    ]
    await addOutside(topo, topo.hosts[0], OUTSIDE)
  })

  afterAll(async () => {
    await topo?.cleanup() // kills every process of the namespaces, dnsmasq included
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('starts one dnsmasq per network on the hosts that carry it, and the NAT table on those with host-nat', async () => {
    const steps = await reconcileAll()
    expect(steps[0].filter(s => s.type === 'dnsmasq.start')).toHaveLength(2) // lan and v6 on A
    expect(steps[1].filter(s => s.type === 'dnsmasq.start')).toHaveLength(0) // B carries nothing
    expect(steps[2].filter(s => s.type === 'dnsmasq.start')).toHaveLength(1) // lan on C
    for (const [i, n] of [[0, 'net-dhcp'], [0, 'net-slaac'], [2, 'net-dhcp']] as const) {
      expect(await runningDnsmasq(join(runtimeDir(i), networkDirName(n)))).toBeGreaterThan(1)
    }
    expect(await nftTable(0)).toMatch(/ip saddr 10\.30\.0\.0\/24 oifname != "pc-br[0-9a-f]+" masquerade/)
    expect(await nftTable(2)).toMatch(/masquerade/)
    expect((await topo.hosts[1].exec('nft', ['list', 'table', 'inet', 'pc-net'])).code).not.toBe(0)
    expect((await check(topo.hosts[0].exec, 'sysctl', ['-n', 'net.ipv4.ip_forward'])).trim()).toBe('1')
  })

  it('hands each guest its address from the state, the MTU, and its own host as router', async () => {
    const planA = planHost(inputFor(0)).networks.find(n => n.networkId === 'net-dhcp')!
    const planC = planHost(inputFor(2)).networks.find(n => n.networkId === 'net-dhcp')!
    expect(planA.vmAddresses4).toEqual(planC.vmAddresses4) // every host computes the same table
    const [leaseA, leaseC] = await Promise.all([dhcp(gA), dhcp(gC)])
    expect(leaseA).toMatchObject({ ip: planA.vmAddresses4['vm-a'], mask: '24', mtu: String(MTU), router: planA.gateway4 })
    expect(leaseC).toMatchObject({ ip: planC.vmAddresses4['vm-c'], mask: '24', mtu: String(MTU), router: planC.gateway4 })
    expect(leaseA.ip).not.toBe(leaseC.ip)
    expect([leaseA.ip, leaseC.ip]).not.toContain('10.30.0.77')
    // Per-host gateway: two distinct addresses, each host's own bridge address.
    expect(planA.gateway4).not.toBe(planC.gateway4)
    expect(planA.bridgeAddresses).toEqual([`${planA.gateway4}/24`])
    const mtu = JSON.parse(await check(gA.exec, 'ip', ['-j', 'link', 'show', 'eth0']))[0].mtu
    expect(mtu).toBe(MTU)
    await waitFor(async () => await ping(gA, leaseC.ip), { timeoutMs: 20_000, what: 'ping from guest a to guest c over DHCP addresses' })
    // Each guest reaches its router, and the other host's address on the network too (no ARP conflict).
    expect(await ping(gA, planA.gateway4!)).toBe(true)
    expect(await ping(gC, planA.gateway4!)).toBe(true)
  })

  it('host-nat: a guest of A reaches an address outside through A\'s default route', async () => {
    await waitFor(async () => await ping(gA, OUTSIDE), { timeoutMs: 10_000, what: `ping from guest a to ${OUTSIDE}` })
  })

  it('slaac: the guest configures an address in the prefix and the MTU from router advertisements', async () => {
    const addr = await waitFor(async () => {
      const [l] = JSON.parse(await check(gS.exec, 'ip', ['-j', '-6', 'addr', 'show', 'dev', 'eth0'])) as Array<{ addr_info: Array<{ local: string, scope: string }> }>
      return l.addr_info.find(a => a.scope === 'global' && a.local.startsWith('fd31::'))?.local
    }, { timeoutMs: 20_000, what: 'a SLAAC address in fd31::/64 on guest s' })
    expect(addr).toMatch(/^fd31::/)
    await waitFor(async () => (await check(gS.exec, 'sysctl', ['-n', 'net.ipv6.conf.eth0.mtu'])).trim() === String(MTU), { timeoutMs: 10_000, what: 'the RA MTU on guest s' })
    // The host is not a default router of the network (router lifetime 0).
    expect((await check(gS.exec, 'ip', ['-6', 'route', 'show', 'default'])).trim()).toBe('')
    const hostAddr = planHost(inputFor(0)).networks.find(n => n.networkId === 'net-slaac')!.bridgeAddresses.find(a => a.startsWith('fd31:'))!
    await waitFor(async () => await ping(gS, hostAddr.split('/')[0]), { timeoutMs: 10_000, what: 'ping from guest s to host A on the v6 network' })
  })

  it('changes nothing when run again (same dnsmasq processes, same table)', async () => {
    const pids = await Promise.all([0, 2].map(async i => await runningDnsmasq(join(runtimeDir(i), 'net-dhcp'))))
    const table = await nftTable(0)
    expect(await reconcileAll()).toEqual([[], [], []])
    expect(await Promise.all([0, 2].map(async i => await runningDnsmasq(join(runtimeDir(i), 'net-dhcp'))))).toEqual(pids)
    expect(await nftTable(0)).toBe(table)
  })

  it('a new VM on A restarts only A\'s dnsmasq of that network; a flushed table is put back', async () => {
    const before = await runningDnsmasq(join(runtimeDir(0), 'net-dhcp'))
    vms.push({ id: 'vm-a2', mac: '02:00:00:00:00:a2', hostPeerId: 'peer-a', created: 4 })
    await check(topo.hosts[2].exec, 'nft', ['flush', 'chain', 'inet', 'pc-net', 'postrouting'])
    const [a, b, c] = await reconcileAll()
    expect(a.map(s => s.type)).toEqual(['dnsmasq.start'])
    expect(a[0]).toMatchObject({ stopPid: before })
    expect(b).toEqual([])
    expect(c.map(s => s.type)).toEqual(['firewall.replace'])
    const after = await runningDnsmasq(join(runtimeDir(0), 'net-dhcp'))
    expect(after).not.toBe(before)
    expect(await readFile(join(runtimeDir(0), 'net-dhcp', 'dnsmasq.conf'), 'utf8')).toContain('dhcp-host=02:00:00:00:00:a2,')
    expect(await nftTable(2)).toMatch(/masquerade/)
    // The lease of guest a is kept: renewing gives the same address.
    expect((await dhcp(gA)).ip).toBe(planHost(inputFor(0)).networks.find(n => n.networkId === 'net-dhcp')!.vmAddresses4['vm-a'])
  })

  it('rejects bad input with a clear error and leaves the running state alone', async () => {
    const bad = (over: Partial<PlanNetwork>): PlanNetwork[] => local(0).map(n => n.id === 'net-dhcp' ? { ...n, ...over } : n)
    await expect(reconcileNetwork(drivers[0], inputFor(0, bad({ vms: [...vms, { id: 'vm-x', mac: '02:00:00:00:00:99', ip: '10.31.0.5', hostPeerId: 'peer-a' }] }))))
      .rejects.toMatchObject({ code: 'BAD_NETWORK_PLAN', message: expect.stringContaining('outside the subnet 10.30.0.0/24') })
    await expect(reconcileNetwork(drivers[0], inputFor(0, bad({ vms: [...vms, { id: 'vm-x', mac: '02:00:00:00:00:99', ip: '10.30.0.77', hostPeerId: 'peer-a' }] }))))
      .rejects.toMatchObject({ code: 'BAD_NETWORK_PLAN', message: expect.stringContaining('given to two VMs (vm-static and vm-x)') })
    const overlapping: PlanNetwork = { id: 'net-ov', name: 'overlap', subnet4: '10.30.0.128/25', mode: 'dhcp', hostsWithVms: ['peer-a'], localTaps: [], vms: [] }
    await expect(reconcileNetwork(drivers[0], inputFor(0, [...local(0), overlapping])))
      .rejects.toMatchObject({ code: 'BAD_NETWORK_PLAN', message: expect.stringMatching(/overlap/) })
    expect(await reconcileAll()).toEqual([[], [], []])
  })

  it('two networks whose VNIs collide get distinct VNIs, the same on every host, and stay apart', async () => {
    const vnis = assignVnis([...networks.map(n => n.id), vc1, vc2])
    expect(vnis.get(vc1)).toBe(rawVni(vc1))
    expect(vnis.get(vc2)).toBe(rawVni(vc1) === VNI_MAX ? VNI_MIN : rawVni(vc1) + 1)
    const k1 = await topo.addGuest(topo.hosts[0], { name: 'k1', addr4: '10.40.0.1/24', mtu: MTU })
    const k2 = await topo.addGuest(topo.hosts[2], { name: 'k2', addr4: '10.40.0.2/24', mtu: MTU })
    const m1 = await topo.addGuest(topo.hosts[0], { name: 'm1', addr4: '10.40.0.11/24', mtu: MTU })
    const m2 = await topo.addGuest(topo.hosts[2], { name: 'm2', addr4: '10.40.0.12/24', mtu: MTU })
    tapNetwork.set('k1', vc1).set('k2', vc1).set('m1', vc2).set('m2', vc2)
    networks.push(
      { id: vc1, name: 'vc1', subnet4: '10.40.0.0/24', mode: 'static', hostsWithVms: ['peer-a', 'peer-c'], localTaps: [] },
      { id: vc2, name: 'vc2', subnet4: '10.40.0.0/24', mode: 'static', hostsWithVms: ['peer-a', 'peer-c'], localTaps: [] }
    )
    await reconcileAll()
    const vniOn = (i: number) => planHost(inputFor(i)).networks.filter(n => n.networkId === vc1 || n.networkId === vc2).map(n => [n.networkId, n.vni])
    expect(vniOn(0)).toEqual(vniOn(2))
    await waitFor(async () => await ping(k1, '10.40.0.2'), { timeoutMs: 20_000, what: 'ping k1 → k2 on the first colliding network' })
    await waitFor(async () => await ping(m1, '10.40.0.12'), { timeoutMs: 20_000, what: 'ping m1 → m2 on the second colliding network' })
    expect(await ping(k1, '10.40.0.12')).toBe(false)
    expect(await ping(m2, '10.40.0.2')).toBe(false)
  })

  it('names: each host\'s dnsmasq answers <vm>.<net>.<mesh>, <vm>.<net> and <vm> for the network\'s VMs on every host, and hands itself out as resolver', async () => {
    domain = 'testmesh'
    try {
      await reconcileAll()
      const planA = planHost(inputFor(0)).networks.find(n => n.networkId === 'net-dhcp')!
      const planC = planHost(inputFor(2)).networks.find(n => n.networkId === 'net-dhcp')!
      const lookup = async (g: TestGuest, name: string, server: string): Promise<string> => {
        const r = await g.exec('busybox', ['nslookup', name, server], { timeoutMs: 10_000 })
        return r.stdout + r.stderr
      }
      // Guest a asks its own host (A) for guest c, which runs on host C; and the other way round.
      await waitFor(async () => (await lookup(gA, 'c.lan.testmesh', planA.gateway4!)).includes(planA.vmAddresses4['vm-c']), { timeoutMs: 10_000, what: 'c.lan.testmesh from guest a' })
      expect(await lookup(gC, 'a.lan.testmesh', planC.gateway4!)).toContain(planC.vmAddresses4['vm-a'])
      expect(await lookup(gC, 'a.lan', planC.gateway4!)).toContain(planC.vmAddresses4['vm-a'])
      expect(await lookup(gA, 'c', planA.gateway4!)).toContain(planA.vmAddresses4['vm-c'])
      // A name of the mesh that no VM has is not found (and not asked of anyone else).
      expect(await lookup(gA, 'nobody.lan.testmesh', planA.gateway4!)).toMatch(/NXDOMAIN|can't resolve|server can't find/i)
      // A DHCP lease now names the host as the guest's resolver.
      expect((await dhcp(gA)).dns).toBe(planA.gateway4)
    } finally {
      domain = undefined
      await reconcileAll()
    }
  })

  it('dhcpv6: a guest gets by DHCPv6 exactly the IPv6 address the mesh gives its VM', async () => {
    const g6 = await topo.addGuest(topo.hosts[2], { name: 'd6', mtu: 1500 })
    tapNetwork.set('d6', 'net-dhcp6')
    const vm6: PlanVm = { id: 'vm-d6', name: 'd6', mac: await macOf(g6), hostPeerId: 'peer-c', created: 5 }
    networks.push({ id: 'net-dhcp6', name: 'v6m', subnet6: 'fd33::/64', mode: 'dhcpv6', hostsWithVms: ['peer-c'], localTaps: [], vms: [vm6] })
    try {
      await reconcileAll()
      const want = planHost(inputFor(2)).networks.find(n => n.networkId === 'net-dhcp6')!.vmAddresses6['vm-d6']
      expect(want).toMatch(/^fd33::/)
      expect(planHost(inputFor(0)).networks.find(n => n.networkId === 'net-dhcp6')).toBeUndefined() // A does not carry it
      const conf = await readFile(join(runtimeDir(2), networkDirName('net-dhcp6'), 'dnsmasq.conf'), 'utf8')
      expect(conf).toContain(`dhcp-host=${vm6.mac},[${want}]`)
      expect(await nftTable(2)).toMatch(/udp dport 547 accept/)
      const out = join(dir, 'lease6-d6')
      await writeFile(join(dir, 'dhclient6.sh'), dhclient6Script(out), { mode: 0o755 })
      let lastTry = ''
      const got = await waitFor(async () => {
        await rm(out, { force: true })
        const r = await g6.exec('dhclient', ['-6', '-1', '-lf', join(dir, 'd6.leases'), '-pf', join(dir, 'd6.pid'), '-sf', join(dir, 'dhclient6.sh'), 'eth0'],
          { timeoutMs: 20_000 })
        lastTry = `exit ${r.code}: ${r.stderr.slice(-1500)}`
        if (r.code !== 0) return undefined
        return (await readFile(out, 'utf8').catch(() => '')).match(/^ip6=(.+)$/m)?.[1]
      }, { timeoutMs: 40_000, intervalMs: 1000, what: 'a DHCPv6 lease for guest d6' }).catch(err => { console.log('dhclient:', lastTry); throw err })
      expect(got).toBe(want)
    } finally {
      const pid = Number((await readFile(join(dir, 'd6.pid'), 'utf8').catch(() => '')).trim())
      if (pid > 0) { try { process.kill(pid, 'SIGKILL') } catch {} }
      networks.splice(networks.findIndex(n => n.id === 'net-dhcp6'), 1)
      await reconcileAll()
    }
  })

  it('removing the networks stops every dnsmasq, removes its files and the nftables table', async () => {
    const pids = [await runningDnsmasq(join(runtimeDir(0), 'net-dhcp')), await runningDnsmasq(join(runtimeDir(2), 'net-dhcp'))]
    const steps = await reconcileAll(() => [])
    expect(steps[0].filter(s => s.type === 'dnsmasq.stop')).toHaveLength(2)
    expect(steps[0].some(s => s.type === 'firewall.delete')).toBe(true)
    // Gone (or a zombie nobody reaps, in a container whose pid 1 does not: no command line).
    for (const pid of pids) expect(await readFile(`/proc/${pid!}/cmdline`, 'utf8').catch(() => '')).toBe('')
    for (const i of [0, 2]) {
      await expect(access(join(runtimeDir(i), 'net-dhcp'))).rejects.toThrow()
      expect((await topo.hosts[i].exec('nft', ['list', 'table', 'inet', 'pc-net'])).code).not.toBe(0)
    }
    expect(await reconcileAll(() => [])).toEqual([[], [], []])
  })
})
