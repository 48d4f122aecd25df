/**
 * Snapshots of the replicated state: `A.save(doc)` plus the store's index of signed changes
 * (hash → signature, actor:seq → hash), tied to the position of the change log they cover, so a
 * restart loads the snapshot and applies only the log records after it instead of replaying
 * the whole log. The change log stays the source of truth and the audit history (a saved
 * Automerge document keeps every change); a snapshot is a cache of it: one that is missing,
 * corrupt, of another format or not matching the log is ignored and the log is replayed.
 *
 * File layout: magic (8) | u32 header length | header (JSON) | document | index entries |
 * u32 crc32 of everything before it. An index entry is hash (32) | signature (64) |
 * u32 actor number (into header.actors) | u32 seq.
 */
import { open, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { syncDir, writeFileAtomic } from '../node/files.ts'

export const SNAPSHOT_FILE = 'state.snapshot'
/** Bump the last byte when the layout changes: an older snapshot is then ignored, never misread. */
const MAGIC = Buffer.from('PCSNAP\0\x01', 'latin1')
const HASH = 32
const SIGNATURE = 64
const ENTRY = HASH + SIGNATURE + 8

export interface IndexEntry {
  hash: string
  signature: Uint8Array
  actor: string
  seq: number
}

/** The stretch of the change log a snapshot covers: its first `records` records, `bytes` long. */
export interface LogPosition {
  bytes: number
  records: number
  /** crc32 of the payload of the last covered record (0 when none): ties it to this very log. */
  lastChecksum: number
}

export interface Snapshot {
  log: LogPosition
  /** Heads of `doc`, checked again after loading it. */
  heads: string[]
  /** `A.save(doc)` */
  doc: Uint8Array
  entries: IndexEntry[]
}

interface Header extends LogPosition { heads: string[], docBytes: number, actors: string[], entries: number }

export class SnapshotError extends Error {
  override name = 'SnapshotError'
}

export function encodeSnapshot (s: Snapshot): Buffer {
  const actors: string[] = []
  const actorNo = new Map<string, number>()
  for (const e of s.entries) {
    if (!actorNo.has(e.actor)) { actorNo.set(e.actor, actors.length); actors.push(e.actor) }
  }
  const header: Header = { ...s.log, heads: s.heads, docBytes: s.doc.length, actors, entries: s.entries.length }
  const head = Buffer.from(JSON.stringify(header))
  const size = MAGIC.length + 4 + head.length + s.doc.length + s.entries.length * ENTRY + 4
  const out = Buffer.allocUnsafe(size)
  let off = MAGIC.copy(out, 0)
  off = out.writeUInt32BE(head.length, off)
  off += head.copy(out, off)
  out.set(s.doc, off); off += s.doc.length
  for (const e of s.entries) {
    if (e.signature.length !== SIGNATURE || out.write(e.hash, off, HASH, 'hex') !== HASH) throw new SnapshotError(`bad index entry ${e.hash}`)
    out.set(e.signature, off + HASH)
    out.writeUInt32BE(actorNo.get(e.actor) as number, off + HASH + SIGNATURE)
    out.writeUInt32BE(e.seq, off + HASH + SIGNATURE + 4)
    off += ENTRY
  }
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
  const docStart = headStart + headLen
  const entriesStart = docStart + h.docBytes
  if (entriesStart + h.entries * ENTRY !== end) throw new SnapshotError('sizes do not add up')
  const entries: IndexEntry[] = new Array(h.entries)
  // A copy of the index alone, so the signatures kept in memory do not pin the whole file.
  const index = Buffer.from(bytes.subarray(entriesStart, end))
  for (let i = 0, off = 0; i < h.entries; i++, off += ENTRY) {
    const actor = h.actors[index.readUInt32BE(off + HASH + SIGNATURE)]
    if (actor === undefined) throw new SnapshotError('unknown actor in the index')
    entries[i] = {
      hash: index.toString('hex', off, off + HASH),
      signature: new Uint8Array(index.buffer, index.byteOffset + off + HASH, SIGNATURE),
      actor,
      seq: index.readUInt32BE(off + HASH + SIGNATURE + 4)
    }
  }
  return {
    log: { bytes: h.bytes, records: h.records, lastChecksum: h.lastChecksum },
    heads: h.heads,
    doc: bytes.subarray(docStart, entriesStart),
    entries
  }
}

/**
 * Whether a snapshot covers a prefix of this log: the log has a record boundary at the
 * snapshot's offset, after the same number of records, and the record there is the same one.
 * A log cut shorter than the snapshot (a torn tail) fails this.
 */
export function coversPrefix (pos: LogPosition, records: Uint8Array[], ends: number[]): boolean {
  if (pos.records === 0) return pos.bytes === 0
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
