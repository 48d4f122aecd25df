/**
 * Checking a detached OpenPGP signature over request bytes, and the signer's key at the times the
 * request is judged at. keys/keyring.ts re-exports all of this.
 *
 * Times (security review, issue 12, point 11). `openpgp.verify` judges the key at the signature's
 * own creation time, which the signer writes: an expired key, or one retired or superseded at T,
 * could sign today with a signature dated before its expiry or before T, and pass. Here:
 * - The key is judged at each of the `dates` given, never at the signature's creation time. For a
 *   request these are its payload's `created` and `at`, the time the host that received it stamped
 *   on it (`requestDates`): every host judges the same two replicated times and reaches the same
 *   verdict, whatever its own clock says when it gets to the request.
 * - At each date the (sub)key that signed must be valid as openpgp.js's `Key.getSigningKey(id,
 *   date)` judges: the primary key and the subkey not revoked — a hard revocation (key compromised,
 *   no reason, or no reason given) counts at every date, a soft one (key superseded, key retired)
 *   from its own creation time —, not expired (by the self-signature or binding signature in force
 *   at that date), existing by then, bound and allowed to sign. KEY_REVOKED, KEY_EXPIRED,
 *   KEY_NOT_VALID otherwise.
 * - The signature's creation time grants nothing. It must be present and not earlier than its
 *   (sub)key's creation (a fixed property of the key packet; GnuPG and openpgp.js refuse such
 *   signatures too); an expiry the signer put on the signature is honoured at each date. Both can
 *   only refuse. It is not compared with the dates: people sign a payload after building it (gpg
 *   --detach-sign, minutes later), so it is often later than `created`; it is not compared with
 *   `at` either, as the key's validity at `at` is checked anyway.
 *
 * Ed25519 signatures of the usual shape take the synchronous path of keys/ed25519-verify.ts, the
 * rest openpgp.js's own `SignaturePacket.verify`; both check only the packet and its mathematics,
 * and everything about times above is this module's, the same for both paths.
 *
 * @example
 * const verify = keyVerifier(async fpr => (await published.merge(fpr, textsFor(fpr))).key, { dates: requestDates(stored.at) })
 * await validateEnvelope(envelope, { meshId, now: Date.parse(stored.at), seen, verify })
 */
import * as openpgp from 'openpgp'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { normalizeFingerprint, type Fingerprint } from '../protocol/fingerprint.ts'
import { fastEd25519Eligible, verifyEd25519Packet } from './ed25519-verify.ts'

const { enums } = openpgp

export interface VerifiedSignature {
  /** Primary fingerprint of the key that made the signature (even when a subkey signed). */
  fingerprint: Fingerprint
  /** Key id (16 hex, upper-case) of the (sub)key that signed. */
  signingKeyId: string
  /** The signature's creation time, as the signer wrote it: informative, it grants nothing. */
  created: Date
}

export interface VerifyOptions {
  /**
   * The times the signing key must be valid at, all of them: for a request, its payload's
   * `created` and its receipt time `at` (`requestDates`). Never empty.
   * @default [date ?? new Date()]
   */
  dates?: readonly Date[]
  /** Shorthand for `dates: [date]`. */
  date?: Date
}

/** The signature types made over data (binary, or text with normalised line ends). */
const DATA_SIGNATURES = new Set<number>([enums.signature.binary, enums.signature.text])

function badSignature (why: string, cause?: unknown): PicocloudError {
  return new PicocloudError(ErrorCode.BadSignature, `signature does not verify: ${why}`, 400, cause === undefined ? undefined : { cause })
}

/** The name of `value` in one of openpgp.js's enums (its typings cover `enums.read` for a few only). */
function enumName (table: object, value: number | null): string {
  return Object.entries(table).find(([, v]) => v === value)?.[0] ?? `type ${String(value)}`
}

/** openpgp.js compares times in whole seconds (util.normalizeDate); so do we, for the same verdicts. */
function toSecond (d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000)
}

