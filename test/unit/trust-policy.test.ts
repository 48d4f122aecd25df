import { describe, it, expect } from 'vitest'
import { emptyPolicy, addEntry, removeEntry, findEntry, admits, validatePolicy, NO_USAGE } from '../../keys/trust-policy.ts'
import { normalizeFingerprint } from '../../protocol/fingerprint.ts'
import { PicocloudError } from '../../protocol/errors.ts'

const ADA = 'A1'.repeat(20)
const BOB = 'B2'.repeat(20)
const want = { vcpus: 2, memMiB: 2048, diskGiB: 20, networks: ['lan'] }

function codeOf (fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    return err instanceof PicocloudError ? err.code : String(err)
  }
  return undefined
}

describe('trust policy edits', () => {
  it('adds, replaces and removes entries, bumping the version each time', () => {
    let p = emptyPolicy()
    p = addEntry(p, { fingerprint: BOB, maxVms: 1 })
    p = addEntry(p, { fingerprint: ADA.toLowerCase().replace(/(.{4})/g, '$1 '), maxVms: 2, networks: ['wan', 'lan', 'lan'] })
    expect(p.version).toBe(2)
    expect(p.entries.map(e => e.fingerprint)).toEqual([ADA, BOB])
    expect(findEntry(p, ADA)).toEqual({ fingerprint: ADA, maxVms: 2, networks: ['lan', 'wan'] })
    p = addEntry(p, { fingerprint: ADA, maxVcpus: 8 })
    expect(findEntry(p, ADA)).toEqual({ fingerprint: ADA, maxVcpus: 8 })
    p = removeEntry(p, ADA)
    expect(p).toEqual({ version: 4, entries: [{ fingerprint: BOB, maxVms: 1 }] })
    expect(codeOf(() => removeEntry(p, ADA))).toBe('NOT_FOUND')
  })

  it.each([
    ['a key id instead of a fingerprint', { fingerprint: 'A1A1A1A1A1A1A1A1' }, 'BAD_FINGERPRINT'],
    ['zero VMs', { fingerprint: ADA, maxVms: 0 }, 'BAD_POLICY'],
    ['fractional memory', { fingerprint: ADA, maxMemMiB: 1.5 }, 'BAD_POLICY'],
    ['negative disk', { fingerprint: ADA, maxDiskGiB: -1 }, 'BAD_POLICY'],
    ['a string quota', { fingerprint: ADA, maxVcpus: '4' }, 'BAD_POLICY'],
    ['a bad network name', { fingerprint: ADA, networks: ['LAN'] }, 'BAD_POLICY'],
    ['an unknown field', { fingerprint: ADA, admin: true }, 'BAD_POLICY']
  ])('refuses %s', (_n, entry, code) => {
    expect(codeOf(() => addEntry(emptyPolicy(), entry))).toBe(code)
  })

  it('validates a published policy', () => {
    expect(validatePolicy({ version: 3, entries: [{ fingerprint: BOB }, { fingerprint: ADA }] }).entries.map(e => e.fingerprint)).toEqual([ADA, BOB])
    expect(codeOf(() => validatePolicy({ version: 1, entries: [{ fingerprint: ADA }, { fingerprint: ADA }] }))).toBe('BAD_POLICY')
    expect(codeOf(() => validatePolicy({ version: -1, entries: [] }))).toBe('BAD_POLICY')
    expect(codeOf(() => validatePolicy({ version: 1, entries: [], extra: 1 }))).toBe('BAD_POLICY')
  })
})

describe('admits', () => {
  const policy = addEntry(emptyPolicy(), { fingerprint: ADA, maxVms: 3, maxVcpus: 8, maxMemMiB: 8192, maxDiskGiB: 100, networks: ['lan'] })

  it('admits a trusted key within its quotas, up to and including the limit', () => {
    expect(admits(policy, ADA, NO_USAGE, want)).toEqual({ ok: true })
    expect(admits(policy, ADA, { vms: 2, vcpus: 6, memMiB: 6144, diskGiB: 80 }, want)).toEqual({ ok: true })
  })

  it('gives the first reason in a fixed order', () => {
    const cases: Array<[string, Parameters<typeof admits>[2], Parameters<typeof admits>[3], string]> = [
      [BOB, NO_USAGE, want, 'not-trusted'],
      ['not a fingerprint', NO_USAGE, want, 'not-trusted'],
      [ADA, { vms: 3, vcpus: 8, memMiB: 8192, diskGiB: 100 }, { ...want, networks: ['wan'] }, 'quota-vms'],
      [ADA, { vms: 2, vcpus: 7, memMiB: 8192, diskGiB: 100 }, want, 'quota-vcpus'],
      [ADA, { vms: 2, vcpus: 0, memMiB: 6145, diskGiB: 100 }, want, 'quota-mem'],
      [ADA, { vms: 2, vcpus: 0, memMiB: 0, diskGiB: 81 }, want, 'quota-disk'],
      [ADA, NO_USAGE, { ...want, networks: ['lan', 'wan'] }, 'network-not-allowed']
    ]
    for (const [issuer, usage, w, reason] of cases) {
      const r = admits(policy, issuer, usage, w)
      expect(r.ok ? 'ok' : r.reason, `${reason}`).toBe(reason)
      if (!r.ok) expect(r.detail).toMatch(/\S/)
    }
  })

  it('treats absent quotas and network lists as unlimited', () => {
    const open = addEntry(emptyPolicy(), { fingerprint: normalizeFingerprint(BOB) })
    expect(admits(open, BOB, { vms: 1e6, vcpus: 1e6, memMiB: 1e9, diskGiB: 1e9 }, { ...want, networks: ['anything'] })).toEqual({ ok: true })
  })
})
