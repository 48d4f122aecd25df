/**
 * A host's picopeering policy: which OpenPGP keys its operator lets run VMs here, and how much.
 * Pure data and pure functions — the operator edits it through the local socket, the host
 * publishes it in its record, and every other host evaluates it the same way during placement.
 *
 * A key absent from the policy gets nothing. A quota left out means "no limit beyond the host's
 * capacity"; `networks` left out means any network.
 *
 * @example
 * let policy = emptyPolicy()
 * policy = addEntry(policy, { fingerprint: ada, maxVms: 4, maxVcpus: 8 })
 * admits(policy, ada, { vms: 3, vcpus: 6, memMiB: 6144, diskGiB: 30 }, { vcpus: 4, memMiB: 1024, diskGiB: 10, networks: [] })
 * // { ok: false, reason: 'quota-vcpus', detail: 'key … would use 10 vCPUs here; its quota is 8' }
 */
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { isFingerprint, normalizeFingerprint, type Fingerprint } from '../protocol/fingerprint.ts'

export interface TrustEntry {
  fingerprint: Fingerprint
  maxVms?: number
  maxVcpus?: number
  maxMemMiB?: number
  maxDiskGiB?: number
  /** Names of the networks this key's VMs may attach to; absent = any. */
  networks?: string[]
}

export interface TrustPolicy {
  /** Bumped on every change, so a newer published policy supersedes an older one. */
  version: number
  /** Sorted by fingerprint, one entry per key. */
  entries: TrustEntry[]
}

/** What one key already runs (or has claimed) on one host. */
export interface Usage { vms: number, vcpus: number, memMiB: number, diskGiB: number }

/** What one more VM of that key would add. */
export interface Want { vcpus: number, memMiB: number, diskGiB: number, networks: readonly string[] }

export type DenyReason = 'not-trusted' | 'quota-vms' | 'quota-vcpus' | 'quota-mem' | 'quota-disk' | 'network-not-allowed'
export type Admission = { ok: true } | { ok: false, reason: DenyReason, detail: string }

export const NO_USAGE: Usage = Object.freeze({ vms: 0, vcpus: 0, memMiB: 0, diskGiB: 0 })

const NETWORK_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const MAX_ENTRIES = 10_000
const QUOTAS = ['maxVms', 'maxVcpus', 'maxMemMiB', 'maxDiskGiB'] as const

export function emptyPolicy (): TrustPolicy {
  return { version: 0, entries: [] }
}

function bad (message: string): never {
  throw new PicocloudError(ErrorCode.BadPolicy, message)
}

/** Validate one entry (from the operator or from another host's record). */
export function validateEntry (value: unknown, path = 'entry'): TrustEntry {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) bad(`${path}: expected an object`)
  const o = value as Record<string, unknown>
  const allowed = ['fingerprint', ...QUOTAS, 'networks']
  for (const k of Object.keys(o)) if (!allowed.includes(k)) bad(`${path}.${k}: unknown field (allowed: ${allowed.join(', ')})`)
  if (typeof o.fingerprint !== 'string') bad(`${path}.fingerprint: required`)
  const entry: TrustEntry = { fingerprint: normalizeFingerprint(o.fingerprint) }
  for (const q of QUOTAS) {
    const v = o[q]
    if (v === undefined) continue
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) bad(`${path}.${q}: must be a positive integer, got ${JSON.stringify(v)}`)
    entry[q] = v
  }
  if (o.networks !== undefined) {
    if (!Array.isArray(o.networks) || o.networks.length > 256) bad(`${path}.networks: must be a list of at most 256 network names`)
    const nets = o.networks.map((n, i) => {
      if (typeof n !== 'string' || !NETWORK_NAME.test(n)) bad(`${path}.networks[${i}]: not a network name: ${JSON.stringify(n)}`)
      return n
    })
    entry.networks = [...new Set(nets)].sort()
  }
  return entry
}

