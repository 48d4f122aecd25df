/**
 * The real network driver: `ip`, `bridge` and `wg` (iproute2, wireguard-tools), with kernel
 * WireGuard when the kernel has it and wireguard-go otherwise; `dnsmasq` (one per network, files in
 * `<runtimeDir>/<network>/`, the hash of its configuration beside its pidfile), `nft` (the table
 * `inet pc-net`, replaced atomically in one `nft -f` transaction) and `sysctl`. Every command runs through the
 * injected Exec, so the same driver works on the host and inside a network namespace
 * (`inNetns(realExec, ns)`). State is read as JSON (`ip -d -j link`, `ip -j addr`,
 * `bridge -j fdb`) and `wg show … dump`.
 *
 * wireguard-go is started without WG_PROCESS_FOREGROUND: it creates the TUN device and the UAPI
 * socket (/var/run/wireguard/<ifname>.sock), then daemonises, so the interface exists when the
 * command returns. It exits by itself when the interface is deleted (`link.delete`).
 *
 * @example
 * const driver = linuxNetworkDriver({ exec: inNetns(realExec, 'pct-1-a') })
 */
import { mkdtemp, mkdir, writeFile, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, basename, dirname } from 'node:path'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import { check, ExecError } from '../../exec.ts'
import type { Exec } from '../../exec.ts'
import type { Logger } from '../../log.ts'
import { silentLogger } from '../../log.ts'
import type { ActualDnsmasq, ActualFdbEntry, ActualFirewall, ActualLink, ActualPeer, ActualState, ActualWireguard, Step } from '../plan.ts'
import { VXLAN_PREFIX, BRIDGE_PREFIX, checkIfname } from '../addressing.ts'
import { DNSMASQ_FILES, FIREWALL_FAMILY, FIREWALL_TABLE } from '../services.ts'
import type { NetworkDriver, ReadStateOptions } from './types.ts'

export type WireguardBackend = 'kernel' | 'userspace'

export interface LinuxNetworkDriverInit {
  exec: Exec
  /** 'auto' tries kernel WireGuard first. @default 'auto' */
  wireguard?: 'auto' | WireguardBackend
  /** @default 'wireguard-go' */
  wireguardGo?: string
  /** @default 'dnsmasq' */
  dnsmasq?: string
  /** Where private keys are written (0600) for the moment `wg set` reads them. @default os.tmpdir() */
  tmpDir?: string
  log?: Logger
}

export interface LinuxNetworkDriver extends NetworkDriver {
  /** The backend used for the last interface created ('kernel' or 'userspace'), once known. */
  backend: () => WireguardBackend | undefined
}

const ZERO_MAC = '00:00:00:00:00:00'

interface IpLink {
  ifindex: number
  ifname: string
  flags?: string[]
  mtu: number
  master?: string
  address?: string
  linkinfo?: { info_kind?: string, info_data?: { id?: number, local?: string, local6?: string, port?: number } }
}
interface IpAddr { ifname: string, addr_info?: Array<{ family: string, local: string, prefixlen: number, scope: string }> }
interface FdbRow { mac: string, ifname?: string, dev?: string, dst?: string }

function parseJson<T> (text: string, what: string): T {
  try {
    return JSON.parse(text === '' ? '[]' : text) as T
  } catch (err) {
    throw new PicocloudError(ErrorCode.NetworkDriver, `could not parse ${what} output`, 500, { cause: err })
  }
}

/** Parses `wg show <if> dump`. */
export function parseWgDump (ifname: string, text: string): ActualWireguard {
  const lines = text.trim().split('\n').filter(l => l !== '')
  if (lines.length === 0) throw new PicocloudError(ErrorCode.NetworkDriver, `empty wg dump for ${ifname}`, 500)
  const [privateKey, , port] = lines[0].split('\t')
  const peers: ActualPeer[] = lines.slice(1).map(line => {
    const [publicKey, , endpoint, allowed, handshake, rx, tx, keepalive] = line.split('\t')
    return {
      publicKey,
      ...(endpoint !== '(none)' ? { endpoint } : {}),
      allowedIps: allowed === '(none)' ? [] : allowed.split(','),
      keepalive: keepalive === 'off' ? 0 : Number(keepalive),
      latestHandshake: Number(handshake) || 0,
      rx: Number(rx) || 0,
      tx: Number(tx) || 0
    }
  })
  return { ifname, ...(privateKey !== '(none)' ? { privateKey } : {}), listenPort: Number(port), peers }
}

