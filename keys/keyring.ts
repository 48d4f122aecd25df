/**
 * The OpenPGP keyring of a person (not of a host): keys that sign requests, and public keys of
 * others whose requests we check. Built on openpgp.js 6 (>= 6.1.1 for CVE-2025-47934) and kept
 * compatible with GnuPG 2.2: v4 keys only, EdDSA "legacy" Ed25519 by default, RSA accepted.
 *
 * On disk a keyring is a directory (mode 0700) with one armored file per key, `<FINGERPRINT>.asc`.
 * A file holding secret material is mode 0600; every file is written atomically (temp file, fsync,
 * rename, fsync of the directory) so a crash never leaves half a key behind.
 *
 * @example
 * const dir = keyringDir()
 * const { fingerprint } = await generateKey(dir, { userIds: ['Ada <ada@example.org>'] })
 * const sig = await signDetached(await loadPrivateKey(dir, fingerprint), bytes)
 * await verifyDetached(bytes, sig, (await findPublicKey(dir, fingerprint))!)
 */
import * as openpgp from 'openpgp'
import { open, mkdir, readdir, readFile, rename, unlink, chmod, stat } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { normalizeFingerprint, isFingerprint, type Fingerprint } from '../protocol/fingerprint.ts'
import { keyVerifier, type KeyVerifierOptions, type SignatureVerifier } from './verify.ts'

export type { Fingerprint } from '../protocol/fingerprint.ts'
// Verification lives in keys/verify.ts (signatures, and the key's validity at given dates).
export {
  verifyDetached, verifyWithOpenpgp, keyVerifier, checkSigningKeyAt, requestDates,
  type VerifiedSignature, type VerifyOptions, type PublicKeyLookup, type SignatureVerifier, type KeyVerifierOptions
} from './verify.ts'

/** What `picocloud key list` shows about a key. */
export interface KeyInfo {
  fingerprint: Fingerprint
  userIds: string[]
  /** e.g. `ed25519`, `rsa3072`, `ecdsa-nistP256`. */
  algorithm: string
  /** ISO-8601 UTC. */
  created: string
  /** ISO-8601 UTC, or null when the key does not expire. */
  expires: string | null
  hasSecret: boolean
  expired: boolean
  revoked: boolean
}

// ---------------------------------------------------------------- locations and passphrases

/**
 * The keyring directory: `PICOCLOUD_KEYRING`, else `$XDG_CONFIG_HOME/picocloud/keyring`, else
 * `~/.config/picocloud/keyring`. A person's keys live in their config dir, not the daemon's state.
 */
export function keyringDir (env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string {
  if (env.PICOCLOUD_KEYRING !== undefined && env.PICOCLOUD_KEYRING !== '') return env.PICOCLOUD_KEYRING
  const config = env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== '' ? env.XDG_CONFIG_HOME : join(home, '.config')
  return join(config, 'picocloud', 'keyring')
}

export interface PassphraseSources {
  /** Given directly (e.g. by a test or an API caller). Wins over the others. */
  passphrase?: string
  /** Path given with `--passphrase-file`; its first line is the passphrase, as with gpg. */
  passphraseFile?: string
  env?: NodeJS.ProcessEnv
}

/**
 * The passphrase from, in order: the option, `--passphrase-file`, `PICOCLOUD_PASSPHRASE`.
 * Undefined when none is given (fine for unprotected keys).
 */
export async function resolvePassphrase (sources: PassphraseSources = {}): Promise<string | undefined> {
  if (sources.passphrase !== undefined) return sources.passphrase
  if (sources.passphraseFile !== undefined) {
    let text: string
    try {
      text = await readFile(sources.passphraseFile, 'utf8')
    } catch (err) {
      throw new PicocloudError(ErrorCode.Keyring,
        `cannot read passphrase file ${sources.passphraseFile}: ${(err as Error).message}`, 400, { cause: err })
    }
    return text.split(/\r?\n/, 1)[0]
  }
  return (sources.env ?? process.env).PICOCLOUD_PASSPHRASE
}

// ---------------------------------------------------------------- parsing and describing keys

const ARMOR_BLOCK = /-----BEGIN PGP (PUBLIC|PRIVATE) KEY BLOCK-----[\s\S]*?-----END PGP \1 KEY BLOCK-----/g

/**
 * Every key in `input`: armored text with one or more blocks (public and/or private, as
 * `gpg --armor --export` and `--export-secret-keys` write them, possibly concatenated) or binary
 * transferable keys. Throws BAD_KEY when nothing usable is found or a key is not v4.
 */
export async function parseKeys (input: string | Uint8Array): Promise<openpgp.Key[]> {
  const keys: openpgp.Key[] = []
  try {
    const text = typeof input === 'string' ? input : looksArmored(input) ? new TextDecoder().decode(input) : undefined
    if (text === undefined) {
      keys.push(...await openpgp.readKeys({ binaryKeys: input as Uint8Array }))
    } else {
      for (const block of text.match(ARMOR_BLOCK) ?? []) keys.push(...await openpgp.readKeys({ armoredKeys: block }))
    }
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadKey, `cannot read OpenPGP key: ${(err as Error).message}`, 400, { cause: err })
  }
  if (keys.length === 0) {
    throw new PicocloudError(ErrorCode.BadKey,
      'no OpenPGP key found; expected the output of `gpg --armor --export KEY` or `picocloud key export`')
  }
  for (const key of keys) {
    if (key.keyPacket.version !== 4) {
      throw new PicocloudError(ErrorCode.BadKey,
        `key ${key.getFingerprint().toUpperCase()} is a v${key.keyPacket.version} key; picocloud uses v4 keys, which GnuPG 2.2 understands`)
    }
  }
  return keys
}

