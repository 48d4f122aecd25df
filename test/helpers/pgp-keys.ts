/**
 * OpenPGP keys and signatures at chosen times, for the tests of keys/verify.ts and
 * keys/published-keys.ts: expired, soft- and hard-revoked keys, and backdated signatures.
 */
import * as openpgp from 'openpgp'

export const bytes = (s: string): Uint8Array => new TextEncoder().encode(s)
export const at = (iso: string): Date => new Date(iso)
export const { reasonForRevocation: reason } = openpgp.enums

export interface KeyOptions {
  /** Creation time of the key and its self-signatures. */
  date: Date
  /** Seconds until the key expires. */
  expiresIn?: number
  /** Add a signing subkey (made at `date` too), which then signs. */
  signingSubkey?: boolean
  /** @default 'ed25519' (EdDSA legacy, what GnuPG 2.2 makes: the fast path) */
  type?: 'ed25519' | 'rsa'
  name?: string
}

export async function makeKey (o: KeyOptions): Promise<openpgp.PrivateKey> {
  const common = {
    userIDs: [{ name: o.name ?? 'T', email: `${(o.name ?? 't').toLowerCase()}@example.org` }],
    date: o.date,
    keyExpirationTime: o.expiresIn ?? 0,
    subkeys: o.signingSubkey === true ? [{}, { sign: true }] : undefined,
    format: 'object' as const
  }
  const { privateKey } = o.type === 'rsa'
    ? await openpgp.generateKey({ ...common, type: 'rsa', rsaBits: 2048 })
    : await openpgp.generateKey({ ...common, type: 'ecc', curve: 'curve25519Legacy' })
  return privateKey
}

/** A detached signature over `data` whose creation time is `date` (the signer's choice). */
export async function signAt (key: openpgp.PrivateKey, data: Uint8Array, date: Date): Promise<string> {
  const message = await openpgp.createMessage({ binary: data })
  return await openpgp.sign({ message, signingKeys: key, detached: true, format: 'armored', date })
}

/** `key` revoked by a revocation signature made at `date` with reason `flag`. */
export async function revokeAt (key: openpgp.PrivateKey, date: Date, flag: openpgp.enums.reasonForRevocation, text = ''): Promise<openpgp.PublicKey> {
  const { publicKey } = await openpgp.revokeKey({ key, reasonForRevocation: { flag, string: text }, date, format: 'object' })
  return publicKey
}

/** `key` with its signing subkey (the last one) revoked at `date` with reason `flag`. */
export async function revokeSubkeyAt (key: openpgp.PrivateKey, date: Date, flag: openpgp.enums.reasonForRevocation): Promise<openpgp.PublicKey> {
  const copy = await openpgp.readPrivateKey({ armoredKey: key.armor() })
  const i = copy.subkeys.length - 1
  copy.subkeys[i] = await copy.subkeys[i].revoke(copy.keyPacket as openpgp.SecretKeyPacket, { flag }, date)
  return copy.toPublic()
}

/** `openpgp.verify` alone at `date`: what the first version relied on (the key judged at the signature's time). */
export async function openpgpVerifyAt (data: Uint8Array, armored: string, key: openpgp.PublicKey, date: Date): Promise<boolean> {
  try {
    const r = await openpgp.verify({
      message: await openpgp.createMessage({ binary: data }),
      signature: await openpgp.readSignature({ armoredSignature: armored }),
      verificationKeys: key, expectSigned: true, format: 'binary', date
    })
    for (const s of r.signatures) await s.verified
    return true
  } catch {
    return false
  }
}
