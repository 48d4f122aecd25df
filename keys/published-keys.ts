/**
 * One public key out of all the texts the hosts of a mesh publish for a fingerprint (each host's
 * record holds `keys[fpr]`, the key as its operator gave it to `trust add`): the union of the
 * certificate material that verifies — revocations, self-signatures, user ids, subkeys with their
 * bindings and revocations. A revocation or a key update published by ANY host therefore counts,
 * and no text published earlier or elsewhere can take it away: material is only ever added
 * (security review, issue 12, point 12).
 *
 * The texts are untrusted: any member host writes its own record. Each text is limited in size and
 * parsed once (cached by digest); from it only signatures by the primary key that verify over what
 * they certify are kept (a third party's, a forged or a mangled one is dropped), and only subkeys
 * and user ids with such a binding. The result is the same whatever the order of the texts, their
 * duplicates or the clock: signatures are checked without a date (their times are judged later,
 * at the request's dates, by keys/verify.ts) and everything is sorted.
 *
 * Why not openpgp.js's `Key.update(other)`: the result depends on the order of the merges and the
 * clock. When the destination has no signature of a kind (no revocation yet) it adopts all of the
 * source's unchecked; otherwise it drops signatures "expired" at the merge date and soft
 * revocations dated after it; and it adds concurrently, in completion order.
 *
 * @example
 * const published = new PublishedKeys()
 * const texts = Object.entries(doc.hosts).flatMap(([host, rec]) =>
 *   rec.keys?.[fpr] === undefined ? [] : [{ source: host, text: String(rec.keys[fpr]) }])
 * const { key, digest, ignored } = await published.merge(fpr, texts)
 * // key: undefined when no text is usable; digest: changes whenever the merged material does.
 */
import * as openpgp from 'openpgp'
import { createHash } from 'node:crypto'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { normalizeFingerprint, type Fingerprint } from '../protocol/fingerprint.ts'
import { parseKeys } from './keyring.ts'

const { enums } = openpgp

/** Largest key text considered, in characters: what a host record may hold (crdt/records.ts). */
export const MAX_KEY_TEXT_CHARS = 64 * 1024

/** One text published for a key, and who published it (a host's peer id). */
export interface PublishedText {
  source: string
  text: string
}

export type IgnoredReason = 'not-text' | 'too-large' | 'too-many-texts' | 'not-a-key' | 'other-key' | 'too-many-signatures'

/** A text that did not count, and why: for logs and `trust list`. */
export interface IgnoredText {
  source: string
  reason: IgnoredReason
  detail: string
}

export interface MergedKey {
  fingerprint: Fingerprint
  /** The union of every usable text; undefined when none is usable. */
  key: openpgp.PublicKey | undefined
  /** sha256 (hex) of the merged key's packets: the same on every host, changes with the material. */
  digest: string | undefined
  /** The sources whose text counted, sorted. */
  sources: string[]
  ignored: IgnoredText[]
}

export interface PublishedKeysInit {
  /** @default MAX_KEY_TEXT_CHARS */
  maxTextChars?: number
  /**
   * Distinct texts considered per fingerprint, the lowest digests first. A host publishes one
   * text per key, so this bounds the work only when far more hosts than usual publish versions.
   * @default 64
   */
  maxTexts?: number
  /** Signatures by the primary key in one text; a text with more is ignored. @default 256 */
  maxSignatures?: number
  /** Parsed texts kept (each at most maxTextChars, its parsed form a few times that). @default 512 */
  cachedTexts?: number
  /** Merged keys kept, by fingerprint and set of texts. @default 1024 */
  cachedKeys?: number
}

const sha256 = (b: string | Uint8Array): string => createHash('sha256').update(b).digest('hex')
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

/**
 * A signature that verified. `id` is what it signs and the signature value (the hashed area and
 * the MPIs): anyone can change its unhashed area without breaking it, so such variants are one
 * signature, of which the smallest `bytes` is kept, whichever text came first.
 */
interface Sig { packet: openpgp.SignaturePacket, id: string, bytes: string }

/** What one text contributes to a key: components by identity, each with its verified signatures. */
interface Pieces {
  primary: openpgp.PublicKeyPacket
  /** Key revocations and direct-key signatures. */
  keySigs: Map<string, Sig>
  /** By the user id packet's bytes. */
  users: Map<string, { packet: openpgp.UserIDPacket, sigs: Map<string, Sig> }>
  /** By subkey fingerprint. */
  subkeys: Map<string, { packet: openpgp.PublicSubkeyPacket, sigs: Map<string, Sig> }>
}