function looksArmored (bytes: Uint8Array): boolean {
  return new TextDecoder().decode(bytes.subarray(0, 64)).trimStart().startsWith('-----BEGIN')
}

export function fingerprintOf (key: openpgp.Key): Fingerprint {
  return normalizeFingerprint(key.getFingerprint())
}

function algorithmName (info: openpgp.AlgorithmInfo): string {
  const a = String(info.algorithm)
  if (a.startsWith('rsa')) return `rsa${info.bits ?? ''}`
  if (a === 'eddsaLegacy' || a === 'ed25519') return 'ed25519'
  if (a === 'ed448') return 'ed448'
  if (info.curve !== undefined) return `${a}-${String(info.curve)}`
  return a
}

/** The facts `key list` prints, evaluated at `now`. */
export async function describeKey (key: openpgp.Key, now: Date = new Date()): Promise<KeyInfo> {
  const revoked = await key.isRevoked(undefined, undefined, now).catch(() => false)
  let expires: Date | null = null
  let valid = true
  try {
    const t = await key.getExpirationTime()
    if (t instanceof Date) expires = t
  } catch {
    valid = false // no valid self-signature: treat as unusable
  }
  return {
    fingerprint: fingerprintOf(key),
    userIds: key.getUserIDs(),
    algorithm: algorithmName(key.getAlgorithmInfo()),
    created: key.getCreationTime().toISOString(),
    expires: expires === null ? null : expires.toISOString(),
    hasSecret: key.isPrivate(),
    expired: !valid || (expires !== null && expires.getTime() <= now.getTime()),
    revoked
  }
}

// ---------------------------------------------------------------- the keyring directory

/** Create the keyring directory if needed and make sure only its owner can enter it. */
export async function ensureKeyringDir (dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const s = await stat(dir)
  if ((s.mode & 0o077) !== 0) await chmod(dir, 0o700)
}

function keyFile (dir: string, fpr: Fingerprint): string {
  return join(dir, `${fpr}.asc`)
}

