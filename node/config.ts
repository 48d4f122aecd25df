/**
 * Where everything lives and how the daemon is configured. Paths are resolved once, in this order:
 * command-line flag, environment (PICOCLOUD_CONFIG, PICOCLOUD_STATE, PICOCLOUD_SOCKET), the TOML
 * config file, the default. Every path is overridable so several daemons run side by side.
 */
import { readFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { parse as parseToml } from 'smol-toml'
import { multiaddr } from '@multiformats/multiaddr'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'

import { DEFAULT_CONFIG, DEFAULT_STATE, DEFAULT_SOCKET } from './paths.ts'
import { parseNetworkConfig, NETWORK_KEYS, type NetworkConfig } from './network/index.ts'

export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/9777']
/** The image side channel (node/compute/images/bulk.ts): every interface, next to the libp2p port. */
export const DEFAULT_IMAGE_LISTEN = ':9779'

export interface DaemonConfig {
  /** The config file that was read, if any. */
  configFile?: string
  /** This host's name in `picocloud hosts`. @default the machine's hostname */
  name: string
  /** @default /var/lib/picocloud */
  state: string
  /** @default /run/picocloud/picocloud.sock */
  socket: string
  /** libp2p listen addresses. @default ["/ip4/0.0.0.0/tcp/9777"] */
  listen: string[]
  /** Addresses other hosts should dial, when the listen addresses are not reachable as such (NAT). */
  announce: string[]
  /** Seconds between liveness beats to directly connected members (node/mesh/liveness.ts). @default 10 */
  heartbeatInterval: number
  /**
   * Seconds between beats while this host runs or is given `--ha restart` VMs: their lease is 3 of
   * these, and a host beating at this rate is declared unreachable after 6 (crdt/lease.ts).
   * @default the smaller of 2 and heartbeatInterval
   */
  leaseInterval: number
  /** Seconds between attempts to reconnect to members we are not connected to. @default 5 */
  reconnectInterval: number
  /** Group that may use the socket (mode 0660). @default "picocloud" when it exists */
  socketGroup?: string
  /** Labels that VM pins (`--on k=v`) match. @default {} */
  labels: Record<string, string>
  /** What this host offers to VMs; each defaults to what the machine has (see node/compute/resources.ts). */
  capacity: { vcpus?: number, memMiB?: number, diskGiB?: number }
  /** Guest architectures this host runs. @default the machine's own */
  arch?: string[]
  /** How VMs run here: qemu (default), libvirt, or none (a control-plane-only host). */
  hypervisor: 'qemu' | 'libvirt' | 'none'
  /** The data plane (keys network, wireguard_*, underlay_mtu: see node/network/config.ts). */
  network: NetworkConfig
  /** HOST:PORT for Prometheus metrics at /metrics (node/metrics.ts). @default undefined: off */
  metricsListen?: string
  /** HOST:PORT of the image side channel (node/compute/images/bulk.ts). @default ":9779"; undefined: off */
  imageListen?: string
}

export interface ConfigFlags {
  config?: string
  state?: string
  socket?: string
  listen?: string[]
  announce?: string[]
  name?: string
  metricsListen?: string
  imageListen?: string
}

/** Every key the config file accepts (deploy/config.example.toml documents each one). */
export const KNOWN_KEYS: ReadonlySet<string> = new Set(['name', 'state', 'socket', 'listen', 'announce', 'heartbeat_interval', 'lease_interval', 'reconnect_interval', 'socket_group',
  'labels', 'vcpus', 'mem_mib', 'disk_gib', 'arch', 'hypervisor', 'metrics_listen', 'image_listen', ...NETWORK_KEYS])

/** "127.0.0.1:9778", "[::1]:9778", ":9778" (every interface) → host and port. */
export function parseListenAddress (what: string, text: string): { host: string, port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text)
  const port = m === null ? NaN : Number(m[3])
  if (m === null || port > 65535) throw new PicocloudError(ErrorCode.Config, `${what}: ${JSON.stringify(text)} is not ADDRESS:PORT (example: 127.0.0.1:9778, [::1]:9778)`)
  return { host: m[1] ?? (m[2] === '' ? '0.0.0.0' : m[2]), port }
}

function bad (file: string, msg: string): PicocloudError {
  return new PicocloudError(ErrorCode.Config, `${file}: ${msg}`)
}

function stringList (file: string, key: string, v: unknown): string[] {
  if (!Array.isArray(v) || v.some(x => typeof x !== 'string')) throw bad(file, `${key} must be a list of strings`)
  return v as string[]
}

export function validateMultiaddrs (what: string, list: string[]): string[] {
  for (const a of list) {
    try {
      multiaddr(a)
    } catch {
      throw new PicocloudError(ErrorCode.Config, `${what}: ${JSON.stringify(a)} is not a multiaddr (example: /ip4/0.0.0.0/tcp/9777)`)
    }
  }
  return list
}

