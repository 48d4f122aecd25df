/**
 * Validation of what a feed holds, where it is read. A feed is written by its author alone and
 * the author may be hostile: any field may be missing, of the wrong type, huge or absurd. Each
 * reader here returns plain values (no Automerge proxies, no ImmutableString) and a list of
 * problems; a bad field or entry is dropped and named in the problems, which count against the
 * author only. Nothing here throws, so one host's record can never fail another host's API or
 * scheduler.
 */
import { array, integer, map, oneOf, string, type StringRule } from '../protocol/validate.ts'
import { parseIsoUtc } from '../protocol/envelope.ts'
import { validatePolicy } from '../keys/trust-policy.ts'
import { isFingerprint } from '../protocol/fingerprint.ts'
import {
  VM_STATUSES, type HostRecord, type HostResources, type HostVm, type HostRejection, type HostNetStatus,
  type HostImage, type MembershipEvent, type MeshGenesis, type StoredRequest, type Seen
} from './schema.ts'

export interface Read<T> { value: T, problems: string[] }

/** A feed value as plain JSON (ImmutableString and text become strings). */
export function plain (v: unknown): unknown {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v))
}

const PEER_ID: StringRule = { pattern: /^[1-9A-HJ-NP-Za-km-z]{40,64}$/, what: 'a peer id', min: 1, max: 64 }
const REQUEST_ID: StringRule = { pattern: /^[0-9a-f]{64}$/, what: 'a request id', min: 64, max: 64 }
const SHA256: StringRule = REQUEST_ID
/** Printable text without control characters, for names shown to operators. */
const NAME: StringRule = { pattern: /^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$/u, what: 'printable text', max: 64 }
const TEXT: StringRule = { pattern: /^[^\p{Cc}]*$/u, what: 'text without control characters', max: 4096 }
const SHORT: StringRule = { max: 256 }
const LABEL_KEY: StringRule = { pattern: /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, what: 'a label key', min: 1, max: 63 }
const LABEL_VALUE: StringRule = { pattern: /^[A-Za-z0-9._-]{0,63}$/, what: 'a label value', max: 63 }
const IFNAME: StringRule = { pattern: /^[A-Za-z0-9._-]{1,15}$/, what: 'an interface name', min: 1, max: 15 }

/** Most entries any one map of a host record may hold (claims, VM reports…). */
export const MAX_ENTRIES = 10_000
/** Largest armored public key a host may publish. */
export const MAX_KEY_TEXT = 64 * 1024

export function time (v: unknown, path: string): string {
  const s = string(v, path, { max: 40 })
  if (parseIsoUtc(s) === undefined) throw new Error(`${path}: not an ISO-8601 UTC time: ${JSON.stringify(s.slice(0, 40))}`)
  return s
}

/** Runs `check`; on failure records the problem and returns undefined. */
function field<T> (problems: string[], path: string, check: () => T): T | undefined {
  try {
    return check()
  } catch (err: any) {
    problems.push(String(err?.message ?? err).startsWith(path) ? String(err.message) : `${path}: ${String(err?.message ?? err)}`)
    return undefined
  }
}

function isObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** A map read entry by entry: a bad entry is dropped, the others kept. */
function entries<T> (problems: string[], path: string, v: unknown, key: StringRule, value: (x: unknown, p: string) => T, max = MAX_ENTRIES): Record<string, T> | undefined {
  if (v === undefined) return undefined
  if (!isObject(v)) { problems.push(`${path}: expected an object`); return undefined }
  const out: Record<string, T> = {}
  let n = 0
  for (const [k, x] of Object.entries(v)) {
    if (++n > max) { problems.push(`${path}: more than ${max} entries; the rest are ignored`); break }
    const ok = field(problems, `${path}.${k.slice(0, 80)}`, () => { string(k, `${path} key`, key); return value(x, `${path}.${k}`) })
    if (ok !== undefined) Object.defineProperty(out, k, { value: ok, enumerable: true, writable: true, configurable: true })
  }
  return out
}

