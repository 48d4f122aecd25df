/**
 * Real multi-host topologies in network namespaces (root only): N "hosts", each a namespace with
 * an `eth0` on one underlay bridge (itself in its own namespace), and "guests": namespaces whose
 * `eth0` is one end of a veth whose other end (`pc-tg…`) lives in a host and is handed to the
 * network plan as a tap. Every name carries a unique `pct-<hex>` prefix; underlay addresses are
 * 10.255.0.<i+1>/24 and exist only inside these namespaces.
 *
 * @example
 * const topo = await createTopology(3)
 * try { … } finally { await topo.cleanup() }
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { realExec, check, inNetns } from '../../node/exec.ts'
import type { Exec } from '../../node/exec.ts'
import { waitFor } from './wait.ts'

export interface TestHost {
  index: number
  ns: string
  exec: Exec
  underlayAddr: string
  /** This host's port on the underlay bridge (in the underlay namespace): capture there. */
  underlayPort: string
  /** WireGuard interface name, unique across namespaces (UAPI sockets share /var/run/wireguard). */
  wgIfname: string
}

export interface TestGuest {
  name: string
  ns: string
  exec: Exec
  host: TestHost
  /** The host-side end, to be listed in the network's `localTaps`. */
  tap: string
  addr4?: string
  addr6?: string
}

export interface Topology {
  prefix: string
  underlayNs: string
  underlayBridge: string
  hosts: TestHost[]
  guests: TestGuest[]
  addGuest: (host: TestHost, options: { name: string, addr4?: string, addr6?: string, mtu: number }) => Promise<TestGuest>
  /** A bare namespace `<prefix>-<suffix>` (lo up), deleted at cleanup with its processes. */
  addNamespace: (suffix: string) => Promise<{ ns: string, exec: Exec }>
  /** Starts a long-running command in a namespace; it is killed at cleanup at the latest. */
  spawnIn: (ns: string, cmd: string, args: string[]) => ChildProcess
  cleanup: () => Promise<void>
}

const sh = async (script: string): Promise<boolean> => (await realExec('sh', ['-c', script])).code === 0

/** Why real network tests cannot run here, or undefined when they can. */
/** Debian packages of the commands tests ask for, for the skip reason. */
const PACKAGE_OF: Record<string, string> = {
  ip: 'iproute2', bridge: 'iproute2', ping: 'iputils-ping', dnsmasq: 'dnsmasq-base', nft: 'nftables', busybox: 'busybox',
  sysctl: 'procps', dhclient: 'isc-dhcp-client', tcpdump: 'tcpdump', iperf3: 'iperf3', wg: 'wireguard-tools'
}

export async function netnsUnavailableReason (commands: string[] = []): Promise<string | undefined> {
  if (process.platform !== 'linux') return 'not Linux'
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)'
  for (const c of ['ip', 'bridge', ...commands]) {
    if (!await sh(`command -v ${c} >/dev/null`)) return `command ${c} not found${PACKAGE_OF[c] === undefined ? '' : ` (Debian package ${PACKAGE_OF[c]})`}; CI installs it: .ci/install-system-packages`
  }
  const probe = `pct-probe-${randomBytes(3).toString('hex')}`
  if (!await sh(`ip netns add ${probe}`)) return 'cannot create network namespaces (`ip netns add` failed: a container without CAP_SYS_ADMIN?)'
  await sh(`ip netns del ${probe}`)
  return undefined
}

/** Why WireGuard cannot run here (neither kernel module nor wireguard-go with /dev/net/tun). */
export async function wireguardUnavailableReason (): Promise<string | undefined> {
  if (!await sh('command -v wg >/dev/null')) return 'wg not found (Debian package wireguard-tools; CI installs it: .ci/install-system-packages)'
  if (await sh('test -d /sys/module/wireguard || modprobe -n wireguard 2>/dev/null')) return undefined
  if (!await sh('command -v wireguard-go >/dev/null')) return 'no kernel WireGuard and no wireguard-go (Debian package wireguard-go; CI installs it: .ci/install-system-packages)'
  if (!await sh('test -c /dev/net/tun')) return 'no /dev/net/tun for wireguard-go'
  return undefined
}