export async function resolveConfig (flags: ConfigFlags, env: NodeJS.ProcessEnv = process.env): Promise<DaemonConfig> {
  const explicit = flags.config ?? env.PICOCLOUD_CONFIG
  const file = explicit ?? DEFAULT_CONFIG
  let raw: Record<string, unknown> = {}
  let configFile: string | undefined
  try {
    raw = parseToml(await readFile(file, 'utf8'))
    configFile = file
  } catch (err: any) {
    if (err?.code === 'ENOENT') {
      if (explicit !== undefined) throw new PicocloudError(ErrorCode.Config, `config file ${file} does not exist`)
    } else if (err?.code === 'EACCES') {
      throw new PicocloudError(ErrorCode.Config, `cannot read config file ${file}: permission denied`)
    } else {
      throw bad(file, `not valid TOML: ${err.message}`)
    }
  }
  for (const k of Object.keys(raw)) {
    if (!KNOWN_KEYS.has(k)) throw bad(file, `unknown setting "${k}" (known: ${[...KNOWN_KEYS].join(', ')})`)
  }
  const str = (k: string): string | undefined => {
    const v = raw[k]
    if (v === undefined) return undefined
    if (typeof v !== 'string' || v === '') throw bad(file, `${k} must be a non-empty string`)
    return v
  }
  const num = (k: string, d: number): number => {
    const v = raw[k]
    if (v === undefined) return d
    if (typeof v !== 'number' || !(v > 0)) throw bad(file, `${k} must be a positive number of seconds`)
    return v
  }
  const listen = flags.listen?.length ? flags.listen : raw.listen !== undefined ? stringList(file, 'listen', raw.listen) : DEFAULT_LISTEN
  const announce = flags.announce?.length ? flags.announce : raw.announce !== undefined ? stringList(file, 'announce', raw.announce) : []
  const labels: Record<string, string> = {}
  if (raw.labels !== undefined) {
    if (typeof raw.labels !== 'object' || raw.labels === null || Array.isArray(raw.labels)) throw bad(file, 'labels must be a table, e.g. labels = { zone = "roof" }')
    for (const [k, v] of Object.entries(raw.labels)) {
      if (typeof v !== 'string') throw bad(file, `labels.${k} must be a string`)
      labels[k] = v
    }
  }
  const int = (k: string): number | undefined => {
    const v = raw[k]
    if (v === undefined) return undefined
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(file, `${k} must be a non-negative integer`)
    return v
  }
  const arch = raw.arch === undefined ? undefined : stringList(file, 'arch', raw.arch)
  const hypervisor = str('hypervisor') ?? 'qemu'
  if (hypervisor !== 'qemu' && hypervisor !== 'libvirt' && hypervisor !== 'none') throw bad(file, `hypervisor must be "qemu", "libvirt" or "none", got ${JSON.stringify(hypervisor)}`)
  if (raw.metrics_listen !== undefined && typeof raw.metrics_listen !== 'string') throw bad(file, 'metrics_listen must be a string like "127.0.0.1:9778" (or "" for off)')
  const metrics = flags.metricsListen ?? raw.metrics_listen as string | undefined
  if (metrics !== undefined && metrics !== '') parseListenAddress(flags.metricsListen !== undefined ? '--metrics-listen' : `${file}: metrics_listen`, metrics)
  if (raw.image_listen !== undefined && typeof raw.image_listen !== 'string') throw bad(file, 'image_listen must be a string like ":9779" (or "" for off)')
  const images = flags.imageListen ?? raw.image_listen as string | undefined ?? DEFAULT_IMAGE_LISTEN
  if (images !== '') parseListenAddress(flags.imageListen !== undefined ? '--image-listen' : `${file}: image_listen`, images)
  const heartbeatInterval = num('heartbeat_interval', 10)
  const leaseInterval = num('lease_interval', Math.min(2, heartbeatInterval))
  if (leaseInterval > heartbeatInterval) throw bad(file, `lease_interval (${leaseInterval}) must not be longer than heartbeat_interval (${heartbeatInterval}): it is the faster rate, used while this host runs --ha restart VMs`)
  return {
    hypervisor,
    imageListen: images === '' ? undefined : images,
    network: parseNetworkConfig(raw, file),
    metricsListen: metrics === '' ? undefined : metrics,
    configFile,
    labels,
    capacity: { vcpus: int('vcpus'), memMiB: int('mem_mib'), diskGiB: int('disk_gib') },
    arch,
    name: flags.name ?? str('name') ?? hostname(),
    state: flags.state ?? env.PICOCLOUD_STATE ?? str('state') ?? DEFAULT_STATE,
    socket: flags.socket ?? env.PICOCLOUD_SOCKET ?? str('socket') ?? DEFAULT_SOCKET,
    listen: validateMultiaddrs('listen', listen),
    announce: validateMultiaddrs('announce', announce),
    heartbeatInterval,
    leaseInterval,
    reconnectInterval: num('reconnect_interval', 5),
    socketGroup: str('socket_group')
  }
}
