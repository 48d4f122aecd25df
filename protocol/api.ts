/**
 * Types of the local API (HTTP/1.1 + JSON on the Unix socket) and validation of what callers send.
 * Field names in these views are what `--json` prints; scripts may rely on them.
 */
import { PicocloudError, ErrorCode } from './errors.ts'
import { pinSpec, type PinSpec } from './requests.ts'

export const API_PREFIX = '/v1'

export interface IdView {
  peerId: string
  addresses: string[]
  name: string
  wgPublicKey: string
}

export interface MeshView {
  id: string
  name: string
  founder: string
  members: number
  policy: { admit: string, expellers: string[] }
}

export interface PeerView {
  peerId: string
  name: string
  address: string
  direction: string
}

export interface StatusView {
  peerId: string
  name: string
  version: string
  uptimeSeconds: number
  addresses: string[]
  stateDir: string
  socket: string
  mesh: MeshView | null
  expelled: { by: string, at: string, reason: string } | null
  peers: PeerView[]
  state: {
    heads: string[]
    changes: number
    /** Feeds replicated here (one per host that ever wrote). */
    feeds: number
    /** Changes held for a missing predecessor or admission, and their bytes. */
    pending: number
    pendingBytes: number
    logBytes: number
    /** Hosts caught signing two changes with one sequence number, with the sequence number. */
    equivocations: Array<{ peerId: string, seq: number }>
  }
  penalties: Array<{ peerId: string, score: number, offences: Array<{ at: string, reason: string }> }>
  /** The data plane of this host (absent from daemons that predate it). */
  network?: NetworkStatusView
}

export interface WireguardPeerView {
  peerId: string
  name: string
  publicKey: string
  endpoint: string | null
  /** ISO time of the last handshake, null when none yet. */
  latestHandshake: string | null
  rxBytes: number
  txBytes: number
}

export interface NetworkStatusView {
  /** 'linux': this host runs the data plane; 'none': it does not (see `reason`). */
  mode: 'linux' | 'none'
  reason?: string
  interface: string
  listenPort: number
  /** Endpoints this host announces to the others. */
  endpoints: string[]
  overlayAddress: string | null
  /** MTU of the private networks (what VMs get). */
  mtu: number | null
  backend?: string
  /** The last reconcile pass: when, how many steps it applied, its error. */
  lastPass: { at: string, steps: number, ms: number, error?: string } | null
  passes: number
  errors: number
  /** Steps applied since the daemon started (0 after a restart that found everything right). */
  stepsApplied: number
  problems: string[]
  /** WireGuard peers as `wg show <if> dump` showed them at the last pass. */
  peers: WireguardPeerView[]
  networks: Array<{ name: string, vni: number, bridge: string, fdb: number, taps: number }>
}

export interface HostView {
  peerId: string
  name: string
  addresses: string[]
  lastSeen: string | null
  reachable: boolean
  self: boolean
  connected: boolean
  admittedBy: string
  admittedAt: string
  wgPublicKey: string | null
  version: string | null
  /** How VMs run there (`qemu`, `libvirt`, `none`), as it says; null before its first record. */
  hypervisor: string | null
  /** Whether it builds private networks, as it says; null when it does not say (older daemons). */
  networks: boolean | null
  /** What is wrong in this host's feed (malformed fields, events that do not count): dropped, held against it. */
  problems: string[]
  /** Its lease epoch (crdt/lease.ts): raised each time it came back after being lost. */
  epoch: number
  /** A majority of the members declared it unreachable at this epoch: since when, by whom. */
  lost: { since: string, by: string[] } | null
  /** Members that declared it unreachable at this epoch (a majority makes it lost). */
  declaredBy: string[]
  /** Its operator drained it (`host drain`): no new VMs, its `restart` VMs move away. */
  drained: { at: string, reason: string } | null
}

export interface NodeEvent {
  type: string
  time: string
  [k: string]: unknown
}

export interface HistoryEntry {
  hash: string
  /** The peer id of the host that made the change (its feed). */
  author: string
  /** That host's name, as it calls itself (or as it was admitted). */
  authorName: string | null
  time: number
  message: string | null
  seq: number
  /** For a change that stored a user's signed request: the request, and the key that signed it. */
  request?: string
  issuer?: string
}

// ——— request bodies ———

export interface InitBody { name?: string }
export interface AdmitBody { peerId: string, name?: string }
export interface JoinBody { address: string }
export interface ExpelBody { peer: string, reason?: string }

function object (v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new PicocloudError(ErrorCode.BadRequest, 'the request body must be a JSON object')
  }
  return v as Record<string, unknown>
}

function only (o: Record<string, unknown>, allowed: string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new PicocloudError(ErrorCode.BadRequest, `unknown field "${k}" (allowed: ${allowed.join(', ') || 'none'})`)
  }
}

function str (o: Record<string, unknown>, k: string, required: true, max?: number): string
function str (o: Record<string, unknown>, k: string, required: false, max?: number): string | undefined
function str (o: Record<string, unknown>, k: string, required: boolean, max = 256): string | undefined {
  const v = o[k]
  if (v === undefined && !required) return undefined
  if (typeof v !== 'string' || v.trim() === '') throw new PicocloudError(ErrorCode.BadRequest, `field "${k}" must be a non-empty string`)
  if (v.length > max) throw new PicocloudError(ErrorCode.BadRequest, `field "${k}" is longer than ${max} characters`)
  return v
}

/** Names of hosts and meshes: printable, short, no control characters. */
export function validName (what: string, v: string | undefined): string | undefined {
  if (v === undefined) return undefined
  if (!/^[\p{L}\p{N}][\p{L}\p{N} ._-]{0,62}$/u.test(v)) {
    throw new PicocloudError(ErrorCode.BadRequest, `${what} ${JSON.stringify(v)} is not a valid name: 1–63 letters, digits, space, dot, dash or underscore, starting with a letter or digit`)
  }
  return v
}