function datesOf (options: VerifyOptions): Date[] {
  const dates = options.dates ?? [options.date ?? new Date()]
  // An empty list or an invalid date would skip the key's checks: refuse rather than accept.
  if (dates.length === 0) throw new PicocloudError(ErrorCode.Internal, 'no date to judge the signing key at', 500)
  for (const d of dates) {
    if (!(d instanceof Date) || !Number.isFinite(d.getTime())) {
      throw new PicocloudError(ErrorCode.Internal, `not a date to judge the signing key at: ${String(d)}`, 500)
    }
  }
  return dates.map(toSecond)
}

/** Checks one packet's mathematics and its own fields, throwing openpgp.js's message on failure. */
type PacketCheck = (packet: openpgp.SignaturePacket, data: Uint8Array, signer: openpgp.Key | openpgp.Subkey, key: openpgp.PublicKey) => Promise<void>

const fastCheck: PacketCheck = async (packet, data, _signer, key) => { await verifyEd25519Packet(packet, data, key) }

const openpgpCheck: PacketCheck = async (packet, data, signer) => {
  // What openpgp.verify does per packet (createVerificationObject), with no date: no time checks.
  const literal = (await openpgp.createMessage({ binary: data })).packets[0]
  await packet.verify(signer.keyPacket, packet.signatureType as openpgp.enums.signature, literal, null as unknown as Date, true, openpgp.config)
}

/**
 * Check a detached armored signature over exactly `data` (no newline or charset normalisation)
 * against `key`, and the key at every date of `options` (see the top of this file). Every
 * signature packet in the armor must verify. Returns the primary fingerprint of `key`; throws
 * BAD_SIGNATURE, or KEY_REVOKED / KEY_EXPIRED / KEY_NOT_VALID for a signature that verifies by a
 * key that was not valid at one of the dates.
 */
export async function verifyDetached (data: Uint8Array, armoredSignature: string, key: openpgp.PublicKey,
  options: VerifyOptions = {}): Promise<VerifiedSignature> {
  let signature: openpgp.Signature
  try {
    signature = await openpgp.readSignature({ armoredSignature })
  } catch (err) {
    throw badSignature(`not an armored OpenPGP signature (${(err as Error).message})`, err)
  }
  const check = fastEd25519Eligible(signature, key) ? fastCheck : openpgpCheck
  return await verifyPackets(data, signature, key, datesOf(options), check)
}

/**
 * `verifyDetached` with every packet checked by openpgp.js, for any algorithm it supports.
 * Exported so tests can hold the fast path to it.
 */
export async function verifyWithOpenpgp (data: Uint8Array, signature: openpgp.Signature, key: openpgp.PublicKey,
  options: VerifyOptions = {}): Promise<VerifiedSignature> {
  return await verifyPackets(data, signature, key, datesOf(options), openpgpCheck)
}

async function verifyPackets (data: Uint8Array, signature: openpgp.Signature, key: openpgp.PublicKey,
  dates: Date[], check: PacketCheck): Promise<VerifiedSignature> {
  if (signature.packets.length === 0) throw badSignature('the armor holds no signature')
  const signers = new Map<string, openpgp.Key | openpgp.Subkey>()
  let first: { packet: openpgp.SignaturePacket, keyId: string } | undefined
  for (const packet of signature.packets) {
    // Unparseable packets (unknown versions) count as failures, as openpgp.verify's count does.
    if (!(packet instanceof openpgp.SignaturePacket)) throw badSignature('the armor holds a packet that is not a signature this host can read')
    // A standalone or key signature would "verify" over any data: only signatures over data count.
    if (!DATA_SIGNATURES.has(packet.signatureType ?? -1)) {
      throw badSignature(`a ${enumName(enums.signature, packet.signatureType)} signature is not a signature over data`)
    }
    const signer = key.getKeys(packet.issuerKeyID)[0]
    if (signer === undefined) throw badSignature(`Could not find signing key with key ID ${packet.issuerKeyID.toHex()}`)
    try {
      await check(packet, data, signer, key)
    } catch (err) {
      throw badSignature((err as Error).message, err)
    }
    if (packet.created === null) throw badSignature('the signature has no creation time')
    if (signer.getCreationTime() > packet.created) throw badSignature('Key is newer than the signature')
    const expires = packet.getExpirationTime()
    for (const d of dates) {
      if (d >= expires) throw badSignature(`Signature is expired (at ${new Date(expires).toISOString()}, before ${d.toISOString()})`)
    }
    const keyId = signer.getKeyID().toHex().toUpperCase()
    signers.set(keyId, signer)
    first ??= { packet, keyId }
  }
  for (const signer of signers.values()) await checkSigningKeyAt(key, signer.getKeyID(), dates)
  return { fingerprint: normalizeFingerprint(key.getFingerprint()), signingKeyId: first?.keyId ?? '', created: first?.packet.created ?? new Date(0) }
}

