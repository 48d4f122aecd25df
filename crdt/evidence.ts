/**
 * Equivocation evidence: two changes signed by the same author with the same sequence number and
 * different content. Anyone can check it from the two signed changes alone, so it travels between
 * hosts (sync, crdt/sync.ts) and convinces every host, whatever it held before: the author's feed
 * is cut before that sequence number everywhere (crdt/store.ts), and the fold treats the author
 * as expelled from there on. The evidence names the author, never the host that relayed a fork.
 */
import { createHash } from 'node:crypto'
import { decodeSignedChange, encodeSignedChange, verifyChange, InvalidChangeError, type SignedChange, type VerifiedChange } from './signed-changes.ts'

export interface Evidence {
  author: string
  seq: number
  /** The two forks, ordered by hash. */
  changes: [VerifiedChange, VerifiedChange]
  /** sha256 of the two hashes: one id for the same pair, however it was found. */
  id: string
}

export function evidenceId (hashA: string, hashB: string): string {
  const [x, y] = [hashA, hashB].sort()
  return createHash('sha256').update(`${x}:${y}`).digest('hex')
}

/** Evidence from two verified changes; undefined when they are not an equivocation. */
export function makeEvidence (a: VerifiedChange, b: VerifiedChange): Evidence | undefined {
  if (a.actor !== b.actor || a.seq !== b.seq || a.hash === b.hash) return undefined
  const pair = (a.hash < b.hash ? [a, b] : [b, a]) as [VerifiedChange, VerifiedChange]
  return { author: a.author, seq: a.seq, changes: pair, id: evidenceId(a.hash, b.hash) }
}

/** u32 length of the first signed change | first | second. */
export function encodeEvidence (e: Evidence): Uint8Array {
  const a = encodeSignedChange(e.changes[0])
  const b = encodeSignedChange(e.changes[1])
  const out = new Uint8Array(4 + a.length + b.length)
  new DataView(out.buffer).setUint32(0, a.length)
  out.set(a, 4)
  out.set(b, 4 + a.length)
  return out
}

/** Decodes and checks evidence received from anyone. Throws InvalidChangeError when it proves nothing. */
export async function openEvidence (bytes: Uint8Array): Promise<Evidence> {
  if (bytes.length < 8) throw new InvalidChangeError('evidence too short')
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0)
  if (4 + len > bytes.length) throw new InvalidChangeError('evidence has a bad length')
  const a: SignedChange = decodeSignedChange(bytes.subarray(4, 4 + len))
  const b: SignedChange = decodeSignedChange(bytes.subarray(4 + len))
  const e = makeEvidence(await verifyChange(a), await verifyChange(b))
  if (e === undefined) throw new InvalidChangeError('evidence does not show two different changes with one sequence number')
  return e
}
