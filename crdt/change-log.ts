/**
 * Append-only, crash-safe log of signed changes: the durable form of the replicated state and its
 * audit history. Appends are batched into one synchronous-data write (O_DSYNC: write + fdatasync
 * in one call; group commit); `append` resolves only once its record is durable.
 *
 * File format 2 (all integers big-endian):
 *
 *   file header (16)    `PCLOG\0` | u16 version (2) | u32 salt | u32 crc32(the 12 bytes before)
 *   record (16 + n)     u32 MAGIC | u32 n | u32 crc32(payload) | u32 check | payload (n bytes)
 *
 * Offsets (`ends`, `bytes`) count from the start of the file, header included: an empty log is 16
 * bytes. `lastChecksum` is crc32 of the last payload alone, as in format 1.
 *
 * `check` is crc32 of the record's first 12 bytes, seeded with the file's random `salt`. It makes a
 * record header self-checking, so after a corrupt stretch open can re-synchronise: it looks for the
 * next MAGIC whose check holds, in linear time (each candidate costs 12 bytes of crc; only a valid
 * header leads to a payload crc, and valid headers do not overlap). The salt is why a resync cannot
 * land on a record smuggled inside another record's payload (a peer's change, say): a forger does
 * not know this file's salt. A record whose header holds but whose payload does not is skipped as
 * a whole, since its header says where the next record starts.
 *
 * On open, corrupt stretches with intact records after them are skipped, and the file is rewritten
 * once without them (crash-safely), so the changes they held are lost here and come back from
 * peers that hold them. A corrupt or torn tail (a `kill -9` mid-write) is cut off. A file of
 * another format (format 1 had no header) is never misread: open throws.
 *
 * @example
 * const { log, records } = await ChangeLog.open(join(dir, 'changes.log'), logger)
 * for (const r of records) replay(r)
 * await log.append(encodeSignedChange(signed))
 */