type Parsed = { ok: true, pieces: Pieces } | { ok: false, reason: IgnoredReason, detail: string }

/** A merge of given texts: the key, and why the texts that did not count failed, by digest. */
interface Merged {
  key: openpgp.PublicKey | undefined
  digest: string | undefined
  failed: Map<string, { reason: IgnoredReason, detail: string }>
}

const USER_SIGS = new Set<number>([enums.signature.certGeneric, enums.signature.certPersona, enums.signature.certCasual,
  enums.signature.certPositive, enums.signature.certRevocation])
const SELF_CERTS = new Set<number>([enums.signature.certGeneric, enums.signature.certPersona, enums.signature.certCasual, enums.signature.certPositive])

/** A small LRU: a Map in insertion order, refreshed on use. */
class Lru<V> {
  private readonly map = new Map<string, V>()
  private readonly limit: number
  constructor (limit: number) { this.limit = limit }
  get (k: string): V | undefined {
    const v = this.map.get(k)
    if (v !== undefined) { this.map.delete(k); this.map.set(k, v) }
    return v
  }

  set (k: string, v: V): void {
    this.map.delete(k)
    this.map.set(k, v)
    while (this.map.size > this.limit) this.map.delete(this.map.keys().next().value as string)
  }
}

export class PublishedKeys {
  private readonly maxTextChars: number
  private readonly maxTexts: number
  private readonly maxSignatures: number
  private readonly parsed: Lru<Promise<Parsed>>
  private readonly merged: Lru<Merged>

  constructor (init: PublishedKeysInit = {}) {
    this.maxTextChars = init.maxTextChars ?? MAX_KEY_TEXT_CHARS
    this.maxTexts = init.maxTexts ?? 64
    this.maxSignatures = init.maxSignatures ?? 256
    this.parsed = new Lru(init.cachedTexts ?? 512)
    this.merged = new Lru(init.cachedKeys ?? 1024)
  }

  /**
   * The key `fingerprint` as the union of every usable text in `texts` (any number, any order,
   * duplicates welcome), and the texts that did not count with the reason.
   */
  async merge (fingerprint: string, texts: Iterable<PublishedText>): Promise<MergedKey> {
    const fpr = normalizeFingerprint(fingerprint)
    const ignored: IgnoredText[] = []
    const byDigest = new Map<string, { text: string, sources: string[] }>()
    for (const { source, text } of texts) {
      if (typeof text !== 'string') { ignored.push({ source, reason: 'not-text', detail: 'the published key is not a string' }); continue }
      if (text.length > this.maxTextChars) {
        ignored.push({ source, reason: 'too-large', detail: `${text.length} characters, at most ${this.maxTextChars}` })
        continue
      }
      const d = sha256(text)
      const entry = byDigest.get(d)
      if (entry === undefined) byDigest.set(d, { text, sources: [source] })
      else entry.sources.push(source)
    }
    // Lowest digests first: the same choice on every host, whichever order the texts come in.
    const digests = [...byDigest.keys()].sort()
    for (const d of digests.slice(this.maxTexts)) {
      for (const source of byDigest.get(d)!.sources) {
        ignored.push({ source, reason: 'too-many-texts', detail: `more than ${this.maxTexts} different texts are published for ${fpr}` })
      }
    }
    const chosen = digests.slice(0, this.maxTexts)
    // The same texts as a call before: its result, without parsing or even looking at the texts.
    const slot = `${fpr}:${chosen.join(',')}`
    let m = this.merged.get(slot)
    if (m === undefined) {
      m = await this.union(fpr, chosen.map(d => ({ digest: d, text: byDigest.get(d)!.text })))
      this.merged.set(slot, m)
    }
    const sources: string[] = []
    for (const d of chosen) {
      const failed = m.failed.get(d)
      for (const source of byDigest.get(d)!.sources) {
        if (failed === undefined) sources.push(source)
        else ignored.push({ source, ...failed })
      }
    }
    return { fingerprint: fpr, key: m.key, digest: m.digest, sources: sources.sort(), ignored: ignored.sort(byIgnored) }
  }

  private async union (fpr: Fingerprint, texts: Array<{ digest: string, text: string }>): Promise<Merged> {
    const pieces: Pieces[] = []
    const failed = new Map<string, { reason: IgnoredReason, detail: string }>()
    for (const { digest, text } of texts) {
      const p = await this.parse(fpr, digest, text)
      if (p.ok) pieces.push(p.pieces)
      else failed.set(digest, { reason: p.reason, detail: p.detail })
    }
    return pieces.length === 0 ? { key: undefined, digest: undefined, failed } : { ...build(pieces), failed }
  }

