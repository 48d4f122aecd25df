/**
 * OpenPGP v4 fingerprints, the name of a person's key everywhere in picocloud (request issuers,
 * VM owners, trust policies). One spelling — 40 upper-case hex digits, no spaces — so that string
 * equality is key equality; `normalizeFingerprint` accepts what people paste from `gpg -K`.
 * v6 keys (64-hex fingerprints) are refused on purpose: GnuPG 2.2 can neither make nor check them.
 */
import { PicocloudError, ErrorCode } from './errors.ts'

export type Fingerprint = string & { readonly __fingerprint: true }

const FINGERPRINT = /^[0-9A-F]{40}$/

/** True when `s` is already in the one canonical spelling. */
export function isFingerprint (s: unknown): s is Fingerprint {
  return typeof s === 'string' && FINGERPRINT.test(s)
}

/**
 * Canonical spelling of a fingerprint typed by a person: spaces and an optional `0x` removed,
 * upper-cased. Throws BAD_FINGERPRINT for anything else (key ids, v6 fingerprints, user ids).
 */
export function normalizeFingerprint (s: string): Fingerprint {
  const compact = s.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase()
  if (!FINGERPRINT.test(compact)) {
    const hint = /^[0-9A-F]{16}$/.test(compact)
      ? ' (that is a 16-digit key id; give the full 40-digit fingerprint from `gpg --fingerprint`)'
      : /^[0-9A-F]{64}$/.test(compact)
        ? ' (a v6 key fingerprint; picocloud uses v4 keys, which GnuPG 2.2 understands)'
        : ''
    throw new PicocloudError(ErrorCode.BadFingerprint,
      `not an OpenPGP v4 fingerprint: ${JSON.stringify(s)}; expected 40 hex digits${hint}`)
  }
  return compact as Fingerprint
}