export async function createTopology (count: number): Promise<Topology> {
  const tag = randomBytes(3).toString('hex')
  const prefix = `pct-${tag}`
  const underlayNs = `${prefix}-u`
  const underlayBridge = 'pc-ul0'
  const namespaces: string[] = []
  const children = new Set<ChildProcess>()
  const wgIfnames: string[] = []
  const hosts: TestHost[] = []
  const guests: TestGuest[] = []

  const addNs = async (ns: string): Promise<Exec> => {
    await check(realExec, 'ip', ['netns', 'add', ns])
    namespaces.push(ns)
    const exec = inNetns(realExec, ns)
    await check(exec, 'ip', ['link', 'set', 'lo', 'up'])
    return exec
  }

  async function cleanup (): Promise<void> {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    for (const ns of [...namespaces].reverse()) {
      const pids = async (): Promise<number[]> => (await realExec('ip', ['netns', 'pids', ns])).stdout.split('\n').filter(Boolean).map(Number)
      for (const pid of await pids()) { try { process.kill(pid, 'SIGKILL') } catch {} }
      await waitFor(async () => (await pids()).length === 0, { timeoutMs: 5000, what: `processes of ${ns} to exit` }).catch(() => {})
      await realExec('ip', ['netns', 'del', ns])
    }
    namespaces.length = 0
    for (const ifname of wgIfnames) await rm(`/var/run/wireguard/${ifname}.sock`, { force: true })
  }

  try {
    const u = await addNs(underlayNs)
    await check(u, 'ip', ['link', 'add', underlayBridge, 'type', 'bridge'])
    await check(u, 'ip', ['link', 'set', underlayBridge, 'addrgenmode', 'none'])
    await check(u, 'ip', ['link', 'set', underlayBridge, 'up'])
    for (let i = 0; i < count; i++) {
      const ns = `${prefix}-h${i}`
      const exec = await addNs(ns)
      const port = `ul${i}`
      await check(u, 'ip', ['link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      await check(u, 'ip', ['link', 'set', port, 'addrgenmode', 'none'])
      await check(u, 'ip', ['link', 'set', port, 'master', underlayBridge, 'up'])
      // No IPv6 on the underlay: a capture there then shows nothing but what the hosts send on purpose.
      await check(exec, 'ip', ['link', 'set', 'eth0', 'addrgenmode', 'none'])
      const underlayAddr = `10.255.0.${i + 1}`
      await check(exec, 'ip', ['addr', 'add', `${underlayAddr}/24`, 'dev', 'eth0'])
      await check(exec, 'ip', ['link', 'set', 'eth0', 'up'])
      const wgIfname = `pc-wg${tag}${i}`
      wgIfnames.push(wgIfname)
      hosts.push({ index: i, ns, exec, underlayAddr, underlayPort: port, wgIfname })
    }
  } catch (err) {
    await cleanup()
    throw err
  }

  return {
    prefix,
    underlayNs,
    underlayBridge,
    hosts,
    guests,
    async addGuest (host, options) {
      if (!/^[a-z0-9]{1,8}$/.test(options.name)) throw new Error(`guest name must be 1-8 of [a-z0-9]: ${options.name}`)
      const ns = `${prefix}-g${options.name}`
      const exec = await addNs(ns)
      const tap = `pc-tg${options.name}`
      await check(host.exec, 'ip', ['link', 'add', tap, 'mtu', String(options.mtu), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      await check(exec, 'ip', ['link', 'set', 'eth0', 'mtu', String(options.mtu)])
      if (options.addr4 !== undefined) await check(exec, 'ip', ['addr', 'add', options.addr4, 'dev', 'eth0'])
      if (options.addr6 !== undefined) await check(exec, 'ip', ['addr', 'add', options.addr6, 'dev', 'eth0', 'nodad'])
      await check(exec, 'ip', ['link', 'set', 'eth0', 'up'])
      const guest: TestGuest = {
        name: options.name, ns, exec, host, tap,
        ...(options.addr4 !== undefined ? { addr4: options.addr4.split('/')[0] } : {}),
        ...(options.addr6 !== undefined ? { addr6: options.addr6.split('/')[0] } : {})
      }
      guests.push(guest)
      return guest
    },
    async addNamespace (suffix) {
      if (!/^[a-z0-9]{1,8}$/.test(suffix)) throw new Error(`namespace suffix must be 1-8 of [a-z0-9]: ${suffix}`)
      const ns = `${prefix}-${suffix}`
      return { ns, exec: await addNs(ns) }
    },
    spawnIn (ns, cmd, args) {
      const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      children.add(child)
      child.on('exit', () => children.delete(child))
      return child
    },
    cleanup
  }
}

/**
 * "Outside": a namespace behind `host`'s default route (198.51.100.0/24 on a veth), holding
 * `address`/32 on its loopback, with no route back to any VM subnet: what host-nat must reach.
 */
export async function addOutside (topo: Topology, host: TestHost, address: string): Promise<{ ns: string, exec: Exec }> {
  const out = await topo.addNamespace('out')
  await check(host.exec, 'ip', ['link', 'add', 'pc-tout', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', out.ns])
  await check(host.exec, 'ip', ['addr', 'add', '198.51.100.1/24', 'dev', 'pc-tout'])
  await check(host.exec, 'ip', ['link', 'set', 'pc-tout', 'up'])
  await check(host.exec, 'ip', ['route', 'add', 'default', 'via', '198.51.100.2'])
  await check(out.exec, 'ip', ['addr', 'add', '198.51.100.2/24', 'dev', 'eth0'])
  await check(out.exec, 'ip', ['addr', 'add', `${address}/32`, 'dev', 'lo'])
  await check(out.exec, 'ip', ['link', 'set', 'eth0', 'up'])
  return out
}

/** Waits for a child's stdout or stderr to contain `text` (e.g. tcpdump's "listening on"). */
export async function waitForOutput (child: ChildProcess, text: string, timeoutMs = 10_000): Promise<void> {
  let seen = ''
  const onData = (d: Buffer): void => { seen += d.toString() }
  child.stdout?.on('data', onData)
  child.stderr?.on('data', onData)
  try {
    await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${seen}`)
      return seen.includes(text)
    }, { timeoutMs, what: `"${text}" from the child process` })
  } finally {
    child.stdout?.off('data', onData)
    child.stderr?.off('data', onData)
  }
}

/** Stops a child (SIGINT first, so that tcpdump flushes its file) and waits for it to exit. */
export async function stopChild (child: ChildProcess, timeoutMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
  child.kill('SIGINT')
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  await exited
  clearTimeout(timer)
}
