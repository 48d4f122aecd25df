/**
 * Private networks through real daemons: three hosts = three network namespaces on one underlay
 * bridge, each running its own picocloud daemon (`ip netns exec`) and WireGuard (kernel or
 * wireguard-go). VMs are placed by the mesh (`hypervisor = "none"`: placed, not run); each "VM" is
 * a guest namespace whose veth carries the VM's MAC and whose host end has the VM's tap name, so
 * the daemon's network reconciler puts it on the network's bridge exactly as it would a QEMU tap.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ChildProcess } from 'node:child_process'
import { check, realExec } from '../../node/exec.ts'
import type { Exec } from '../../node/exec.ts'
import { tapName, vmMac } from '../../node/compute/hypervisor/types.ts'
import { networkMtu } from '../../node/network/addressing.ts'
import type { StatusView } from '../../protocol/api.ts'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { createTopology, netnsUnavailableReason, wireguardUnavailableReason, waitForOutput, stopChild } from '../helpers/netns.ts'
import type { Topology } from '../helpers/netns.ts'
import { waitFor } from '../helpers/wait.ts'

const reason = await netnsUnavailableReason(['tcpdump', 'ping', 'busybox', 'dnsmasq']) ?? await wireguardUnavailableReason()
if (reason !== undefined) console.log(`skipping mesh network tests: ${reason}`)

const MTU = networkMtu(1500, false)
const NAMES = ['alpha', 'bravo', 'charlie']
const LONG = 60_000

/** udhcpc script: configures eth0 from the lease and writes the lease's variables to a file. */
const UDHCPC_SCRIPT = `#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
printf 'ip=%s\\nmask=%s\\nmtu=%s\\ndns=%s\\n' "$ip" "$mask" "$mtu" "$dns" > "$LEASE_OUT"
`

interface Guest { name: string, ns: string, exec: Exec, host: number, vmId?: string, tmpTap: string }