/** Write `text` to `path` so that readers see the old file or the new one, never a torn one. */
async function writeAtomic (dir: string, path: string, text: string, mode: number): Promise<void> {
  const tmp = join(dir, `.tmp-${randomBytes(8).toString('hex')}`)
  const fh = await open(tmp, 'wx', mode)
  try {
    await fh.writeFile(text)
    await fh.chmod(mode) // the umask may have narrowed or the file may pre-exist: be exact
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
  const d = await open(dir, 'r')
  try {
    await d.sync()
  } finally {
    await d.close()
  }
}

async function readStoredKey (dir: string, fpr: Fingerprint): Promise<openpgp.Key | undefined> {
  let text: string
  try {
    text = await readFile(keyFile(dir, fpr), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  let key: openpgp.Key | undefined
  try {
    [key] = await parseKeys(text)
  } catch (err) {
    throw new PicocloudError(ErrorCode.Keyring, `keyring file ${keyFile(dir, fpr)} is damaged: ${(err as Error).message}; ` +
      'remove it and import the key again', 500, { cause: err })
  }
  if (fingerprintOf(key) !== fpr) {
    throw new PicocloudError(ErrorCode.Keyring, `keyring file ${keyFile(dir, fpr)} holds key ${fingerprintOf(key)}, not ${fpr}; remove it and import the key again`, 500)
  }
  return key
}

async function storeKey (dir: string, key: openpgp.Key): Promise<void> {
  const fpr = fingerprintOf(key)
  await writeAtomic(dir, keyFile(dir, fpr), key.armor(), key.isPrivate() ? 0o600 : 0o644)
}

/**
 * Merge `incoming` with what the keyring holds for the same fingerprint: new signatures
 * (revocations, extended expiry, user ids) are added, and secret material is never lost.
 */
async function merge (existing: openpgp.Key | undefined, incoming: openpgp.Key): Promise<openpgp.Key> {
  if (existing === undefined) return incoming
  try {
    if (existing.isPrivate()) return await existing.update(incoming)
    if (incoming.isPrivate()) return await incoming.update(existing)
    return await existing.update(incoming)
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadKey,
      `cannot merge key ${fingerprintOf(incoming)} with the copy in the keyring: ${(err as Error).message}`, 400, { cause: err })
  }
}

/**
 * Import every key in `input` (see `parseKeys`) into the keyring at `dir`, merging with keys
 * already there. Returns what was imported.
 */
export async function importKeys (dir: string, input: string | Uint8Array, now: Date = new Date()): Promise<KeyInfo[]> {
  const keys = await parseKeys(input)
  await ensureKeyringDir(dir)
  const out: KeyInfo[] = []
  for (const key of keys) {
    const merged = await merge(await readStoredKey(dir, fingerprintOf(key)), key)
    await storeKey(dir, merged)
    out.push(await describeKey(merged, now))
  }
  return out
}

export interface GenerateOptions {
  /** e.g. `['Ada Lovelace <ada@example.org>']`. At least one. */
  userIds: string[]
  /** Encrypts the stored secret key. */
  passphrase?: string
  /** @default 'ed25519' */
  type?: 'ed25519' | 'rsa'
  /** @default 3072 */
  rsaBits?: number
  /** Seconds until the key expires; 0 = never. @default 0 */
  expiresInSeconds?: number
  date?: Date
}

function parseUserId (uid: string): openpgp.UserID {
  const m = /^\s*(.*?)\s*(?:<([^<>\s]+@[^<>\s]+)>)?\s*$/.exec(uid)
  const name = m?.[1] ?? ''
  const email = m?.[2]
  if (name === '' && email === undefined) {
    throw new PicocloudError(ErrorCode.BadKey, `empty user id ${JSON.stringify(uid)}; use "Name <email>"`)
  }
  return email === undefined ? { name } : { name, email }
}

/**
 * Generate a key pair and store it. Ed25519 is the "legacy" EdDSA of RFC 4880bis (what GnuPG 2.2
 * makes with `--quick-gen-key NAME ed25519`), with a Curve25519 encryption subkey.
 */
export async function generateKey (dir: string, options: GenerateOptions): Promise<KeyInfo & { publicKey: string }> {
  if (options.userIds.length === 0) throw new PicocloudError(ErrorCode.BadKey, 'a key needs at least one user id, e.g. "Ada <ada@example.org>"')
  const common = {
    userIDs: options.userIds.map(parseUserId),
    keyExpirationTime: options.expiresInSeconds ?? 0,
    date: options.date,
    format: 'object' as const,
    ...(options.passphrase !== undefined && options.passphrase !== '' ? { passphrase: options.passphrase } : {})
  }
  let generated: { privateKey: openpgp.PrivateKey, publicKey: openpgp.PublicKey }
  try {
    generated = (options.type ?? 'ed25519') === 'rsa'
      ? await openpgp.generateKey({ ...common, type: 'rsa', rsaBits: options.rsaBits ?? 3072 })
      : await openpgp.generateKey({ ...common, type: 'ecc', curve: 'curve25519Legacy' })
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadKey, `cannot generate key: ${(err as Error).message}`, 400, { cause: err })
  }
  await ensureKeyringDir(dir)
  await storeKey(dir, generated.privateKey)
  return { ...await describeKey(generated.privateKey, options.date), publicKey: generated.publicKey.armor() }
}

/** Every key in the keyring, sorted by fingerprint. Files that are not keys are skipped. */
export async function listKeys (dir: string, now: Date = new Date()): Promise<KeyInfo[]> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: KeyInfo[] = []
  for (const name of names.sort()) {
    const fpr = name.replace(/\.asc$/, '')
    if (!name.endsWith('.asc') || !isFingerprint(fpr)) continue
    const key = await readStoredKey(dir, fpr)
    if (key !== undefined) out.push(await describeKey(key, now))
  }
  return out
}