import { constants } from 'node:fs'
import { open, readFile, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { crc32 } from 'node:zlib'
import { writeFileAtomic } from '../node/files.ts'
import type { Logger } from '../node/log.ts'

export const FORMAT_VERSION = 2
const FILE_MAGIC = Buffer.from('PCLOG\0', 'latin1')
/** Size of the file header: an empty log is this many bytes long. */
export const FILE_HEADER = 16
/** Arbitrary and not ASCII, so text in payloads rarely looks like a record start. */
const RECORD_MAGIC = 0x8c1a6e53
const MAGIC_BYTES = Buffer.from([0x8c, 0x1a, 0x6e, 0x53])
const RECORD_HEADER = 16
/** No single change is anywhere near this; a bigger length means a corrupt header. */
export const MAX_RECORD = 64 * 1024 * 1024

export interface OpenedLog {
  log: ChangeLog
  /** Views into one buffer holding the whole log (no copy per record). */
  records: Uint8Array[]
  /** Byte offset just past each record in the file as open left it: where a snapshot covering it ends (crdt/snapshot.ts). */
  ends: number[]
  /** Bytes cut off the end because they were torn or corrupt. */
  truncated: number
  /** Corrupt stretches before intact records, at offsets in the file as found; the file is rewritten without them. */
  skipped: Array<{ offset: number, bytes: number }>
}

export class ChangeLogError extends Error {
  override name = 'ChangeLogError'
}

/** The file is a change log of another format version (1: headerless, before format 2). */
export class ChangeLogVersionError extends ChangeLogError {
  override name = 'ChangeLogVersionError'
  readonly version: number
  constructor (message: string, version: number) {
    super(message)
    this.version = version
  }
}

/** The file does not start with a valid change log header. */
export class ChangeLogHeaderError extends ChangeLogError {
  override name = 'ChangeLogHeaderError'
}

interface Scan {
  records: Uint8Array[]
  /** Offset just past each record, in the scanned buffer. */
  ends: number[]
  skipped: Array<{ offset: number, bytes: number }>
  /** Just past the last intact record (the file header when there is none). */
  end: number
}

export class ChangeLog {
  private readonly fh: FileHandle
  private readonly salt: number
  private size: number
  private count: number
  private lastSum: number
  private queue: Array<{ bytes: Uint8Array, done: () => void, fail: (e: Error) => void }> = []
  private flushing: Promise<void> | undefined
  private closed = false

  private constructor (fh: FileHandle, salt: number, size: number, count: number, lastSum: number) {
    this.fh = fh
    this.salt = salt
    this.size = size
    this.count = count
    this.lastSum = lastSum
  }

  /** Throws a ChangeLogError for a file of another format or with a corrupt header; never misreads one. */
  static async open (path: string, log?: Logger): Promise<OpenedLog> {
    let data: Buffer = await readFile(path).catch((err: any) => {
      if (err.code === 'ENOENT') return Buffer.alloc(0)
      throw err
    })
    if (data.length === 0) {
      // Written whole or not at all, so a file never holds half a header.
      data = fileHeader(randomBytes(4).readUInt32BE(0))
      await writeFileAtomic(path, data, 0o600, tmpPath(path))
    }
    const salt = readHeader(path, data)
    const scan = scanRecords(data, salt)
    let { records, ends } = scan
    const truncated = data.length - scan.end
    if (scan.skipped.length > 0) {
      const bytes = scan.skipped.reduce((n, s) => n + s.bytes, 0)
      // A region is at least one record; how many more a corrupt header hid is unknowable.
      log?.warn('skipped corrupt records in the middle of the change log (at least one per region); their changes come back from peers that hold them', {
        path, regions: scan.skipped.length, bytes, kept: records.length, tornTail: truncated
      })
      // Once, so later opens (and snapshot offsets) see a clean file; this also drops the tail.
      ;({ data, records, ends } = compact(data, scan))
      await writeFileAtomic(path, data, 0o600, tmpPath(path))
    }
    // O_DSYNC: each write returns once durable, as write + fdatasync would, in one system call
    // (and one trip through libuv's thread pool instead of two). No O_CREAT: the header is there.
    const fh = await open(path, constants.O_RDWR | constants.O_APPEND | constants.O_DSYNC)
    if (truncated > 0 && scan.skipped.length === 0) {
      log?.warn('cut a torn record off the end of the change log (the daemon stopped mid-write)', { path, bytes: truncated })
      await fh.truncate(scan.end)
      await fh.sync()
    }
    const size = ends.at(-1) ?? FILE_HEADER
    const last = records.at(-1)
    const lastSum = last === undefined ? 0 : crc32(last)
    return { log: new ChangeLog(fh, salt, size, records.length, lastSum), records, ends, truncated, skipped: scan.skipped }
  }

  /** Durable bytes: the file header and whole records. */
  get bytes (): number { return this.size }
  /** Durable records. */
  get records (): number { return this.count }
  /** crc32 of the last durable record's payload (0 for an empty log). */
  get lastChecksum (): number { return this.lastSum }

  /** Resolves when the record is on disk (the file is O_DSYNC). */
  async append (payload: Uint8Array): Promise<void> {
    if (this.closed) throw new Error('change log is closed')
    // Open would take a longer record for a corrupt one and drop it.
    if (payload.length > MAX_RECORD) throw new ChangeLogError(`change log record of ${payload.length} bytes is over the limit of ${MAX_RECORD}`)
    const p = new Promise<void>((resolve, reject) => this.queue.push({ bytes: payload, done: resolve, fail: reject }))
    this.flushing ??= this.flush()
    return await p
  }

  /** Resolves once every record appended so far has been written (or has failed). */
  async idle (): Promise<void> {
    while (this.flushing !== undefined) await this.flushing
  }

  private async flush (): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue
        this.queue = []
        // One buffer for the whole batch, headers written in place (one write, one fdatasync).
        let total = 0
        for (const { bytes } of batch) total += RECORD_HEADER + bytes.length
        const buf = Buffer.allocUnsafe(total)
        let off = 0
        let lastSum = this.lastSum
        for (const { bytes } of batch) {
          lastSum = crc32(bytes)
          writeRecordHeader(buf, off, bytes.length, lastSum, this.salt)
          buf.set(bytes, off + RECORD_HEADER)
          off += RECORD_HEADER + bytes.length
        }
        try {
          await this.fh.write(buf, 0, buf.length)
          this.size += buf.length
          this.count += batch.length
          this.lastSum = lastSum
          for (const item of batch) item.done()
        } catch (err: any) {
          // A partial write would leave a torn record in the middle of later ones: cut it.
          await this.fh.truncate(this.size).catch(() => {})
          for (const item of batch) item.fail(err)
        }
      }
    } finally {
      this.flushing = undefined
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.flushing
    await this.fh.close()
  }
}

