/**
 * Snapshots of the replicated state: every feed saved (`A.save`) with its signatures by sequence
 * number, plus the equivocation evidence, tied to the position of the change log they cover, so a
 * restart loads the snapshot and applies only the log records after it instead of replaying the
 * whole log. The change log stays the source of truth and the audit history; a snapshot is a cache
 * of it: one that is missing, corrupt, of another format or not matching the log is ignored and
 * the log is replayed.
 *
 * File layout: magic (8) | u32 header length | header (JSON) | each feed's document | each feed's
 * signatures (64 bytes per change, in sequence order) | each evidence (u32 length, bytes) |
 * u32 crc32 of everything before it.
 */
import { open, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import * as A from '@automerge/automerge'
import { syncDir, writeFileAtomic } from '../node/files.ts'
import type { Feed } from './feed.ts'
import { encodeEvidence, type Evidence } from './evidence.ts'

export const SNAPSHOT_FILE = 'state.snapshot'
/** Bump the last byte when the layout changes: an older snapshot is then ignored, never misread. */
const MAGIC = Buffer.from('PCSNAP\0\x02', 'latin1')
const SIGNATURE = 64

export interface SnapshotFeed {
  author: string
  /** `A.save` of the feed. */
  doc: Uint8Array
  /** One signature per change, in sequence order. */
  signatures: Uint8Array[]
  cut?: number
}

/** The stretch of the change log a snapshot covers: its first `records` records, ending at `bytes`. */
export interface LogPosition {
  bytes: number
  records: number
  /** crc32 of the payload of the last covered record (0 when none): ties it to this very log. */
  lastChecksum: number
}

export interface Snapshot {
  log: LogPosition
  feeds: SnapshotFeed[]
  /** Encoded evidence (crdt/evidence.ts). */
  evidence: Uint8Array[]
}

interface Header extends LogPosition { feeds: Array<{ author: string, docBytes: number, changes: number, cut?: number }>, evidence: number }

export class SnapshotError extends Error {
  override name = 'SnapshotError'
}

/** A snapshot of these feeds and evidence, covering the log up to `log`. */
export function snapshotOf (log: LogPosition, feeds: Iterable<Feed>, evidence: Iterable<Evidence>): Snapshot {
  return {
    log,
    feeds: [...feeds].filter(f => f.seq > 0 || f.cut !== undefined).map(f => ({
      author: f.author,
      doc: A.save(f.doc),
      signatures: Array.from({ length: f.seq }, (_, i) => f.signatureAt(i + 1) as Uint8Array),
      ...(f.cut === undefined ? {} : { cut: f.cut })
    })),
    evidence: [...evidence].map(e => encodeEvidence(e))
  }
}

export function encodeSnapshot (s: Snapshot): Buffer {
  const header: Header = {
    ...s.log,
    feeds: s.feeds.map(f => ({ author: f.author, docBytes: f.doc.length, changes: f.signatures.length, ...(f.cut === undefined ? {} : { cut: f.cut }) })),
    evidence: s.evidence.length
  }
  const head = Buffer.from(JSON.stringify(header))
  let size = MAGIC.length + 4 + head.length + 4
  for (const f of s.feeds) size += f.doc.length + f.signatures.length * SIGNATURE
  for (const e of s.evidence) size += 4 + e.length
  const out = Buffer.allocUnsafe(size)
  let off = MAGIC.copy(out, 0)
  off = out.writeUInt32BE(head.length, off)
  off += head.copy(out, off)
  for (const f of s.feeds) { out.set(f.doc, off); off += f.doc.length }
  for (const f of s.feeds) {
    for (const sig of f.signatures) {
      if (sig.length !== SIGNATURE) throw new SnapshotError(`bad signature in the feed of ${f.author}`)
      out.set(sig, off); off += SIGNATURE
    }
  }
  for (const e of s.evidence) { off = out.writeUInt32BE(e.length, off); out.set(e, off); off += e.length }
  out.writeUInt32BE(crc32(out.subarray(0, off)), off)
  return out
}

/** Throws SnapshotError on anything but an intact snapshot of this format. */
export function decodeSnapshot (bytes: Buffer): Snapshot {
  if (bytes.length < MAGIC.length + 8 || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw new SnapshotError('not a snapshot of this format')
  const end = bytes.length - 4
  if (crc32(bytes.subarray(0, end)) !== bytes.readUInt32BE(end)) throw new SnapshotError('checksum mismatch')
  const headLen = bytes.readUInt32BE(MAGIC.length)
  const headStart = MAGIC.length + 4
  let h: Header
  try {
    h = JSON.parse(bytes.toString('utf8', headStart, headStart + headLen))
  } catch {
    throw new SnapshotError('unreadable header')
  }
  let off = headStart + headLen
  const docs: Uint8Array[] = []
  for (const f of h.feeds) {
    if (off + f.docBytes > end) throw new SnapshotError('sizes do not add up')
    docs.push(bytes.subarray(off, off + f.docBytes)); off += f.docBytes
  }
  const feeds: SnapshotFeed[] = []
  for (let i = 0; i < h.feeds.length; i++) {
    const f = h.feeds[i]
    if (off + f.changes * SIGNATURE > end) throw new SnapshotError('sizes do not add up')
    // A copy, so the signatures kept in memory do not pin the whole file.
    const sigs = Buffer.from(bytes.subarray(off, off + f.changes * SIGNATURE))
    const signatures: Uint8Array[] = []
    for (let j = 0; j < f.changes; j++) signatures.push(new Uint8Array(sigs.buffer, sigs.byteOffset + j * SIGNATURE, SIGNATURE))
    off += f.changes * SIGNATURE
    feeds.push({ author: f.author, doc: docs[i], signatures, ...(f.cut === undefined ? {} : { cut: f.cut }) })
  }
  const evidence: Uint8Array[] = []
  for (let i = 0; i < h.evidence; i++) {
    if (off + 4 > end) throw new SnapshotError('sizes do not add up')
    const len = bytes.readUInt32BE(off); off += 4
    if (off + len > end) throw new SnapshotError('sizes do not add up')
    evidence.push(bytes.subarray(off, off + len)); off += len
  }
  if (off !== end) throw new SnapshotError('sizes do not add up')
  return { log: { bytes: h.bytes, records: h.records, lastChecksum: h.lastChecksum }, feeds, evidence }
}

/**
 * Whether a snapshot covers a prefix of this log: the log has a record boundary at the
 * snapshot's offset, after the same number of records, and the record there is the same one.
 * A log cut shorter than the snapshot (a torn tail) fails this.
 */
export function coversPrefix (pos: LogPosition, records: Uint8Array[], ends: number[]): boolean {
  if (pos.records === 0) return true
  if (pos.records > records.length || ends[pos.records - 1] !== pos.bytes) return false
  return crc32(records[pos.records - 1]) === pos.lastChecksum
}

/** The snapshot file of a state dir, or undefined when there is none. */
export async function readSnapshotFile (dir: string): Promise<Buffer | undefined> {
  const fh = await open(join(dir, SNAPSHOT_FILE), 'r').catch((err: any) => {
    if (err.code === 'ENOENT') return undefined
    throw err
  })
  if (fh === undefined) return undefined
  try {
    return await fh.readFile()
  } finally {
    await fh.close()
  }
}

/**
 * Replaces the snapshot crash-safely: a temp file written and fsync'd, renamed over the old one,
 * then the directory fsync'd so the rename itself is durable. A crash at any point leaves the old
 * snapshot or the new one (and maybe a stale temp file, which the next write truncates).
 */
export async function writeSnapshotFile (dir: string, bytes: Uint8Array): Promise<void> {
  const path = join(dir, SNAPSHOT_FILE)
  // One fixed temp file: a snapshot killed midway leaves 5 MiB behind, overwritten next time.
  await writeFileAtomic(path, bytes, 0o600, `${path}.tmp`)
}

export async function removeSnapshotFile (dir: string): Promise<void> {
  await unlink(join(dir, SNAPSHOT_FILE)).catch((err: any) => { if (err.code !== 'ENOENT') throw err })
  await syncDir(dir)
}