function resources (v: unknown, path: string): HostResources {
  if (!isObject(v)) throw new Error(`${path}: expected an object`)
  const out: HostResources = {
    arch: array(v.arch, `${path}.arch`, 8, (x, p) => string(x, p, { pattern: /^[a-z0-9_]{1,16}$/, what: 'an architecture' })),
    vcpus: integer(v.vcpus, `${path}.vcpus`, 0, 1_000_000),
    memMiB: integer(v.memMiB, `${path}.memMiB`, 0, 2 ** 40),
    diskGiB: integer(v.diskGiB, `${path}.diskGiB`, 0, 2 ** 40),
    labels: v.labels === undefined ? {} : map(v.labels, `${path}.labels`, 64, LABEL_KEY, (x, p) => string(x, p, LABEL_VALUE))
  }
  if (v.hypervisor !== undefined) out.hypervisor = string(v.hypervisor, `${path}.hypervisor`, { pattern: /^[a-z]{1,16}$/, what: 'a hypervisor name' })
  if (v.networks !== undefined) {
    if (typeof v.networks !== 'boolean') throw new Error(`${path}.networks: expected true or false`)
    out.networks = v.networks
  }
  return out
}

function hostVm (v: unknown, path: string): HostVm {
  if (!isObject(v)) throw new Error(`${path}: expected an object`)
  const out: HostVm = { status: oneOf(v.status, `${path}.status`, VM_STATUSES), since: time(v.since, `${path}.since`) }
  if (v.reason !== undefined) out.reason = string(v.reason, `${path}.reason`, TEXT)
  if (v.operatorStop !== undefined) {
    const o = v.operatorStop
    if (!isObject(o)) throw new Error(`${path}.operatorStop: expected an object`)
    out.operatorStop = { at: time(o.at, `${path}.operatorStop.at`), reason: string(o.reason, `${path}.operatorStop.reason`, TEXT) }
  }
  if (v.handedOver !== undefined) out.handedOver = string(v.handedOver, `${path}.handedOver`, REQUEST_ID)
  return out
}

function rejection (v: unknown, path: string): HostRejection {
  if (!isObject(v)) throw new Error(`${path}: expected an object`)
  const out: HostRejection = { at: time(v.at, `${path}.at`), reason: string(v.reason, `${path}.reason`, TEXT) }
  if (v.reasons !== undefined) out.reasons = string(v.reasons, `${path}.reasons`, { max: 256 * 1024 })
  return out
}

function netStatus (v: unknown, path: string): HostNetStatus {
  if (!isObject(v)) throw new Error(`${path}: expected an object`)
  if (typeof v.dnsmasq !== 'boolean') throw new Error(`${path}.dnsmasq: expected true or false`)
  return {
    vni: integer(v.vni, `${path}.vni`, 0, 2 ** 24 - 1),
    bridge: string(v.bridge, `${path}.bridge`, IFNAME),
    vxlan: string(v.vxlan, `${path}.vxlan`, IFNAME),
    mtu: integer(v.mtu, `${path}.mtu`, 0, 65535),
    fdb: array(v.fdb, `${path}.fdb`, 4096, (x, p) => string(x, p, { max: 64 })),
    taps: array(v.taps, `${path}.taps`, 4096, (x, p) => string(x, p, IFNAME)),
    dnsmasq: v.dnsmasq
  }
}