/** Validate a whole policy as published in a host record; entries come back sorted and unique. */
export function validatePolicy (value: unknown): TrustPolicy {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) bad('policy: expected an object {version, entries}')
  const o = value as Record<string, unknown>
  for (const k of Object.keys(o)) if (k !== 'version' && k !== 'entries') bad(`policy.${k}: unknown field`)
  if (typeof o.version !== 'number' || !Number.isSafeInteger(o.version) || o.version < 0) bad('policy.version: must be a non-negative integer')
  if (!Array.isArray(o.entries) || o.entries.length > MAX_ENTRIES) bad(`policy.entries: must be a list of at most ${MAX_ENTRIES} entries`)
  const entries = o.entries.map((e, i) => validateEntry(e, `policy.entries[${i}]`))
  const seen = new Set<string>()
  for (const e of entries) {
    if (seen.has(e.fingerprint)) bad(`policy.entries: ${e.fingerprint} appears twice`)
    seen.add(e.fingerprint)
  }
  return { version: o.version, entries: sortEntries(entries) }
}

function sortEntries (entries: TrustEntry[]): TrustEntry[] {
  return [...entries].sort((a, b) => a.fingerprint < b.fingerprint ? -1 : a.fingerprint > b.fingerprint ? 1 : 0)
}

/** Trust a key (or replace its quotas if already trusted). Returns a new policy, version + 1. */
export function addEntry (policy: TrustPolicy, entry: unknown): TrustPolicy {
  const e = validateEntry(entry)
  return { version: policy.version + 1, entries: sortEntries([...policy.entries.filter(x => x.fingerprint !== e.fingerprint), e]) }
}

/** Stop trusting a key. NOT_FOUND if it was not trusted. Returns a new policy, version + 1. */
export function removeEntry (policy: TrustPolicy, fingerprint: string): TrustPolicy {
  const fpr = normalizeFingerprint(fingerprint)
  if (findEntry(policy, fpr) === undefined) {
    throw new PicocloudError(ErrorCode.NotFound, `key ${fpr} is not in this host's trust policy; see \`picocloud trust list\``, 404)
  }
  return { version: policy.version + 1, entries: policy.entries.filter(e => e.fingerprint !== fpr) }
}

export function findEntry (policy: TrustPolicy, fingerprint: string): TrustEntry | undefined {
  return policy.entries.find(e => e.fingerprint === fingerprint)
}

/**
 * May `issuer`, which already uses `usage` on this host, run one more VM needing `want`?
 * Checks in a fixed order (trust, VMs, vCPUs, memory, disk, networks) so every host reports the
 * same first reason. Quotas are checked as "would exceed", so a full quota is still usable.
 */
export function admits (policy: TrustPolicy, issuer: string, usage: Usage, want: Want): Admission {
  const entry = isFingerprint(issuer) ? findEntry(policy, issuer) : undefined
  if (entry === undefined) return { ok: false, reason: 'not-trusted', detail: `key ${issuer} is not in this host's trust policy` }
  const over = (max: number | undefined, used: number, add: number): boolean => max !== undefined && !(used + add <= max)
  if (over(entry.maxVms, usage.vms, 1)) {
    return { ok: false, reason: 'quota-vms', detail: `key ${issuer} already runs ${usage.vms} VMs here; its quota is ${entry.maxVms}` }
  }
  if (over(entry.maxVcpus, usage.vcpus, want.vcpus)) {
    return { ok: false, reason: 'quota-vcpus', detail: `key ${issuer} would use ${usage.vcpus + want.vcpus} vCPUs here; its quota is ${entry.maxVcpus}` }
  }
  if (over(entry.maxMemMiB, usage.memMiB, want.memMiB)) {
    return { ok: false, reason: 'quota-mem', detail: `key ${issuer} would use ${usage.memMiB + want.memMiB} MiB of memory here; its quota is ${entry.maxMemMiB}` }
  }
  if (over(entry.maxDiskGiB, usage.diskGiB, want.diskGiB)) {
    return { ok: false, reason: 'quota-disk', detail: `key ${issuer} would use ${usage.diskGiB + want.diskGiB} GiB of disk here; its quota is ${entry.maxDiskGiB}` }
  }
  if (entry.networks !== undefined) {
    const allowed = entry.networks
    const denied = want.networks.filter(n => !allowed.includes(n))
    if (denied.length > 0) {
      return { ok: false, reason: 'network-not-allowed', detail: `key ${issuer} may not use network ${denied.join(', ')} here (allowed: ${allowed.join(', ') || 'none'})` }
    }
  }
  return { ok: true }
}