/** Counts rules per chain and reads the hash from the comment of `nft list table` text output. */
export function parseNftTable (text: string): ActualFirewall {
  const hash = /^\s*comment "picocloud ([0-9a-f]+)"\s*$/m.exec(text)?.[1]
  const rules: Record<string, number> = {}
  let chain: string | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    const open = /^chain (\S+) \{$/.exec(line)
    if (open !== null) { chain = open[1]; rules[chain] = 0; continue }
    if (chain === undefined) continue
    if (line === '}') { chain = undefined; continue }
    if (line === '' || line.startsWith('type ') || line.startsWith('policy ') || line.startsWith('comment ')) continue
    rules[chain]++
  }
  for (const [c, k] of Object.entries(rules)) if (k === 0) delete rules[c]
  return { ...(hash !== undefined ? { hash } : {}), rules }
}

/** A service directory must be an absolute path whose last part is a plain name. */
function checkServiceDir (dir: string): void {
  const name = basename(dir)
  if (!dir.startsWith('/') || name === '' || name === '.' || name === '..' || dir.split('/').includes('..') || dirname(dir) === dir) {
    throw new PicocloudError(ErrorCode.NetworkDriver, `refusing service directory ${JSON.stringify(dir)}`, 500)
  }
}

/** Pid of the dnsmasq whose pidfile is in `dir`, when that process is alive and is that dnsmasq. */
export async function runningDnsmasq (dir: string): Promise<number | undefined> {
  const pid = Number((await readFile(join(dir, DNSMASQ_FILES.pid), 'utf8').catch(() => '')).trim())
  if (!Number.isInteger(pid) || pid <= 1) return undefined
  return await isOurDnsmasq(pid, dir) ? pid : undefined
}

async function isOurDnsmasq (pid: number, dir: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  const argv = cmdline.split('\0')
  return basename(argv[0] ?? '').startsWith('dnsmasq') && argv.includes(`--conf-file=${join(dir, DNSMASQ_FILES.conf)}`)
}