/** A fixed name, so a rewrite killed midway leaves one stale file that the next one overwrites. */
function tmpPath (path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp`)
}

function fileHeader (salt: number): Buffer {
  const h = Buffer.alloc(FILE_HEADER)
  FILE_MAGIC.copy(h, 0)
  h.writeUInt16BE(FORMAT_VERSION, 6)
  h.writeUInt32BE(salt, 8)
  h.writeUInt32BE(crc32(h.subarray(0, 12)), 12)
  return h
}

/** The file's salt, or a ChangeLogError saying why this file cannot be read. */
function readHeader (path: string, data: Buffer): number {
  const away = 'move the state directory away and join the mesh again'
  if (data.length >= FILE_MAGIC.length && data.subarray(0, FILE_MAGIC.length).equals(FILE_MAGIC)) {
    const version = data.length >= 8 ? data.readUInt16BE(6) : -1
    if (version !== FORMAT_VERSION && version !== -1) {
      throw new ChangeLogVersionError(`${path} is a change log of format ${version}, which this version of picocloud cannot read (it reads format ${FORMAT_VERSION}): run a picocloud that reads it, or ${away}`, version)
    }
    if (data.length >= FILE_HEADER && crc32(data.subarray(0, 12)) === data.readUInt32BE(12)) return data.readUInt32BE(8)
    throw new ChangeLogHeaderError(`${path} has a corrupt change log header; this version cannot read it: ${away}`)
  }
  if (looksLikeFormat1(data)) {
    throw new ChangeLogVersionError(`${path} was written by an older picocloud (change log format 1); this version cannot read it: ${away}`, 1)
  }
  throw new ChangeLogHeaderError(`${path} is not a picocloud change log (no PCLOG header, or a corrupt one); this version cannot read it: ${away}`)
}

/** Format 1 had no header: its first record was `u32 length | u32 crc32(payload) | payload`. */
function looksLikeFormat1 (data: Buffer): boolean {
  if (data.length < 8) return false
  const len = data.readUInt32BE(0)
  return len <= MAX_RECORD && 8 + len <= data.length && crc32(data.subarray(8, 8 + len)) === data.readUInt32BE(4)
}

function writeRecordHeader (buf: Buffer, off: number, length: number, sum: number, salt: number): void {
  buf.writeUInt32BE(RECORD_MAGIC, off)
  buf.writeUInt32BE(length, off + 4)
  buf.writeUInt32BE(sum, off + 8)
  buf.writeUInt32BE(crc32(buf.subarray(off, off + 12), salt), off + 12)
}

/** The payload length of an intact record header at `off` whose payload fits in the file, else -1. */
function headerAt (data: Buffer, off: number, salt: number): number {
  if (off + RECORD_HEADER > data.length || data.readUInt32BE(off) !== RECORD_MAGIC) return -1
  const len = data.readUInt32BE(off + 4)
  if (len > MAX_RECORD || off + RECORD_HEADER + len > data.length) return -1
  return crc32(data.subarray(off, off + 12), salt) === data.readUInt32BE(off + 12) ? len : -1
}

/**
 * Walks the records, skipping corrupt ones. Linear: a position that is not an intact header is left
 * for the next MAGIC after it (indexOf), and an intact header jumps past its payload either way.
 */
function scanRecords (data: Buffer, salt: number): Scan {
  const records: Uint8Array[] = []
  const ends: number[] = []
  const skipped: Array<{ offset: number, bytes: number }> = []
  // Corrupt stretches since the last intact record: skipped if one follows, else the tail.
  let pending: Array<{ offset: number, bytes: number }> = []
  let badFrom = -1
  let end = FILE_HEADER
  let off = FILE_HEADER
  while (off < data.length) {
    const len = headerAt(data, off, salt)
    if (len < 0) {
      if (badFrom < 0) badFrom = off
      const next = data.indexOf(MAGIC_BYTES, off + 1)
      if (next < 0) break
      off = next
      continue
    }
    if (badFrom >= 0) { pending.push({ offset: badFrom, bytes: off - badFrom }); badFrom = -1 }
    const payload = data.subarray(off + RECORD_HEADER, off + RECORD_HEADER + len)
    const next = off + RECORD_HEADER + len
    if (crc32(payload) === data.readUInt32BE(off + 8)) {
      for (const p of pending) skipped.push(p)
      pending = []
      records.push(payload)
      ends.push(next)
      end = next
    } else {
      pending.push({ offset: off, bytes: next - off })
    }
    off = next
  }
  return { records, ends, skipped, end }
}

/** The file without its skipped stretches and tail: header and intact records, records as views into it. */
function compact (data: Buffer, scan: Scan): { data: Buffer, records: Uint8Array[], ends: number[] } {
  let size = FILE_HEADER
  for (const r of scan.records) size += RECORD_HEADER + r.length
  const out = Buffer.allocUnsafe(size)
  data.copy(out, 0, 0, FILE_HEADER)
  const records: Uint8Array[] = []
  const ends: number[] = []
  let off = FILE_HEADER
  for (let i = 0; i < scan.records.length; i++) {
    const len = scan.records[i].length
    const from = scan.ends[i] - RECORD_HEADER - len
    data.copy(out, off, from, scan.ends[i])
    records.push(out.subarray(off + RECORD_HEADER, off + RECORD_HEADER + len))
    off += RECORD_HEADER + len
    ends.push(off)
  }
  return { data: out, records, ends }
}