  private async parse (fpr: Fingerprint, digest: string, text: string): Promise<Parsed> {
    const slot = `${fpr}:${digest}`
    let p = this.parsed.get(slot)
    if (p === undefined) {
      p = piecesOf(fpr, text, this.maxSignatures)
      this.parsed.set(slot, p)
    }
    return await p
  }
}

function byIgnored (a: IgnoredText, b: IgnoredText): number {
  return a.source < b.source ? -1 : a.source > b.source ? 1 : a.reason < b.reason ? -1 : a.reason > b.reason ? 1 : 0
}

// ---------------------------------------------------------------- reading one text

/** The verified pieces of key `fpr` in `text`, or why there are none. Never throws. */
async function piecesOf (fpr: Fingerprint, text: string, maxSignatures: number): Promise<Parsed> {
  try {
    return await readPieces(fpr, text, maxSignatures)
  } catch (err) {
    return { ok: false, reason: 'not-a-key', detail: (err as Error).message }
  }
}

async function readPieces (fpr: Fingerprint, text: string, maxSignatures: number): Promise<Parsed> {
  let keys: openpgp.Key[]
  try {
    keys = await parseKeys(text)
  } catch (err) {
    return { ok: false, reason: 'not-a-key', detail: (err as Error).message }
  }
  const key = keys.find(k => normalizeFingerprint(k.getFingerprint()) === fpr)?.toPublic()
  if (key === undefined) {
    return { ok: false, reason: 'other-key', detail: `holds ${keys.map(k => normalizeFingerprint(k.getFingerprint())).join(', ')}, not ${fpr}` }
  }
  const primary = key.keyPacket as openpgp.PublicKeyPacket
  const primaryId = primary.getKeyID()
  // Counted before any is verified, so that a text stuffed with signatures costs little.
  const own = (list: openpgp.SignaturePacket[]): openpgp.SignaturePacket[] => list.filter(s => s.issuerKeyID.equals(primaryId))
  const direct = (key as unknown as { directSignatures: openpgp.SignaturePacket[] }).directSignatures ?? []
  let count = own(key.revocationSignatures).length + own(direct).length
  for (const u of key.users) count += own(u.selfCertifications).length + own(u.revocationSignatures).length
  for (const s of key.subkeys) count += own(s.bindingSignatures).length + own(s.revocationSignatures).length
  if (count > maxSignatures) return { ok: false, reason: 'too-many-signatures', detail: `${count} signatures by the key, at most ${maxSignatures}` }

  const pieces: Pieces = { primary, keySigs: new Map(), users: new Map(), subkeys: new Map() }
  const keyData = { key: primary }
  for (const sig of own([...key.revocationSignatures, ...direct])) {
    if (sig.signatureType === enums.signature.keyRevocation || sig.signatureType === enums.signature.key) {
      await keep(pieces.keySigs, sig, primary, keyData)
    }
  }
  for (const user of key.users) {
    if (user.userID === null) continue // user attributes (photos) play no part in validity
    const sigs = new Map<string, Sig>()
    for (const sig of own([...user.selfCertifications, ...user.revocationSignatures])) {
      if (USER_SIGS.has(sig.signatureType ?? -1)) await keep(sigs, sig, primary, { userID: user.userID, key: primary })
    }
    // Kept even without a self-certification here: another text may hold it, this one a revocation.
    if (sigs.size === 0) continue
    const id = hex(user.userID.write())
    const have = pieces.users.get(id)
    if (have === undefined) pieces.users.set(id, { packet: user.userID, sigs })
    else for (const v of sigs.values()) add(have.sigs, v)
  }
  for (const subkey of key.subkeys) {
    const packet = subkey.keyPacket as openpgp.PublicSubkeyPacket
    const sigs = new Map<string, Sig>()
    for (const sig of own([...subkey.bindingSignatures, ...subkey.revocationSignatures])) {
      if (sig.signatureType === enums.signature.subkeyBinding || sig.signatureType === enums.signature.subkeyRevocation) {
        await keep(sigs, sig, primary, { key: primary, bind: packet })
      }
    }
    if (sigs.size === 0) continue
    const id = packet.getFingerprint()
    const have = pieces.subkeys.get(id)
    if (have === undefined) pieces.subkeys.set(id, { packet, sigs })
    else for (const v of sigs.values()) add(have.sigs, v)
  }
  return { ok: true, pieces }
}