async function stopDnsmasq (dir: string, pid: number): Promise<void> {
  if (!await isOurDnsmasq(pid, dir)) return
  try { process.kill(pid, 'SIGTERM') } catch { return }
  const deadline = Date.now() + 5000
  while (await isOurDnsmasq(pid, dir)) {
    if (Date.now() > deadline) { try { process.kill(pid, 'SIGKILL') } catch {} }
    if (Date.now() > deadline + 2000) throw new PicocloudError(ErrorCode.NetworkDriver, `dnsmasq ${pid} of ${dir} does not exit`, 500)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

export function linuxNetworkDriver (init: LinuxNetworkDriverInit): LinuxNetworkDriver {
  const { exec } = init
  const log = init.log ?? silentLogger
  let backend: WireguardBackend | undefined = init.wireguard === 'auto' ? undefined : init.wireguard
  const run = async (cmd: string, args: string[], input?: string): Promise<string> => await check(exec, cmd, args, input !== undefined ? { input } : undefined)

  async function readState (options: ReadStateOptions): Promise<ActualState> {
    const [linkText, addrText, fdbText] = await Promise.all([
      run('ip', ['-d', '-j', 'link', 'show']),
      run('ip', ['-j', 'addr', 'show']),
      run('bridge', ['-j', 'fdb', 'show'])
    ])
    const addrs = new Map<string, string[]>()
    for (const a of parseJson<IpAddr[]>(addrText, 'ip addr')) {
      // Link-local addresses count on our bridges only (the RA source address is ours to manage).
      const ours = a.ifname.startsWith(BRIDGE_PREFIX)
      addrs.set(a.ifname, (a.addr_info ?? []).filter(i => i.scope !== 'host' && (ours || i.scope !== 'link')).map(i => `${i.local}/${i.prefixlen}`))
    }
    const links: ActualLink[] = parseJson<IpLink[]>(linkText, 'ip link').map(l => {
      const kind = l.linkinfo?.info_kind
      const data = l.linkinfo?.info_data
      const local = data?.local6 ?? data?.local
      return {
        ifname: l.ifname,
        ifindex: l.ifindex,
        ...(kind !== undefined ? { kind } : {}),
        mtu: l.mtu,
        up: (l.flags ?? []).includes('UP'),
        ...(l.master !== undefined ? { master: l.master } : {}),
        ...(l.address !== undefined ? { mac: l.address } : {}),
        ...(kind === 'vxlan' && data !== undefined
          ? { vxlan: { vni: data.id ?? 0, ...(local !== undefined ? { local } : {}), port: data.port ?? 0 } }
          : {}),
        addresses: addrs.get(l.ifname) ?? []
      }
    })
    const fdb: ActualFdbEntry[] = []
    for (const row of parseJson<FdbRow[]>(fdbText, 'bridge fdb')) {
      const ifname = row.ifname ?? row.dev
      if (ifname?.startsWith(VXLAN_PREFIX) === true && row.mac === ZERO_MAC && row.dst !== undefined) fdb.push({ ifname, dst: row.dst })
    }
    let wireguard: ActualWireguard | undefined
    if (links.some(l => l.ifname === options.wgIfname)) {
      const r = await exec('wg', ['show', options.wgIfname, 'dump'])
      if (r.code === 0) wireguard = parseWgDump(options.wgIfname, r.stdout)
      else log.warn('cannot read WireGuard state', { ifname: options.wgIfname, error: r.stderr.trim() })
    }
    const [dnsmasq, firewall, forwarding] = await Promise.all([
      options.runtimeDir !== undefined ? readDnsmasq(options.runtimeDir) : Promise.resolve(undefined),
      readFirewall(),
      exec('sysctl', ['-n', 'net.ipv4.ip_forward']).then(r => r.code === 0 ? r.stdout.trim() === '1' : undefined, () => undefined)
    ])
    return {
      links,
      ...(wireguard !== undefined ? { wireguard } : {}),
      fdb,
      ...(dnsmasq !== undefined ? { dnsmasq } : {}),
      ...(firewall !== undefined ? { firewall } : {}),
      ...(forwarding !== undefined ? { ipv4Forwarding: forwarding } : {})
    }
  }

  async function readDnsmasq (runtimeDir: string): Promise<ActualDnsmasq[]> {
    let entries: string[]
    try {
      entries = await readdir(runtimeDir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw err
    }
    const out: ActualDnsmasq[] = []
    for (const name of entries.sort()) {
      const dir = join(runtimeDir, name)
      const files = await readdir(dir).catch(() => [] as string[])
      if (!files.includes(DNSMASQ_FILES.conf) && !files.includes(DNSMASQ_FILES.hash)) continue
      const pid = await runningDnsmasq(dir)
      const hash = (await readFile(join(dir, DNSMASQ_FILES.hash), 'utf8').catch(() => '')).trim()
      out.push({ dir, ...(pid !== undefined ? { pid } : {}), ...(hash !== '' ? { hash } : {}) })
    }
    return out
  }

  async function readFirewall (): Promise<ActualFirewall | undefined> {
    let r
    try {
      r = await exec('nft', ['list', 'table', FIREWALL_FAMILY, FIREWALL_TABLE])
    } catch {
      return undefined // no nft: there is no table of ours either
    }
    if (r.code !== 0) return undefined
    return parseNftTable(r.stdout)
  }

  async function applyDnsmasqStart (s: Extract<Step, { type: 'dnsmasq.start' }>): Promise<void> {
    checkServiceDir(s.dir)
    await mkdir(s.dir, { recursive: true, mode: 0o755 })
    if (s.stopPid !== undefined) await stopDnsmasq(s.dir, s.stopPid)
    const conf = join(s.dir, DNSMASQ_FILES.conf)
    await rm(join(s.dir, DNSMASQ_FILES.hash), { force: true })
    await rm(join(s.dir, DNSMASQ_FILES.pid), { force: true })
    await writeFile(conf, s.config, { mode: 0o644 })
    let r
    try {
      r = await exec(init.dnsmasq ?? 'dnsmasq', [`--conf-file=${conf}`])
    } catch (err) {
      throw new PicocloudError(ErrorCode.NetworkDriver, `cannot run dnsmasq (install dnsmasq-base): ${(err as Error).message}`, 500, { cause: err })
    }
    if (r.code !== 0) throw new PicocloudError(ErrorCode.NetworkDriver, `dnsmasq for ${s.ifname} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, 500)
    // dnsmasq writes its pidfile before the starting process exits; check that it stayed up.
    if (await runningDnsmasq(s.dir) === undefined) throw new PicocloudError(ErrorCode.NetworkDriver, `dnsmasq for ${s.ifname} exited right after starting`, 500)
    await writeFile(join(s.dir, DNSMASQ_FILES.hash), s.hash + '\n', { mode: 0o644 })
  }

  async function createWireguard (ifname: string): Promise<void> {
    if (backend !== 'userspace') {
      const r = await exec('ip', ['link', 'add', 'dev', ifname, 'type', 'wireguard'])
      if (r.code === 0) { backend = 'kernel'; return }
      if (backend === 'kernel') throw new ExecError('ip', ['link', 'add', 'dev', ifname, 'type', 'wireguard'], r)
      log.debug('no kernel WireGuard, using wireguard-go', { error: r.stderr.trim() })
    }
    const env = { ...process.env }
    delete env.WG_PROCESS_FOREGROUND // let it daemonise: the TUN and UAPI socket exist when it returns
    delete env.LOG_LEVEL // with a log level it would keep our stdout open
    let r
    try {
      r = await exec(init.wireguardGo ?? 'wireguard-go', [ifname], { env })
    } catch (err) {
      throw new PicocloudError(ErrorCode.WireguardUnavailable, `no kernel WireGuard and wireguard-go cannot run: ${(err as Error).message}`, 500, { cause: err })
    }
    if (r.code !== 0) {
      throw new PicocloudError(ErrorCode.WireguardUnavailable, `no kernel WireGuard and wireguard-go failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, 500)
    }
    backend = 'userspace'
  }

  async function withKeyFile<T> (key: string, fn: (path: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(init.tmpDir ?? tmpdir(), 'pc-wgkey-')) // mode 0700
    const file = join(dir, 'key')
    try {
      await writeFile(file, key + '\n', { mode: 0o600 })
      return await fn(file)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }

  async function applyOne (s: Step): Promise<void> {
    if ('ifname' in s) checkIfname(s.ifname)
    switch (s.type) {
      case 'dnsmasq.start':
        await applyDnsmasqStart(s); return
      case 'dnsmasq.stop':
        checkServiceDir(s.dir)
        if (s.pid !== undefined) await stopDnsmasq(s.dir, s.pid)
        await rm(s.dir, { recursive: true, force: true })
        return
      case 'firewall.replace':
        // One transaction: there is never a moment without the table's rules.
        await run('nft', ['-f', '-'], `add table ${FIREWALL_FAMILY} ${FIREWALL_TABLE}\ndelete table ${FIREWALL_FAMILY} ${FIREWALL_TABLE}\n${s.ruleset}`)
        return
      case 'firewall.delete':
        await run('nft', ['delete', 'table', FIREWALL_FAMILY, FIREWALL_TABLE]); return
      case 'sysctl.set':
        if (!/^net\.[a-z0-9_.-]+$/.test(s.key)) throw new PicocloudError(ErrorCode.NetworkDriver, `refusing sysctl ${s.key}`, 500)
        await run('sysctl', ['-q', '-w', `${s.key}=${s.value}`]); return
      case 'link.delete':
        await run('ip', ['link', 'del', 'dev', s.ifname]); return
      case 'wg.create':
        await createWireguard(s.ifname); return
      case 'wg.configure': {
        const port = s.listenPort !== undefined ? ['listen-port', String(s.listenPort)] : []
        if (s.privateKey !== undefined) {
          await withKeyFile(s.privateKey, async file => await run('wg', ['set', s.ifname, 'private-key', file, ...port]))
        } else {
          await run('wg', ['set', s.ifname, ...port])
        }
        return
      }
      case 'wg.peer.set':
        await run('wg', ['set', s.ifname, 'peer', s.publicKey,
          ...(s.endpoint !== undefined ? ['endpoint', s.endpoint] : []),
          'allowed-ips', s.allowedIps.join(','), 'persistent-keepalive', s.keepalive === 0 ? 'off' : String(s.keepalive)])
        return
      case 'wg.peer.remove':
        await run('wg', ['set', s.ifname, 'peer', s.publicKey, 'remove']); return
      case 'bridge.create':
        await run('ip', ['link', 'add', 'name', s.ifname, 'mtu', String(s.mtu), 'address', s.mac, 'type', 'bridge'])
        // No IPv6 link-local address: the host is not a member of its VMs' networks.
        await run('ip', ['link', 'set', 'dev', s.ifname, 'addrgenmode', 'none'])
        return
      case 'vxlan.create':
        await run('ip', ['link', 'add', 'name', s.ifname, 'mtu', String(s.mtu), 'type', 'vxlan', 'id', String(s.vni),
          'local', s.local, 'dstport', String(s.port)])
        await run('ip', ['link', 'set', 'dev', s.ifname, 'addrgenmode', 'none'])
        return
      case 'link.set': {
        if (s.master === null) await run('ip', ['link', 'set', 'dev', s.ifname, 'nomaster'])
        const args = [
          ...(s.mtu !== undefined ? ['mtu', String(s.mtu)] : []),
          ...(s.mac !== undefined ? ['address', s.mac] : []),
          ...(typeof s.master === 'string' ? ['master', checkIfname(s.master)] : []),
          ...(s.up === true ? ['up'] : [])
        ]
        if (args.length > 0) await run('ip', ['link', 'set', 'dev', s.ifname, ...args])
        return
      }
      case 'addr.add':
        if (s.address.includes(':') && s.ifname.startsWith(BRIDGE_PREFIX)) {
          // The host serves router advertisements on its bridges; it does not listen to them.
          await run('sysctl', ['-q', '-w', `net.ipv6.conf.${s.ifname}.accept_ra=0`, `net.ipv6.conf.${s.ifname}.autoconf=0`])
        }
        await run('ip', ['addr', 'add', s.address, 'dev', s.ifname, ...(s.address.includes(':') ? ['nodad'] : [])]); return
      case 'addr.remove':
        await run('ip', ['addr', 'del', s.address, 'dev', s.ifname]); return
      case 'fdb.add':
        await run('bridge', ['fdb', 'append', ZERO_MAC, 'dev', s.ifname, 'dst', s.dst]); return
      case 'fdb.remove':
        await run('bridge', ['fdb', 'del', ZERO_MAC, 'dev', s.ifname, 'dst', s.dst])
    }
  }

  return {
    backend: () => backend,
    readState,
    async apply (steps: readonly Step[]): Promise<void> {
      for (const s of steps) {
        log.debug('apply', { step: s.type, what: s.description })
        try {
          await applyOne(s)
        } catch (err) {
          if (err instanceof PicocloudError) throw err
          throw new PicocloudError(ErrorCode.NetworkDriver, `${s.description}: ${(err as Error).message}`, 500, { cause: err })
        }
      }
    }
  }
}