describe.skipIf(reason !== undefined)('private networks across hosts, through the daemons', () => {
  let topo: Topology
  let mesh: TestMesh
  let dir: string
  let keyring: string
  const d: TestDaemon[] = []
  const guests = new Map<string, Guest>()
  const children: ChildProcess[] = []

  const user = async (host: number, ...args: string[]) => await d[host].as(keyring, ...args)
  const ok = async (host: number, ...args: string[]): Promise<string> => {
    const r = await user(host, ...args)
    if (r.code !== 0) throw new Error(`picocloud ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`)
    return r.stdout
  }
  const links = async (host: number): Promise<Array<{ ifname: string, ifindex: number, master?: string }>> =>
    JSON.parse(await check(topo.hosts[host].exec, 'ip', ['-j', 'link', 'show']))
  const pcLinks = async (host: number): Promise<string[]> =>
    (await links(host)).filter(l => /^pc-(br|vx)/.test(l.ifname)).map(l => `${l.ifname}#${l.ifindex}`).sort()
  const ping = async (g: Guest, to: string, wait = '1'): Promise<boolean> =>
    (await g.exec('ping', [...(to.includes(':') ? ['-6'] : []), '-c', '1', '-W', wait, to])).code === 0
  const status = async (host: number): Promise<StatusView> => await d[host].status()

  /** A guest namespace with a veth to `host`; its host end gets the VM's tap name in `attach`. */
  async function guest (name: string, host: number, addrs: string[] = []): Promise<Guest> {
    const { ns, exec } = await topo.addNamespace(`g${name}`)
    const tmpTap = `pc-x${name}`
    await check(topo.hosts[host].exec, 'ip', ['link', 'add', tmpTap, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
    for (const a of addrs) await check(exec, 'ip', ['addr', 'add', a, 'dev', 'eth0', ...(a.includes(':') ? ['nodad'] : [])])
    await check(exec, 'ip', ['link', 'set', 'eth0', 'mtu', String(MTU), 'up'])
    const g = { name, ns, exec, host, tmpTap }
    guests.set(name, g)
    return g
  }
  /** The guest becomes VM `vmId`'s NIC 0: its MAC, and the host end renamed to the VM's tap. */
  async function attach (g: Guest, vmId: string): Promise<void> {
    g.vmId = vmId
    const h = topo.hosts[g.host].exec
    await check(g.exec, 'ip', ['link', 'set', 'eth0', 'address', vmMac(vmId, 0)])
    await check(h, 'ip', ['link', 'set', 'dev', g.tmpTap, 'name', tapName(vmId, 0)])
  }
  async function vmCreate (name: string, host: number, net: string, via = 0): Promise<string> {
    const out = await ok(via, '--json', 'vm', 'create', name, '--image', 'tiny', '--type', 'small', '--net', net, '--on', NAMES[host])
    const r = JSON.parse(out) as { id: string, status: string }
    expect(r.status).toBe('placed')
    return r.id
  }
  const config = (i: number): string => [
    'hypervisor = "none"', 'network = "linux"', `wireguard_interface = "${topo.hosts[i].wgIfname}"`,
    'vcpus = 64', 'mem_mib = 65536', 'disk_gib = 1000', 'heartbeat_interval = 0.5', 'reconnect_interval = 0.5'
  ].join('\n')

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pct-meshnet-'))
    keyring = join(dir, 'keyring')
    await writeFile(join(dir, 'udhcpc.sh'), UDHCPC_SCRIPT, { mode: 0o755 })
    topo = await createTopology(3)
    mesh = await TestMesh.create()
    for (let i = 0; i < 3; i++) {
      d.push(await mesh.daemon(NAMES[i], config(i), {}, { netns: topo.hosts[i].ns, listen: `/ip4/${topo.hosts[i].underlayAddr}/tcp/9777` }))
    }
    expect((await d[0].cli('init', '--name', 'netmesh')).code).toBe(0)
    const addr = (await d[0].id()).addresses[0]
    for (const x of d.slice(1)) {
      expect((await d[0].cli('admit', (await x.id()).peerId, '--name', x.name)).code).toBe(0)
      const j = await x.cli('join', addr)
      if (j.code !== 0) throw new Error(`join failed: ${j.stderr}\n${x.log}`)
    }
    await ok(0, 'key', 'generate', '--name', 'owner', '--email', 'owner@example.org')
    const fpr = JSON.parse(await ok(0, '--json', 'key', 'list'))[0].fingerprint as string
    const keyFile = join(dir, 'owner.asc')
    await writeFile(keyFile, await ok(0, 'key', 'export', fpr))
    for (const x of d) expect((await x.cli('trust', 'add', keyFile)).code).toBe(0)
    // Every host sees every host's WireGuard key and endpoint.
    for (let i = 0; i < 3; i++) {
      await waitFor(async () => (await status(i)).network?.peers.length === 2, { timeoutMs: LONG, what: `${NAMES[i]} to have two WireGuard peers` })
    }
  }, 180_000)

  afterAll(async () => {
    for (const c of children) await stopChild(c).catch(() => {})
    await mesh?.stopAll()
    await topo?.cleanup() // wireguard-go, dnsmasq and every other process of the namespaces
    // The daemons' claims on their WireGuard interface names (node/network/reconciler.ts, claimInterface).
    for (const h of topo?.hosts ?? []) await rm(`/run/picocloud/net-${h.wgIfname}.pid`, { force: true })
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  }, 60_000)

  it('status shows the data plane and the WireGuard peers with their endpoints', async () => {
    const s = await status(0)
    expect(s.network).toMatchObject({ mode: 'linux', interface: topo.hosts[0].wgIfname, listenPort: 51820, endpoints: [`${topo.hosts[0].underlayAddr}:51820`] })
    expect(s.network?.peers.map(p => p.endpoint).sort()).toEqual([`${topo.hosts[1].underlayAddr}:51820`, `${topo.hosts[2].underlayAddr}:51820`])
    const text = (await d[0].cli('status')).stdout
    expect(text).toMatch(/LAST HANDSHAKE/)
    expect(text).toMatch(/bravo/)
  })

  it('a network spanning A and C: guests ping over IPv4 and IPv6, encrypted only on the underlay; another network stays apart', async () => {
    await ok(0, 'net', 'create', 'lan', '--subnet', '10.50.0.0/24', '--subnet6', 'fd50::/64', '--mode', 'static', '--gateway', 'none')
    await ok(0, 'net', 'create', 'other', '--subnet', '10.50.0.0/24', '--mode', 'static', '--gateway', 'none')
    const ga = await guest('a', 0, ['10.50.0.1/24', 'fd50::1/64'])
    const gc = await guest('c', 2, ['10.50.0.3/24', 'fd50::3/64'])
    const gx = await guest('x', 0, ['10.50.0.9/24', 'fd50::9/64'])
    await attach(ga, await vmCreate('va', 0, 'lan:10.50.0.1'))
    await attach(gc, await vmCreate('vc', 2, 'lan:10.50.0.3', 2))
    await attach(gx, await vmCreate('vx', 0, 'other:10.50.0.9', 1))

    const file = join(dir, 'underlay.pcap')
    // A's port on the underlay bridge, without the control plane (libp2p, Noise-encrypted, TCP 9777).
    const tcpdump = topo.spawnIn(topo.underlayNs, 'tcpdump', ['-i', topo.hosts[0].underlayPort, '--immediate-mode', '-n', '-U', '-Z', 'root', '-w', file, 'not', 'tcp', 'port', '9777'])
    children.push(tcpdump)
    const PATTERN = 'c0ffee5ca1ab1e'
    try {
      await waitForOutput(tcpdump, 'listening on')
      await waitFor(async () => await ping(ga, '10.50.0.3'), { timeoutMs: LONG, what: 'IPv4 ping from guest a (on A) to guest c (on C)' })
      await waitFor(async () => await ping(gc, 'fd50::1'), { timeoutMs: LONG, what: 'IPv6 ping from guest c to guest a' })
      expect((await ga.exec('ping', ['-c', '3', '-i', '0.2', '-p', PATTERN, '-M', 'do', '-s', String(MTU - 28), '10.50.0.3'])).code).toBe(0)
    } finally {
      await stopChild(tcpdump)
    }
    const lines = (await realExec('tcpdump', ['-r', file, '-n'])).stdout.split('\n').filter(Boolean)
    const housekeeping = /^\S+ (ARP, |IP 0\.0\.0\.0 > 224\.0\.0\.22: igmp|IP6 :: > ff02::16: HBH ICMP6, multicast listener report)/
    const wg = /^\S+ IP 10\.255\.0\.\d+\.51820 > 10\.255\.0\.\d+\.51820: UDP, length \d+$/
    expect(lines.filter(l => !housekeeping.test(l) && !wg.test(l))).toEqual([])
    expect(lines.filter(l => wg.test(l)).length).toBeGreaterThan(6)
    // The guests' payload pattern never crosses in clear.
    expect((await readFile(file)).includes(Buffer.from(PATTERN + PATTERN, 'hex'))).toBe(false)

    // Isolation: same subnet, other network — neither the guest on the same host nor across.
    expect(await ping(gx, '10.50.0.3')).toBe(false)
    expect(await ping(gx, '10.50.0.1')).toBe(false)
    expect(await ping(gx, 'fd50::3')).toBe(false)
    // B carries no VM of either network: no bridge there.
    expect(await pcLinks(1)).toEqual([])

    const show = JSON.parse(await ok(0, '--json', 'net', 'show', 'lan'))
    await waitFor(async () => JSON.parse(await ok(1, '--json', 'net', 'show', 'lan')).presence.length === 2, { timeoutMs: LONG, what: 'lan present on two hosts in B\'s view' })
    expect(show.presence.map((p: any) => p.name)).toEqual(['alpha', 'charlie'])
    expect(show.presence[0]).toMatchObject({ mtu: MTU, dnsmasq: false, taps: [tapName(ga.vmId!, 0)] })
    expect(show.presence[0].fdb.map((f: any) => f.name)).toEqual(['charlie'])
    expect((await d[1].cli('net', 'show', 'lan')).stdout).toMatch(/PRESENT ON[\s\S]*alpha[\s\S]*charlie/)
  }, 240_000)

  it('restarting every daemon (kill -9, then a clean stop) keeps a running ping going and recreates nothing', async () => {
    const ga = guests.get('a')!
    // First let every host finish attaching the taps of the previous test (the isolated guest's
    // tap may still be waiting for its host's next pass): the restarts must find nothing to do.
    for (const g of guests.values()) {
      if (g.vmId === undefined) continue
      await waitFor(async () => (await links(g.host)).find(l => l.ifname === tapName(g.vmId as string, 0))?.master?.startsWith('pc-br'),
        { timeoutMs: LONG, what: `guest ${g.name}'s tap on its network's bridge` })
    }
    const before = await Promise.all([0, 1, 2].map(pcLinks))
    const wgBefore = await Promise.all([0, 1, 2].map(async i => (await links(i)).find(l => l.ifname === topo.hosts[i].wgIfname)?.ifindex))
    const pinger = topo.spawnIn(ga.ns, 'ping', ['-i', '0.1', '10.50.0.3'])
    children.push(pinger)
    let out = ''
    pinger.stdout?.on('data', c => { out += c })
    await waitFor(() => out.split('\n').filter(l => l.includes('bytes from')).length >= 5, { timeoutMs: LONG, what: 'the running ping to answer' })
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      await Promise.all(d.map(async x => { await x.kill(signal) }))
      await Promise.all(d.map(async x => { await x.start() }))
      for (let i = 0; i < 3; i++) {
        await waitFor(async () => ((await status(i)).network?.passes ?? 0) >= 2, { timeoutMs: LONG, what: `${NAMES[i]} to run two network passes after the restart` })
        const s = await status(i)
        const applied = d[i].log.split('\n').filter(l => l.includes(' step=')).slice(-(s.network?.stepsApplied ?? 0) || undefined)
        expect(s.network?.stepsApplied, `${NAMES[i]} applied steps after a restart (${signal}):\n${(s.network?.stepsApplied ?? 0) > 0 ? applied.join('\n') : ''}`).toBe(0)
        expect(s.network?.errors).toBe(0)
      }
    }
    const seen = out.split('\n').filter(l => l.includes('bytes from')).length
    await waitFor(() => out.split('\n').filter(l => l.includes('bytes from')).length >= seen + 5, { timeoutMs: LONG, what: 'the ping to go on' })
    await stopChild(pinger)
    const summary = /(\d+) packets transmitted, (\d+) received/.exec(out)
    expect(summary, out.slice(-500)).not.toBeNull()
    const lost = Number(summary![1]) - Number(summary![2])
    console.log(`ping across two restarts of every daemon: ${summary![1]} sent, ${lost} lost`)
    expect(lost).toBeLessThanOrEqual(3)
    expect(await Promise.all([0, 1, 2].map(pcLinks))).toEqual(before)
    expect(await Promise.all([0, 1, 2].map(async i => (await links(i)).find(l => l.ifname === topo.hosts[i].wgIfname)?.ifindex))).toEqual(wgBefore)
  }, 300_000)

  it('a VM on B extends the network to B (reconcile latency measured)', async () => {
    const gb = await guest('b', 1, ['10.50.0.2/24', 'fd50::2/64'])
    // The guest's ARP retries fast, so that its own backoff does not count as network latency.
    await check(gb.exec, 'sysctl', ['-q', '-w', 'net.ipv4.neigh.eth0.retrans_time_ms=50'])
    // Signed ahead: the request id is the VM id, so the guest is the VM's NIC before the mesh hears of it.
    const reqFile = join(dir, 'vb.json')
    const envFile = join(dir, 'vb.env.json')
    await writeFile(reqFile, JSON.stringify({ kind: 'vm.create', body: { name: 'vb', image: 'tiny', type: 'small', nics: [{ net: 'lan', ip: '10.50.0.2' }], pin: { host: (await d[1].id()).peerId } } }))
    await ok(1, 'request', 'sign', reqFile, '-o', envFile)
    const envelope = JSON.parse(await readFile(envFile, 'utf8')) as { payload: string }
    const { createHash } = await import('node:crypto')
    await attach(gb, createHash('sha256').update(envelope.payload).digest('hex'))
    // A ping that runs from before the VM exists: its first answer says when the network reached B.
    const pinger = topo.spawnIn(gb.ns, 'ping', ['-D', '-i', '0.05', '10.50.0.1'])
    children.push(pinger)
    let out = ''
    pinger.stdout?.on('data', c => { out += c })
    const t0 = Date.now()
    const r = await d[1].api.call<{ id: string }>('POST', '/v1/requests', envelope)
    expect(r.id).toBe(gb.vmId)
    await waitFor(() => /bytes from/.test(out), { timeoutMs: LONG, what: 'guest b to reach guest a' })
    const first = Number(/^\[(\d+\.\d+)\] \d+ bytes from/m.exec(out)?.[1]) * 1000
    await stopChild(pinger)
    console.log(`reconcile latency: vm.create submitted on B (placement on B included) → B's guest reaches A's guest in ${Math.round(first - t0)} ms`)
    expect(first - t0).toBeLessThan(LONG)
    expect(await ping(gb, 'fd50::3')).toBe(true)
    await waitFor(async () => JSON.parse(await ok(0, '--json', 'net', 'show', 'lan')).presence.length === 3, { timeoutMs: LONG, what: 'lan present on three hosts' })
    const show = JSON.parse(await ok(0, '--json', 'net', 'show', 'lan'))
    expect(show.vms.sort()).toEqual(['va', 'vb', 'vc'])
    expect(show.presence.find((p: any) => p.name === 'alpha').fdb.map((f: any) => f.name).sort()).toEqual(['bravo', 'charlie'])
  }, 120_000)

  it('DHCP: two guests on different hosts get distinct addresses from the state, with the MTU', async () => {
    await ok(0, 'net', 'create', 'dl', '--subnet', '10.60.0.0/24', '--mode', 'dhcp', '--gateway', 'none')
    const g1 = await guest('d1', 0)
    const g2 = await guest('d2', 2)
    await attach(g1, await vmCreate('d1', 0, 'dl'))
    await attach(g2, await vmCreate('d2', 2, 'dl'))
    const lease = async (g: Guest): Promise<Record<string, string>> => {
      const file = join(dir, `lease-${g.name}`)
      await waitFor(async () => {
        const r = await g.exec('busybox', ['udhcpc', '-i', 'eth0', '-f', '-q', '-n', '-t', '5', '-T', '1', '-O', 'mtu', '-s', join(dir, 'udhcpc.sh')],
          { env: { ...process.env, LEASE_OUT: file }, timeoutMs: 30_000 })
        return r.code === 0
      }, { timeoutMs: LONG, what: `a DHCP lease for guest ${g.name}` })
      return Object.fromEntries((await readFile(file, 'utf8')).trim().split('\n').map(l => l.split('=') as [string, string]))
    }
    const [l1, l2] = await Promise.all([lease(g1), lease(g2)])
    expect(l1.ip).toMatch(/^10\.60\.0\.\d+$/)
    expect(l2.ip).toMatch(/^10\.60\.0\.\d+$/)
    expect(l1.ip).not.toBe(l2.ip)
    expect([l1.mtu, l2.mtu]).toEqual([String(MTU), String(MTU)])
    // The addresses are the state's: each host's dnsmasq has a static lease for its own VM only.
    const conf = async (host: number): Promise<string> => {
      const s = await status(host)
      const { readdir } = await import('node:fs/promises')
      const base = join(s.stateDir, 'net')
      const dirs = await readdir(base)
      return (await Promise.all(dirs.map(async x => await readFile(join(base, x, 'dnsmasq.conf'), 'utf8').catch(() => '')))).join('\n')
    }
    expect(await conf(0)).toContain(`dhcp-host=${vmMac(g1.vmId!, 0)},${l1.ip}`)
    expect(await conf(2)).toContain(`dhcp-host=${vmMac(g2.vmId!, 0)},${l2.ip}`)
    expect(await conf(0)).not.toContain(vmMac(g2.vmId!, 0))
    await waitFor(async () => await ping(g1, l2.ip), { timeoutMs: LONG, what: 'guest d1 to reach guest d2 on their DHCP addresses' })
    // Names: the lease names the guest's own host as its resolver, which answers the mesh's names
    // (the mesh is called netmesh) for VMs on any host, here d2 on C asked by d1 on A.
    expect(l1.dns).toMatch(/^10\.60\.0\.\d+$/)
    const lookup = async (g: Guest, name: string, server: string): Promise<string> => {
      const r = await g.exec('busybox', ['nslookup', name, server], { timeoutMs: 10_000 })
      return r.stdout + r.stderr
    }
    await waitFor(async () => (await lookup(g1, 'd2.dl.netmesh', l1.dns)).includes(l2.ip), { timeoutMs: LONG, what: 'd2.dl.netmesh from guest d1' })
    expect(await lookup(g2, 'd1.dl', l2.dns)).toContain(l1.ip)
    // And a host resolves it too: host A asks its own address on the network.
    const onHost = await topo.hosts[0].exec('busybox', ['nslookup', 'd2.dl.netmesh', l1.dns], { timeoutMs: 10_000 })
    expect(onHost.stdout + onHost.stderr).toContain(l2.ip)
    // vm list and vm show print the address the guest got, on any host (here B, which runs neither).
    const listed = JSON.parse(await ok(1, 'vm', 'list', '-o', 'json')) as Array<{ name: string, addresses: Array<{ net: string, address: string }> }>
    expect(listed.find(v => v.name === 'd1')?.addresses).toEqual([{ net: 'dl', address: l1.ip }])
    expect(listed.find(v => v.name === 'd2')?.addresses).toEqual([{ net: 'dl', address: l2.ip }])
    expect(await ok(1, 'vm', 'show', 'd2')).toMatch(new RegExp(`address +${l2.ip.replace(/\./g, '\\.')} \\(dl\\)`))
    expect(await ok(1, 'vm', 'list', '-o', 'wide')).toMatch(/ADDRESSES[\s\S]*IMAGE[\s\S]*SIZE[\s\S]*HA[\s\S]*AGE/)
  }, 180_000)

  it('destroying the VMs and deleting the networks removes every device on every host', async () => {
    for (const vm of ['va', 'vb', 'vc', 'vx', 'd1', 'd2']) await ok(0, 'vm', 'destroy', vm)
    for (const net of ['lan', 'other', 'dl']) {
      await waitFor(async () => (await user(0, 'net', 'delete', net)).code === 0, { timeoutMs: LONG, what: `net delete ${net}` })
    }
    for (let i = 0; i < 3; i++) {
      await waitFor(async () => (await pcLinks(i)).length === 0, { timeoutMs: LONG, what: `every bridge and VXLAN on ${NAMES[i]} to go` })
      // The VMs' taps are released, not deleted (the hypervisor owns taps).
      expect((await links(i)).filter(l => l.ifname.startsWith('pc-t') && l.master !== undefined)).toEqual([])
      await waitFor(async () => (await status(i)).network?.networks.length === 0, { timeoutMs: LONG, what: `${NAMES[i]} to carry no network` })
    }
    const dnsmasq = (await realExec('pgrep', ['-a', 'dnsmasq'])).stdout.split('\n').filter(l => l.includes(mesh.dir))
    expect(dnsmasq).toEqual([])
    expect((await user(0, 'net', 'show', 'lan')).code).not.toBe(0)
  }, 180_000)
})