export function parseInitBody (v: unknown): InitBody {
  const o = object(v); only(o, ['name'])
  return { name: validName('mesh name', str(o, 'name', false)) }
}

export function parseAdmitBody (v: unknown): AdmitBody {
  const o = object(v); only(o, ['peerId', 'name'])
  return { peerId: str(o, 'peerId', true), name: validName('host name', str(o, 'name', false)) }
}

export function parseJoinBody (v: unknown): JoinBody {
  const o = object(v); only(o, ['address'])
  return { address: str(o, 'address', true, 1024) }
}

export function parseExpelBody (v: unknown): ExpelBody {
  const o = object(v); only(o, ['peer', 'reason'])
  return { peer: str(o, 'peer', true), reason: str(o, 'reason', false, 512) }
}

/** `POST /v1/host/drain`: `{ "reason"?: string }` (an empty body is fine). */
export function parseDrainBody (v: unknown): { reason: string } {
  if (v === undefined || v === null) return { reason: '' }
  const o = object(v); only(o, ['reason'])
  const reason = str(o, 'reason', false, 512) ?? ''
  if (/\p{Cc}/u.test(reason)) throw new PicocloudError(ErrorCode.BadRequest, 'field "reason" must not contain control characters')
  return { reason }
}

/** The longest a `GET /v1/requests/:id?unless=…` waits (under the API's and clients' time limits). */
export const MAX_REQUEST_WAIT_S = 25

/** `?unless=STATUS&wait=SECONDS` of `GET /v1/requests/:id`; `wait` defaults to 10 s, needs `unless`. */
export function parseRequestWait (unless: string | null, wait: string | null): { unless?: string, waitMs: number } {
  if (unless === null) {
    if (wait !== null) throw new PicocloudError(ErrorCode.BadRequest, '"wait" needs "unless": the status to wait past')
    return { waitMs: 0 }
  }
  if (!/^[a-z-]{1,32}$/.test(unless)) throw new PicocloudError(ErrorCode.BadRequest, '"unless" must be a request status such as pending or accepted')
  const s = wait === null ? 10 : Number(wait)
  if (wait !== null && !/^\d+(\.\d+)?$/.test(wait)) throw new PicocloudError(ErrorCode.BadRequest, `"wait" must be a number of seconds up to ${MAX_REQUEST_WAIT_S}`)
  if (!(s >= 0 && s <= MAX_REQUEST_WAIT_S)) throw new PicocloudError(ErrorCode.BadRequest, `"wait" must be a number of seconds up to ${MAX_REQUEST_WAIT_S}`)
  return { unless, waitMs: s * 1000 }
}

/** `POST /v1/vms/:ref/move-check`: `{pin?}`, the pin the move would give the VM (none: anywhere). */
export function parseMoveCheckBody (v: unknown): { pin?: PinSpec } {
  if (v === undefined || v === null) return {}
  const o = object(v); only(o, ['pin'])
  return o.pin === undefined ? {} : { pin: pinSpec(o.pin, 'pin') }
}

export interface TrustBody {
  publicKey?: string
  fingerprint?: string
  maxVms?: number
  maxVcpus?: number
  maxMemMiB?: number
  maxDiskGiB?: number
  networks?: string[]
}

export function parseTrustBody (v: unknown): TrustBody {
  const o = object(v)
  only(o, ['publicKey', 'fingerprint', 'maxVms', 'maxVcpus', 'maxMemMiB', 'maxDiskGiB', 'networks', 'evict'])
  const out: TrustBody = { publicKey: str(o, 'publicKey', false, 1024 * 1024), fingerprint: str(o, 'fingerprint', false) }
  for (const k of ['maxVms', 'maxVcpus', 'maxMemMiB', 'maxDiskGiB'] as const) {
    const n = o[k]
    if (n === undefined) continue
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) throw new PicocloudError(ErrorCode.BadRequest, `field "${k}" must be a positive integer`)
    out[k] = n
  }
  if (o.networks !== undefined) {
    if (!Array.isArray(o.networks) || o.networks.some(n => typeof n !== 'string')) throw new PicocloudError(ErrorCode.BadRequest, 'field "networks" must be a list of network names')
    out.networks = o.networks as string[]
  }
  if (out.publicKey === undefined && out.fingerprint === undefined) throw new PicocloudError(ErrorCode.BadRequest, 'give "publicKey" (armored) or "fingerprint"')
  return out
}

/** `evict` of a trust body: move away the key's VMs the new entry no longer admits. @default false */
export function parseEvict (v: unknown): boolean {
  const e = object(v).evict
  if (e !== undefined && typeof e !== 'boolean') throw new PicocloudError(ErrorCode.BadRequest, 'field "evict" must be true or false')
  return e === true
}

/** `?evict=1` of `DELETE /v1/trust/:fpr`. */
export function parseEvictQuery (v: string | null): boolean {
  if (v === null || v === '0' || v === 'false') return false
  if (v === '1' || v === 'true') return true
  throw new PicocloudError(ErrorCode.BadRequest, `query "evict" must be 1 or 0, got ${JSON.stringify(v)}`)
}

/** `k=v` selectors (repeatable) into a map; a selector without `=` is an error. */
export function parseSelector (items: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const item of items.flatMap(i => i.split(','))) {
    if (item === '') continue
    const i = item.indexOf('=')
    if (i <= 0) throw new PicocloudError(ErrorCode.BadRequest, `selector ${JSON.stringify(item)} must be key=value`)
    out[item.slice(0, i)] = item.slice(i + 1)
  }
  return out
}