// ---------------------------------------------------------------- the key at given dates

/**
 * openpgp.js marks a self-certification or a subkey binding `revoked` the first time it finds a
 * revocation of it valid at the date asked, and never clears the mark: asked later about an
 * earlier date, it still says revoked. With soft revocations that made verdicts depend on the
 * order in which requests were judged. So the marks are cleared before each date, and dates are
 * judged one at a time, across all keys (their packets may be shared: keys/published-keys.ts).
 */
let judging: Promise<unknown> = Promise.resolve()
function oneAtATime<T> (fn: () => Promise<T>): Promise<T> {
  const run = judging.then(fn, fn)
  judging = run.catch(() => {})
  return run
}

function clearRevocationMarks (key: openpgp.PublicKey): void {
  const lists: openpgp.SignaturePacket[][] = [key.revocationSignatures, (key as unknown as { directSignatures: openpgp.SignaturePacket[] }).directSignatures ?? []]
  for (const u of key.users) lists.push(u.selfCertifications, u.otherCertifications, u.revocationSignatures)
  for (const s of key.subkeys) lists.push(s.bindingSignatures, s.revocationSignatures)
  for (const list of lists) for (const sig of list) sig.revoked = null
}

/**
 * Throws KEY_REVOKED, KEY_EXPIRED or KEY_NOT_VALID unless the (sub)key `signingKeyId` of `key` is
 * a valid signing key at every one of `dates` (see the top of this file).
 */
export async function checkSigningKeyAt (key: openpgp.PublicKey, signingKeyId: openpgp.KeyID, dates: readonly Date[]): Promise<void> {
  const at = datesOf({ dates })
  await oneAtATime(async () => {
    for (const date of at) {
      clearRevocationMarks(key)
      try {
        await key.getSigningKey(signingKeyId, date)
      } catch (err) {
        clearRevocationMarks(key)
        throw await keyError(key, date, err as Error)
      }
    }
    clearRevocationMarks(key)
  })
}

async function keyError (key: openpgp.PublicKey, date: Date, err: Error): Promise<PicocloudError> {
  const fpr = normalizeFingerprint(key.getFingerprint())
  const when = date.toISOString()
  const why = err.message
  if (await key.isRevoked(undefined, undefined, date).catch(() => false)) {
    return new PicocloudError(ErrorCode.KeyRevoked, `key ${fpr} is revoked at ${when}${await revocationReason(key, date)}`, 403, { cause: err })
  }
  if (/revoked/i.test(why)) return new PicocloudError(ErrorCode.KeyRevoked, `key ${fpr}: the signing key is revoked at ${when} (${why})`, 403, { cause: err })
  if (/expired/i.test(why)) return new PicocloudError(ErrorCode.KeyExpired, `key ${fpr}: the signing key is expired at ${when} (${why})`, 403, { cause: err })
  return new PicocloudError(ErrorCode.KeyNotValid, `key ${fpr}: no valid signing key at ${when} (${why})`, 403, { cause: err })
}

