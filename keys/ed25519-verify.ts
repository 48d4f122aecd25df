/**
 * A faster check of detached v4 Ed25519 signatures (EdDSA "legacy" as GnuPG 2.2 makes them, and
 * RFC 9580 Ed25519 on a v4 key) over a byte string, doing what openpgp.js 6.3's
 * `SignaturePacket.verify(key, type, data, null)` does (the check `openpgp.verify` makes of each
 * packet, without the times), check for check. Times and the signing key's validity are judged by
 * the caller (keys/verify.ts), the same way for this path and for openpgp.js.
 *
 * Why: openpgp.js verifies Ed25519 through WebCrypto — a JWK import and an asynchronous job on
 * libuv's thread pool for every signature, plus stream plumbing around the hash. Under load the
 * round trip to the pool costs more than the curve arithmetic. Here the public key is imported once
 * (cached per key packet) and checked synchronously with node:crypto, which is the same OpenSSL
 * Ed25519 that WebCrypto calls, so the same signatures pass.
 *
 * Only the common shape is handled; `fastEd25519Eligible` says when, and every other signature
 * (RSA, text mode, v5/v6 packets, unusual hashes or curves) goes through openpgp.verify.
 */
import * as openpgp from 'openpgp'
import { createHash, createPublicKey, verify as edVerify, type KeyObject } from 'node:crypto'

const { enums } = openpgp

/** Hashes allowed here: at least as long as SHA-256, as openpgp.js requires for EdDSA. */
const HASHES = new Map<number, string>([
  [enums.hash.sha256, 'sha256'],
  [enums.hash.sha384, 'sha384'],
  [enums.hash.sha512, 'sha512']
])

/** The parts of openpgp.js's SignaturePacket this check reads (parsed fields, not in its typings). */
interface SigPacket {
  version: number
  signatureType: number
  publicKeyAlgorithm: number
  hashAlgorithm: number
  signatureData: Uint8Array
  signedHashValue: Uint8Array
  params: { r?: Uint8Array, s?: Uint8Array, RS?: Uint8Array }
  issuerKeyID: openpgp.KeyID
  unknownSubpackets: Array<{ type: number, critical: boolean }>
  rawNotations: Array<{ name: string, critical: boolean }>
  revocationKeyClass: number | null
}

interface KeyParams { oid?: { getName: () => string }, Q?: Uint8Array, A?: Uint8Array }

const asSig = (p: unknown): SigPacket => p as SigPacket

type KeyPacket = openpgp.Key['keyPacket'] | openpgp.Subkey['keyPacket']

/** The raw 32-byte Ed25519 public key of a key packet, or undefined for anything else. */
function rawEd25519 (keyPacket: KeyPacket): Uint8Array | undefined {
  const params = keyPacket.publicParams as unknown as KeyParams
  if (keyPacket.algorithm === enums.publicKey.eddsaLegacy) {
    // openpgp.js: checkPublicPointEnconding — 0x40 prefix, then the 32-byte point.
    if (params.oid?.getName() !== enums.curve.ed25519Legacy) return undefined
    const q = params.Q
    return q !== undefined && q.length === 33 && q[0] === 0x40 ? q.subarray(1) : undefined
  }
  if (keyPacket.algorithm === enums.publicKey.ed25519) return params.A?.length === 32 ? params.A : undefined
  return undefined
}

const keyObjects = new WeakMap<object, KeyObject>()

function keyObject (keyPacket: KeyPacket, raw: Uint8Array): KeyObject {
  let k = keyObjects.get(keyPacket)
  if (k === undefined) {
    k = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' })
    keyObjects.set(keyPacket, k)
  }
  return k
}

/** The (sub)key of `key` with the signature's issuer key id, as openpgp.js picks it (the first). */
function issuerKey (key: openpgp.PublicKey, sig: SigPacket): openpgp.Key | openpgp.Subkey | undefined {
  return key.getKeys(sig.issuerKeyID)[0]
}

/** The 64-byte R‖S of an EdDSA signature, left-padded as openpgp.js does, or undefined. */
function signatureBytes (sig: SigPacket): Uint8Array | undefined {
  const { r, s, RS } = sig.params
  if (sig.publicKeyAlgorithm === enums.publicKey.ed25519) return RS?.length === 64 ? RS : undefined
  if (r === undefined || s === undefined || r.length > 32 || s.length > 32) return undefined
  const out = new Uint8Array(64)
  out.set(r, 32 - r.length)
  out.set(s, 64 - s.length)
  return out
}

