/**
 * Authenticated Automerge changes (after Kleppmann, "Making CRDTs Byzantine Fault Tolerant").
 * A host signs the hash of each change it makes with its peer key. The change's actor is the
 * author's peer id (see keys/peer-key.ts), and that peer id embeds the Ed25519 public key, so a
 * receiver verifies authorship from the change alone.
 */
import * as A from '@automerge/automerge'
import { createPrivateKey, createPublicKey, sign as edSign, verify as edVerify, type KeyObject } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import { peerForActor } from '../keys/peer-key.ts'

export interface SignedChange {
  change: Uint8Array
  /** Ed25519 signature over DOMAIN || change hash (32 bytes). */
  signature: Uint8Array
}

export interface VerifiedChange extends SignedChange {
  hash: string
  actor: string
  seq: number
  deps: string[]
  /** Peer id string of the author, derived from the actor. */
  author: string
}

const DOMAIN = new TextEncoder().encode('picocloud/change/v1\0')

function signedBytes (hash: string): Uint8Array {
  const out = new Uint8Array(DOMAIN.length + 32)
  out.set(DOMAIN)
  out.set(Buffer.from(hash, 'hex'), DOMAIN.length)
  return out
}

// Ed25519 through node:crypto with key objects kept per key: libp2p's keys re-import the key for
// every signature, and base58 peer id strings are costly to compute; both sit on the path of
// every change a host makes or receives.
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')
const signers = new WeakMap<PrivateKey, KeyObject>()
interface Author { peerId: string, key: KeyObject }
const authors = new Map<string, Author>()
const MAX_AUTHORS = 10_000

function signerFor (key: PrivateKey): KeyObject {
  let k = signers.get(key)
  if (k === undefined) {
    if (key.type !== 'Ed25519') throw new Error('host keys are Ed25519')
    k = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, key.raw.subarray(0, 32)]), format: 'der', type: 'pkcs8' })
    signers.set(key, k)
  }
  return k
}

function authorOf (actor: string): Author {
  let a = authors.get(actor)
  if (a === undefined) {
    const peer = peerForActor(actor)
    a = { peerId: peer.toString(), key: createPublicKey({ key: Buffer.concat([SPKI_PREFIX, peer.publicKey.raw]), format: 'der', type: 'spki' }) }
    if (authors.size >= MAX_AUTHORS) authors.clear()
    authors.set(actor, a)
  }
  return a
}

export async function signChange (change: Uint8Array, key: PrivateKey): Promise<SignedChange> {
  const { hash } = A.decodeChange(change)
  if (hash === undefined) throw new Error('change has no hash')
  return signChangeHash(change, hash, key)
}

/** Signs a change whose hash the caller already has (decoding a change costs more than signing it). */
export function signChangeHash (change: Uint8Array, hash: string, key: PrivateKey): SignedChange {
  return { change, signature: new Uint8Array(edSign(null, signedBytes(hash), signerFor(key))) }
}

export class InvalidChangeError extends Error {
  override name = 'InvalidChangeError'
}

/** Decodes a change and checks its signature against the key of its actor. Throws InvalidChangeError. */
export async function verifyChange (signed: SignedChange): Promise<VerifiedChange> {
  let decoded: A.DecodedChange
  try {
    decoded = A.decodeChange(signed.change)
  } catch (err: any) {
    throw new InvalidChangeError(`undecodable change: ${err.message}`)
  }
  if (decoded.hash === undefined) throw new InvalidChangeError('change has no hash')
  let author: Author
  try {
    author = authorOf(decoded.actor)
  } catch (err: any) {
    throw new InvalidChangeError(`actor ${decoded.actor.slice(0, 16)}… is not a host peer id: ${err.message}`)
  }
  const ok = signed.signature.length === 64 && edVerify(null, signedBytes(decoded.hash), author.key, signed.signature)
  if (!ok) throw new InvalidChangeError(`bad signature on change ${decoded.hash.slice(0, 12)} by ${author.peerId}`)
  return {
    ...signed,
    hash: decoded.hash,
    actor: decoded.actor,
    seq: decoded.seq,
    deps: decoded.deps,
    author: author.peerId
  }
}

/** Binary encoding used on disk and on the wire: u32 change length, change, 64-byte signature. */
export function encodeSignedChange (s: SignedChange): Uint8Array {
  const out = new Uint8Array(4 + s.change.length + s.signature.length)
  new DataView(out.buffer).setUint32(0, s.change.length)
  out.set(s.change, 4)
  out.set(s.signature, 4 + s.change.length)
  return out
}

export function decodeSignedChange (bytes: Uint8Array): SignedChange {
  if (bytes.length < 4 + 64) throw new InvalidChangeError('signed change too short')
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0)
  if (bytes.length !== 4 + len + 64) throw new InvalidChangeError('signed change has a bad length')
  return { change: bytes.slice(4, 4 + len), signature: bytes.slice(4 + len) }
}