/** The reason of a revocation of the primary key in force at `date`, for the message. */
async function revocationReason (key: openpgp.PublicKey, date: Date): Promise<string> {
  for (const sig of key.revocationSignatures) {
    const flag = sig.reasonForRevocationFlag
    const soft = flag === enums.reasonForRevocation.keyRetired || flag === enums.reasonForRevocation.keySuperseded
    try {
      await sig.verify(key.keyPacket, enums.signature.keyRevocation, { key: key.keyPacket }, soft ? date : null as unknown as Date)
    } catch {
      continue
    }
    const name = flag === null ? 'no reason given' : enumName(enums.reasonForRevocation, flag)
    const text = sig.reasonForRevocationString ?? ''
    return ` (${name}${text === '' ? '' : `: ${text}`}, since ${sig.created?.toISOString() ?? 'an unknown time'})`
  }
  return ''
}

// ---------------------------------------------------------------- verifiers over a key lookup

/** Looks up a public key by fingerprint (keyring directory, published keys, a test map…). */
export type PublicKeyLookup = (fingerprint: Fingerprint) => Promise<openpgp.PublicKey | undefined>

/** Verification callback as `validateEnvelope` takes it (see protocol/envelope.ts). */
export type SignatureVerifier = (data: Uint8Array, armoredSignature: string, issuer: Fingerprint) => Promise<VerifiedSignature>

export interface KeyVerifierOptions {
  /**
   * The times the issuer's key must be valid at, for the request whose payload bytes are `data`:
   * `requestDates(at)` for a request received at `at`. Wins over `now`.
   */
  dates?: (data: Uint8Array, issuer: Fingerprint) => readonly Date[]
  /** Judge the key at this one time instead. @default () => new Date() */
  now?: () => Date
}

/**
 * A verifier over `lookup`: UNKNOWN_ISSUER when no key is found, BAD_SIGNATURE when the key found
 * is not the issuer's primary key or the signature does not verify with it, KEY_REVOKED /
 * KEY_EXPIRED / KEY_NOT_VALID when the key was not valid at one of the dates.
 */
export function keyVerifier (lookup: PublicKeyLookup, options: KeyVerifierOptions = {}): SignatureVerifier {
  return async (data, armoredSignature, issuer) => {
    const key = await lookup(issuer)
    if (key === undefined) {
      throw new PicocloudError(ErrorCode.UnknownIssuer,
        `no public key for issuer ${issuer}; import it (\`picocloud key import\`) or publish it to the mesh`, 403)
    }
    const fpr = normalizeFingerprint(key.getFingerprint())
    if (fpr !== issuer) throw badSignature(`the key found for ${issuer} has primary fingerprint ${fpr}`)
    const dates = options.dates?.(data, issuer) ?? [options.now?.() ?? new Date()]
    const verified = await verifyDetached(data, armoredSignature, key, { dates })
    if (verified.fingerprint !== issuer) throw badSignature(`signed by ${verified.fingerprint}, not by issuer ${issuer}`)
    return verified
  }
}

/**
 * The dates a request is judged at: its payload's `created` and `at`, the time the host that
 * received it stamped on it (for a request being submitted, now). `created` is read from the
 * payload bytes the signature covers; validateEnvelope has checked its form before it verifies.
 */
export function requestDates (at: Date | string | number): (data: Uint8Array) => Date[] {
  const received = at instanceof Date ? at : new Date(at)
  return data => {
    let created: unknown
    try {
      created = (JSON.parse(new TextDecoder().decode(data)) as { created?: unknown }).created
    } catch {}
    const c = typeof created === 'string' ? new Date(created) : undefined
    if (c === undefined || !Number.isFinite(c.getTime())) {
      throw new PicocloudError(ErrorCode.BadEnvelope, 'payload.created: must be an ISO-8601 UTC time such as 2025-05-01T12:00:00.000Z')
    }
    if (!Number.isFinite(received.getTime())) throw new PicocloudError(ErrorCode.BadEnvelope, `receipt time ${JSON.stringify(at)} is not a time`)
    return [c, received]
  }
}