/** A host record as published in a feed; bad fields are dropped and reported. */
export function readHostRecord (raw: unknown): Read<HostRecord | undefined> {
  const problems: string[] = []
  const v = plain(raw)
  if (v === undefined) return { value: undefined, problems }
  if (!isObject(v)) return { value: undefined, problems: ['host: expected an object'] }
  const rec: HostRecord = {
    name: field(problems, 'host.name', () => string(v.name ?? '', 'host.name', NAME)) ?? '',
    addresses: field(problems, 'host.addresses', () => array(v.addresses ?? [], 'host.addresses', 32, (x, p) => string(x, p, SHORT))) ?? [],
    wgPublicKey: field(problems, 'host.wgPublicKey', () => string(v.wgPublicKey ?? '', 'host.wgPublicKey', { pattern: /^([A-Za-z0-9+/]{43}=)?$/, what: 'a WireGuard public key' })) ?? '',
    version: field(problems, 'host.version', () => string(v.version ?? '', 'host.version', { pattern: /^[A-Za-z0-9.+-]*$/, what: 'a version', max: 32 })) ?? '',
    updated: field(problems, 'host.updated', () => v.updated === undefined ? '' : time(v.updated, 'host.updated')) ?? ''
  }
  if (v.resources !== undefined) rec.resources = field(problems, 'host.resources', () => resources(v.resources, 'host.resources'))
  if (v.policy !== undefined) rec.policy = field(problems, 'host.policy', () => validatePolicy(v.policy) as unknown as HostRecord['policy'])
  rec.keys = entries(problems, 'host.keys', v.keys, { pattern: /^[0-9A-F]{40}$/, what: 'a fingerprint' }, (x, p) => string(x, p, { max: MAX_KEY_TEXT }), 1000)
  rec.claims = entries(problems, 'host.claims', v.claims, REQUEST_ID, (x, p) => {
    if (!isObject(x)) throw new Error(`${p}: expected an object`)
    return x.epoch === undefined ? { at: time(x.at, `${p}.at`) } : { at: time(x.at, `${p}.at`), epoch: integer(x.epoch, `${p}.epoch`, 0, 2 ** 31) }
  })
  rec.vms = entries(problems, 'host.vms', v.vms, REQUEST_ID, hostVm)
  rec.rejections = entries(problems, 'host.rejections', v.rejections, REQUEST_ID, rejection)
  if (v.wgPort !== undefined) rec.wgPort = field(problems, 'host.wgPort', () => integer(v.wgPort, 'host.wgPort', 1, 65535))
  if (v.wgEndpoints !== undefined) rec.wgEndpoints = field(problems, 'host.wgEndpoints', () => array(v.wgEndpoints, 'host.wgEndpoints', 16, (x, p) => string(x, p, { max: 64 })))
  rec.nets = entries(problems, 'host.nets', v.nets, REQUEST_ID, netStatus, 4096)
  if (v.netError !== undefined) rec.netError = field(problems, 'host.netError', () => string(v.netError, 'host.netError', TEXT))
  rec.images = entries(problems, 'host.images', v.images, SHA256, (x, p): HostImage => {
    if (!isObject(x)) throw new Error(`${p}: expected an object`)
    return { size: integer(x.size, `${p}.size`, 0, 2 ** 50), format: oneOf(x.format, `${p}.format`, ['raw', 'qcow2']) }
  })
  if (v.drained !== undefined) {
    rec.drained = field(problems, 'host.drained', () => {
      const x = v.drained
      if (!isObject(x)) throw new Error('host.drained: expected an object')
      return { at: time(x.at, 'host.drained.at'), reason: string(x.reason, 'host.drained.reason', TEXT) }
    })
  }
  if (v.epoch !== undefined) rec.epoch = field(problems, 'host.epoch', () => integer(v.epoch, 'host.epoch', 0, 2 ** 31))
  rec.unreachable = entries(problems, 'host.unreachable', v.unreachable, PEER_ID, (x, p) => {
    if (!isObject(x)) throw new Error(`${p}: expected an object`)
    return { epoch: integer(x.epoch, `${p}.epoch`, 0, 2 ** 31), since: time(x.since, `${p}.since`) }
  }, 1000)
  rec.endorse = entries(problems, 'host.endorse', v.endorse, REQUEST_ID, (x, p) => string(x, p, { pattern: /^[1-9A-HJ-NP-Za-km-z]{40,64}@[0-9]{1,10}$/, what: 'peer@epoch' }))
  for (const k of Object.keys(rec) as Array<keyof HostRecord>) if (rec[k] === undefined) delete rec[k]
  return { value: rec, problems }
}

const SEEN_ENTRY = /^([1-9A-HJ-NP-Za-km-z]{40,64})=([1-9][0-9]{0,9}:[0-9a-f]{16})$/
const MAX_SEEN = 100_000

