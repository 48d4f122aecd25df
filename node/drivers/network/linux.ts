/**
 * The real network driver: `ip`, `bridge` and `wg` (iproute2, wireguard-tools), with kernel
 * WireGuard when the kernel has it and wireguard-go otherwise. Every command runs through the
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
import { mkdtemp, writeFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import { check, ExecError } from '../exec.ts'
import type { Exec } from '../exec.ts'
import type { Logger } from '../../log.ts'
import { silentLogger } from '../../log.ts'
import type { ActualFdbEntry, ActualLink, ActualPeer, ActualState, ActualWireguard, Step } from '../../net/plan.ts'
import { VXLAN_PREFIX, checkIfname } from '../../net/addressing.ts'
import type { NetworkDriver, ReadStateOptions } from './types.ts'

export type WireguardBackend = 'kernel' | 'userspace'

export interface LinuxNetworkDriverInit {
  exec: Exec
  /** 'auto' tries kernel WireGuard first. @default 'auto' */
  wireguard?: 'auto' | WireguardBackend
  /** @default 'wireguard-go' */
  wireguardGo?: string
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
    const [publicKey, , endpoint, allowed, , , , keepalive] = line.split('\t')
    return {
      publicKey,
      ...(endpoint !== '(none)' ? { endpoint } : {}),
      allowedIps: allowed === '(none)' ? [] : allowed.split(','),
      keepalive: keepalive === 'off' ? 0 : Number(keepalive)
    }
  })
  return { ifname, ...(privateKey !== '(none)' ? { privateKey } : {}), listenPort: Number(port), peers }
}

export function linuxNetworkDriver (init: LinuxNetworkDriverInit): LinuxNetworkDriver {
  const { exec } = init
  const log = init.log ?? silentLogger
  let backend: WireguardBackend | undefined = init.wireguard === 'auto' ? undefined : init.wireguard
  const run = async (cmd: string, args: string[]): Promise<string> => await check(exec, cmd, args)

  async function readState (options: ReadStateOptions): Promise<ActualState> {
    const [linkText, addrText, fdbText] = await Promise.all([
      run('ip', ['-d', '-j', 'link', 'show']),
      run('ip', ['-j', 'addr', 'show']),
      run('bridge', ['-j', 'fdb', 'show'])
    ])
    const addrs = new Map<string, string[]>()
    for (const a of parseJson<IpAddr[]>(addrText, 'ip addr')) {
      addrs.set(a.ifname, (a.addr_info ?? []).filter(i => i.scope !== 'link' && i.scope !== 'host').map(i => `${i.local}/${i.prefixlen}`))
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
    return { links, ...(wireguard !== undefined ? { wireguard } : {}), fdb }
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
    checkIfname(s.ifname)
    switch (s.type) {
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