/**
 * Adds `sig` to `into` when it verifies by `primary` over `data`, without a date: its times are
 * judged at the request's dates (keys/verify.ts). Unknown critical subpackets, rejected hashes and
 * designated revokers (which openpgp.js does not support) make it fail, and it is dropped.
 */
async function keep (into: Map<string, Sig>, sig: openpgp.SignaturePacket, primary: openpgp.PublicKeyPacket, data: object): Promise<void> {
  try {
    await sig.verify(primary, sig.signatureType as openpgp.enums.signature, data, null as unknown as Date, false, openpgp.config)
    await checkBackSignature(sig, data as { key: openpgp.PublicKeyPacket, bind?: openpgp.PublicSubkeyPacket })
  } catch {
    return
  }
  if (sig.created === null) return
  add(into, { packet: sig, id: signatureId(sig), bytes: hex(sig.write()) })
}

/**
 * A binding of a signing subkey counts only with a valid back-signature by the subkey. It travels
 * in the binding's unhashed area, so a host could strip or spoil it in a copy of an otherwise
 * valid binding; were that copy picked, the subkey could no longer sign anywhere.
 */
async function checkBackSignature (sig: openpgp.SignaturePacket, data: { key: openpgp.PublicKeyPacket, bind?: openpgp.PublicSubkeyPacket }): Promise<void> {
  if (sig.signatureType !== enums.signature.subkeyBinding || data.bind === undefined) return
  const flags = (sig as unknown as { keyFlags: Uint8Array | null }).keyFlags
  if (flags === null || flags === undefined || (flags[0] & enums.keyFlags.signData) === 0) return
  const back = (sig as unknown as { embeddedSignature: openpgp.SignaturePacket | null }).embeddedSignature
  if (back === null || back === undefined) throw new Error('Missing embedded signature')
  await back.verify(data.bind, enums.signature.keyBinding, data, null as unknown as Date, false, openpgp.config)
}

function signatureId (sig: openpgp.SignaturePacket): string {
  const s = sig as unknown as { signatureData: Uint8Array, writeParams: () => Uint8Array }
  return sha256(Buffer.concat([s.signatureData, s.writeParams()]))
}

function add (into: Map<string, Sig>, sig: Sig): void {
  const have = into.get(sig.id)
  if (have === undefined || sig.bytes < have.bytes) into.set(sig.id, sig)
}

// ---------------------------------------------------------------- the union