async function requireKey (dir: string, fingerprint: string): Promise<openpgp.Key> {
  const fpr = normalizeFingerprint(fingerprint)
  const key = await readStoredKey(dir, fpr)
  if (key === undefined) {
    throw new PicocloudError(ErrorCode.KeyNotFound, `no key ${fpr} in keyring ${dir}; see \`picocloud key list\``, 404)
  }
  return key
}

/** The public key for `fingerprint`, or undefined: the lookup that request verification needs. */
export async function findPublicKey (dir: string, fingerprint: string): Promise<openpgp.PublicKey | undefined> {
  if (!isFingerprint(fingerprint)) return undefined
  const key = await readStoredKey(dir, fingerprint)
  return key?.toPublic()
}

/** Armored export: the public key unless `secret` is set explicitly. */
export async function exportKey (dir: string, fingerprint: string, options: { secret?: boolean } = {}): Promise<string> {
  const key = await requireKey(dir, fingerprint)
  if (options.secret !== true) return key.toPublic().armor()
  if (!key.isPrivate()) {
    throw new PicocloudError(ErrorCode.NoSecretKey, `the keyring holds only the public part of ${fingerprintOf(key)}`, 404)
  }
  return key.armor()
}

/** Remove a key from the keyring. */
export async function removeKey (dir: string, fingerprint: string): Promise<void> {
  const key = await requireKey(dir, fingerprint)
  await unlink(keyFile(dir, fingerprintOf(key)))
}

/**
 * The secret key for `fingerprint`, decrypted and ready to sign. PASSPHRASE_REQUIRED when the key
 * is protected and no passphrase is given; BAD_PASSPHRASE when the passphrase is wrong.
 */
export async function loadPrivateKey (dir: string, fingerprint: string, passphrase?: string): Promise<openpgp.PrivateKey> {
  const key = await requireKey(dir, fingerprint)
  if (!key.isPrivate()) {
    throw new PicocloudError(ErrorCode.NoSecretKey,
      `the keyring holds only the public part of ${fingerprintOf(key)}; import its secret key to sign with it`, 404)
  }
  return await unlockKey(key, passphrase)
}

/** Decrypt a passphrase-protected secret key (a no-op for an unprotected one). */
export async function unlockKey (key: openpgp.PrivateKey, passphrase?: string): Promise<openpgp.PrivateKey> {
  if (key.isDecrypted()) return key
  const fpr = fingerprintOf(key)
  if (passphrase === undefined || passphrase === '') {
    throw new PicocloudError(ErrorCode.PassphraseRequired,
      `key ${fpr} is protected by a passphrase; give it with --passphrase-file or PICOCLOUD_PASSPHRASE`, 401)
  }
  try {
    return await openpgp.decryptKey({ privateKey: key, passphrase })
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadPassphrase, `wrong passphrase for key ${fpr}`, 401, { cause: err })
  }
}

// ---------------------------------------------------------------- signing and verifying

/**
 * A detached, armored, binary-mode signature over exactly `data` — what
 * `gpg --armor --detach-sign FILE` makes, and what `gpg --verify SIG FILE` checks.
 */
export async function signDetached (key: openpgp.PrivateKey, data: Uint8Array, options: { date?: Date } = {}): Promise<string> {
  try {
    const message = await openpgp.createMessage({ binary: data })
    return await openpgp.sign({ message, signingKeys: key, detached: true, format: 'armored', date: options.date })
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadKey, `cannot sign with key ${fingerprintOf(key)}: ${(err as Error).message}`, 400, { cause: err })
  }
}

/** What identifies one version of a key file: it is replaced by rename, so inode, size and mtime. */
async function fileStamp (path: string): Promise<string> {
  try {
    const s = await stat(path, { bigint: true })
    return `${s.ino}:${s.size}:${s.mtimeNs}`
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent'
    throw err
  }
}

/**
 * A verifier over the keyring directory `dir`. Each key is parsed once (its self-signatures are
 * then checked once too) and parsed again only when its file changes: a revocation or a removal
 * takes effect on the next verification.
 */
export function keyringVerifier (dir: string, options: KeyVerifierOptions = {}): SignatureVerifier {
  const cache = new Map<Fingerprint, { stamp: string, key: openpgp.PublicKey | undefined }>()
  return keyVerifier(async fpr => {
    if (!isFingerprint(fpr)) return undefined
    const stamp = await fileStamp(keyFile(dir, fpr))
    const hit = cache.get(fpr)
    if (hit?.stamp === stamp) return hit.key
    const key = await findPublicKey(dir, fpr)
    cache.set(fpr, { stamp, key })
    return key
  }, options)
}