/**
 * An event's `seen`: the one string `storedSeen` writes ("peer=seq:hash …"), or the map older
 * daemons wrote ({ peer: "seq:hash" }); either way every entry is checked, and a peer named twice
 * is malformed.
 */
function seen (v: unknown, path: string): Seen {
  if (typeof v !== 'string') return map(v, path, MAX_SEEN, PEER_ID, (x, p) => string(x, p, { pattern: /^[1-9][0-9]{0,9}:[0-9a-f]{16}$/, what: 'seq:hash' }))
  const out: Seen = {}
  if (v === '') return out
  const items = v.split(' ')
  if (items.length > MAX_SEEN) throw new Error(`${path}: more than ${MAX_SEEN} entries`)
  for (const item of items) {
    const m = SEEN_ENTRY.exec(item)
    if (m === null) throw new Error(`${path}: ${JSON.stringify(item.slice(0, 80))} is not peer=seq:hash`)
    if (Object.hasOwn(out, m[1])) throw new Error(`${path}: ${m[1]} named twice`)
    out[m[1]] = m[2]
  }
  return out
}

/** A membership event; undefined (and a problem) when malformed. */
export function readEvent (raw: unknown, path: string): Read<MembershipEvent | undefined> {
  const problems: string[] = []
  const v = plain(raw)
  const value = field(problems, path, (): MembershipEvent => {
    if (!isObject(v)) throw new Error(`${path}: expected an object`)
    const op = oneOf(v.op, `${path}.op`, ['admit', 'expel', 'policy'] as const)
    const at = time(v.at, `${path}.at`)
    const s = seen(v.seen, `${path}.seen`)
    if (op === 'admit') return { op, peer: string(v.peer, `${path}.peer`, PEER_ID), name: string(v.name ?? '', `${path}.name`, NAME), at, seen: s }
    if (op === 'expel') return { op, peer: string(v.peer, `${path}.peer`, PEER_ID), reason: string(v.reason ?? '', `${path}.reason`, TEXT), at, seen: s }
    return {
      op,
      admit: oneOf(v.admit, `${path}.admit`, ['any-member', 'expellers'] as const),
      expellers: array(v.expellers, `${path}.expellers`, 256, (x, p) => string(x, p, PEER_ID)),
      at,
      seen: s
    }
  })
  return { value, problems }
}

export function readGenesis (raw: unknown): Read<MeshGenesis | undefined> {
  const problems: string[] = []
  const v = plain(raw)
  const value = field(problems, 'mesh', (): MeshGenesis => {
    if (!isObject(v)) throw new Error('mesh: expected an object')
    return {
      format: integer(v.format, 'mesh.format', 0, 1000),
      id: string(v.id, 'mesh.id', { pattern: /^[0-9a-f]{32}$/, what: 'a mesh id' }),
      nonce: string(v.nonce, 'mesh.nonce', { pattern: /^[0-9a-f]{32}$/, what: 'a nonce' }),
      name: string(v.name, 'mesh.name', NAME),
      founder: string(v.founder, 'mesh.founder', PEER_ID),
      created: time(v.created, 'mesh.created')
    }
  })
  return { value, problems }
}

/** A stored request's fields (its signature is checked elsewhere, node/control/requests.ts). */
export function readStoredRequest (raw: unknown, path: string): Read<StoredRequest | undefined> {
  const problems: string[] = []
  const v = plain(raw)
  const value = field(problems, path, (): StoredRequest => {
    if (!isObject(v)) throw new Error(`${path}: expected an object`)
    return {
      payload: string(v.payload, `${path}.payload`, { min: 1, max: 64 * 1024 }),
      signature: string(v.signature, `${path}.signature`, { min: 1, max: 16 * 1024 }),
      at: time(v.at, `${path}.at`)
    }
  })
  return { value, problems }
}

export function isRequestId (s: string): boolean {
  return /^[0-9a-f]{64}$/.test(s)
}

export { isFingerprint }