/** Oldest first, then by identity: a fixed order, so openpgp.js picks the same signature everywhere. */
function sorted (sigs: Iterable<Sig>): openpgp.SignaturePacket[] {
  return [...sigs].sort((a, b) => (a.packet.created!.getTime() - b.packet.created!.getTime()) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map(s => s.packet)
}

function union<V extends { sigs: Map<string, Sig> }> (maps: Array<Map<string, V>>): Map<string, { first: V, sigs: Map<string, Sig> }> {
  const out = new Map<string, { first: V, sigs: Map<string, Sig> }>()
  for (const m of maps) {
    for (const [id, v] of m) {
      const have = out.get(id)
      if (have === undefined) out.set(id, { first: v, sigs: new Map(v.sigs) })
      else for (const s of v.sigs.values()) add(have.sigs, s)
    }
  }
  return out
}

/** The one key made of all `pieces` (all of the same primary key), and its digest. */
function build (pieces: Pieces[]): { key: openpgp.PublicKey, digest: string } {
  const list = new openpgp.PacketList<openpgp.AnyPacket>()
  list.push(pieces[0].primary)
  const keySigs = new Map<string, Sig>()
  for (const p of pieces) for (const s of p.keySigs.values()) add(keySigs, s)
  list.push(...sorted(keySigs.values()))
  const byId = (a: [string, unknown], b: [string, unknown]): number => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0
  // A user id without a self-certification, a subkey without a binding, does not count: left out.
  for (const [, u] of [...union(pieces.map(p => p.users))].sort(byId)) {
    if ([...u.sigs.values()].some(x => SELF_CERTS.has(x.packet.signatureType ?? -1))) list.push(u.first.packet, ...sorted(u.sigs.values()))
  }
  for (const [, k] of [...union(pieces.map(p => p.subkeys))].sort(byId)) {
    if ([...k.sigs.values()].some(x => x.packet.signatureType === enums.signature.subkeyBinding)) list.push(k.first.packet, ...sorted(k.sigs.values()))
  }
  const key = new openpgp.PublicKey(list)
  return { key, digest: sha256(key.write()) }
}

// ---------------------------------------------------------------- what this host publishes

/**
 * What this host should publish for a key after its operator gives `incoming` — `trust add` of an
 * updated key (a new expiry, a revocation the user imported), or of the key's bare revocation
 * certificate — merged with `published`, the text this host publishes for that key now (if any).
 * The same function adopts what other hosts publish: `mergeOwnKeyText(own, merged.key.armor())`.
 * Nothing already published is lost, so a revocation, once published, stays. `changed` is false
 * when `incoming` adds nothing to `published`.
 *
 * Throws BAD_KEY when `incoming` holds no key or several, or another key than `published`; when it
 * is a revocation certificate and nothing is published to apply it to, or it revokes another key;
 * and when the result would be larger than hosts accept.
 */
export async function mergeOwnKeyText (published: string | undefined, incoming: string):
Promise<{ fingerprint: Fingerprint, armored: string, digest: string, changed: boolean }> {
  const fpr = await fingerprintOfText(published, incoming)
  const given = await piecesOf(fpr, incoming, Number.MAX_SAFE_INTEGER)
  const before = published === undefined ? undefined : await piecesOf(fpr, published, Number.MAX_SAFE_INTEGER)
  const old = before?.ok === true ? before.pieces : undefined
  let pieces: Pieces[]
  if (given.ok) {
    pieces = old === undefined ? [given.pieces] : [old, given.pieces]
  } else {
    const revocations = await revocationCertificate(incoming, old, fpr)
    pieces = [old!, revocations]
  }
  const { key, digest } = build(pieces)
  const armored = key.armor()
  if (armored.length > MAX_KEY_TEXT_CHARS) {
    throw new PicocloudError(ErrorCode.BadKey,
      `key ${fpr} would be ${armored.length} characters once merged; hosts accept at most ${MAX_KEY_TEXT_CHARS}. ` +
      'Export it without third-party signatures or photos (gpg --export-options export-minimal)')
  }
  return { fingerprint: fpr, armored, digest, changed: old === undefined || build([old]).digest !== digest }
}

/** The fingerprint `incoming` is about: its one key's, else (a revocation certificate) `published`'s. */
async function fingerprintOfText (published: string | undefined, incoming: string): Promise<Fingerprint> {
  const mine = published === undefined ? undefined : (await parseKeys(published).catch(() => undefined))?.[0]
  let keys: openpgp.Key[] | undefined
  try {
    keys = await parseKeys(incoming)
  } catch (err) {
    if (mine === undefined) throw err
  }
  if (keys === undefined) return normalizeFingerprint(mine!.getFingerprint())
  if (keys.length !== 1) throw new PicocloudError(ErrorCode.BadKey, `the key file holds ${keys.length} keys; give one key at a time`)
  const fpr = normalizeFingerprint(keys[0].getFingerprint())
  if (mine !== undefined && normalizeFingerprint(mine.getFingerprint()) !== fpr) {
    throw new PicocloudError(ErrorCode.BadKey, `the key given is ${fpr}, but this host publishes ${normalizeFingerprint(mine.getFingerprint())} in its place`)
  }
  return fpr
}

/**
 * The key revocations in a revocation certificate (`gpg --gen-revoke`, or the file GnuPG keeps in
 * openpgp-revocs.d/ once its leading colon is removed) that verify by the published key.
 */
async function revocationCertificate (text: string, published: Pieces | undefined, fpr: Fingerprint): Promise<Pieces> {
  if (published === undefined) {
    throw new PicocloudError(ErrorCode.BadKey, `no key ${fpr} is published by this host to apply a revocation certificate to; give the key file`)
  }
  let packets: openpgp.PacketList<openpgp.AnyPacket>
  try {
    const { data } = await openpgp.unarmor(text)
    if (!(data instanceof Uint8Array)) throw new Error('unexpected stream')
    // openpgp.js wants a plain object by tag, whatever its typings say.
    const allowed = { [enums.packet.signature]: openpgp.SignaturePacket } as unknown as Parameters<typeof openpgp.PacketList.fromBinary>[1]
    packets = await openpgp.PacketList.fromBinary(data, allowed)
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadKey, `neither an OpenPGP key nor a revocation certificate: ${(err as Error).message}`, 400, { cause: err })
  }
  const keySigs = new Map<string, Sig>()
  for (const p of packets) {
    if (p instanceof openpgp.SignaturePacket && p.signatureType === enums.signature.keyRevocation) {
      await keep(keySigs, p, published.primary, { key: published.primary })
    }
  }
  if (keySigs.size === 0) throw new PicocloudError(ErrorCode.BadKey, `the file holds no revocation of key ${fpr} that verifies`)
  return { primary: published.primary, keySigs, users: new Map(), subkeys: new Map() }
}