/**
 * True when every packet of `signature` is a v4 binary-mode Ed25519 signature with SHA-2 ≥ 256
 * whose issuer is an Ed25519 (sub)key of `key`: the case `verifyEd25519Packet` handles.
 */
export function fastEd25519Eligible (signature: openpgp.Signature, key: openpgp.PublicKey): boolean {
  if (signature.packets.length === 0) return false
  for (const p of signature.packets) {
    if (!(p instanceof openpgp.SignaturePacket)) return false
    const sig = asSig(p)
    if (sig.version !== 4 || sig.signatureType !== enums.signature.binary || !HASHES.has(sig.hashAlgorithm)) return false
    if (sig.publicKeyAlgorithm !== enums.publicKey.eddsaLegacy && sig.publicKeyAlgorithm !== enums.publicKey.ed25519) return false
    const signer = issuerKey(key, sig)
    if (signer === undefined || signer.keyPacket.algorithm !== sig.publicKeyAlgorithm) return false
    if (rawEd25519(signer.keyPacket) === undefined || signatureBytes(sig) === undefined) return false
  }
  return true
}

/**
 * Verify one packet (already found eligible) over `data`: the mathematics and what the packet
 * itself says (hash algorithm, critical subpackets and notations), throwing openpgp.js's messages
 * for the same failures. No time is checked here: not the signature's creation or expiry, nor the
 * key's validity, which keys/verify.ts judges at the dates it is given, for both paths alike.
 * Returns the key id (hex, upper-case) of the (sub)key that signed.
 */
export async function verifyEd25519Packet (packet: openpgp.SignaturePacket, data: Uint8Array, key: openpgp.PublicKey,
  config: openpgp.Config = openpgp.config): Promise<string> {
  const sig = asSig(packet)
  const signer = issuerKey(key, sig)
  const raw = signer === undefined ? undefined : rawEd25519(signer.keyPacket)
  const rs = signatureBytes(sig)
  const hashName = HASHES.get(sig.hashAlgorithm)
  if (signer === undefined || raw === undefined || rs === undefined || hashName === undefined) {
    throw new Error('signature not eligible for the Ed25519 fast path')
  }
  // SignaturePacket.verify. getKeys lets a wildcard issuer id match any key; this check does not.
  if (!sig.issuerKeyID.equals(signer.getKeyID())) throw new Error('Signature was not issued by the given public key')
  if (signer.keyPacket.algorithm !== sig.publicKeyAlgorithm) {
    throw new Error('Public key algorithm used to sign signature does not match issuer key algorithm.')
  }
  // v4 hash input (RFC 4880 §5.2.4): the data, the hashed part of the packet, 0x04 0xFF, its length.
  const n = sig.signatureData.length
  const trailer = new Uint8Array([4, 0xff, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff])
  const digest = createHash(hashName).update(data).update(sig.signatureData).update(trailer).digest()
  if (sig.signedHashValue[0] !== digest[0] || sig.signedHashValue[1] !== digest[1]) throw new Error('Signed digest did not match')
  // OpenPGP EdDSA signs the digest, not the data.
  if (!edVerify(null, digest, keyObject(signer.keyPacket, raw), rs)) throw new Error('Signature verification failed')
  if (config.rejectHashAlgorithms.has(sig.hashAlgorithm)) throw new Error(`Insecure hash algorithm: ${hashName.toUpperCase()}`)
  if (config.rejectMessageHashAlgorithms.has(sig.hashAlgorithm)) throw new Error(`Insecure message hash algorithm: ${hashName.toUpperCase()}`)
  for (const { type, critical } of sig.unknownSubpackets) {
    if (critical) throw new Error(`Unknown critical signature subpacket type ${type}`)
  }
  for (const { name, critical } of sig.rawNotations) {
    if (critical && !config.knownNotations.includes(name)) throw new Error(`Unknown critical notation: ${name}`)
  }
  if (sig.revocationKeyClass !== null) {
    throw new Error('This key is intended to be revoked with an authorized key, which OpenPGP.js does not support.')
  }
  return signer.getKeyID().toHex().toUpperCase()
}
