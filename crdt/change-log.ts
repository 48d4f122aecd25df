/**
 * Append-only, crash-safe log of signed changes: the durable form of the replicated state and its
 * audit history. Each record is `u32 length | u32 crc32 | payload`. Appends are batched into one
 * synchronous-data write (O_DSYNC: write + fdatasync in one call; group commit); `append`
 * resolves only once its record is durable. On open, a
 * torn or corrupt tail (a `kill -9` mid-write) is cut off, so at most the record being written is
 * lost and the rest always loads.
 */
import { constants } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { crc32 } from 'node:zlib'
import type { Logger } from '../node/log.ts'

const HEADER = 8
/** No single change is anywhere near this; a bigger length means a corrupt header. */
const MAX_RECORD = 64 * 1024 * 1024

export interface OpenedLog {
  log: ChangeLog
  /** Views into one buffer holding the whole log (no copy per record). */
  records: Uint8Array[]
  /** Byte offset just past each record: where a snapshot covering it ends (crdt/snapshot.ts). */
  ends: number[]
  /** Bytes cut off the end because they were torn or corrupt. */
  truncated: number
}

export class ChangeLog {
  private readonly fh: FileHandle
  private size: number
  private count: number
  private lastSum: number
  private queue: Array<{ bytes: Uint8Array, done: () => void, fail: (e: Error) => void }> = []
  private flushing: Promise<void> | undefined
  private closed = false

  private constructor (fh: FileHandle, size: number, count: number, lastSum: number) {
    this.fh = fh
    this.size = size
    this.count = count
    this.lastSum = lastSum
  }

  static async open (path: string, log?: Logger): Promise<OpenedLog> {
    // O_DSYNC: each write returns once durable, as write + fdatasync would, in one system call
    // (and one trip through libuv's thread pool instead of two).
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_APPEND | constants.O_DSYNC, 0o600)
    const data = await fh.readFile()
    const records: Uint8Array[] = []
    const ends: number[] = []
    let off = 0
    let lastSum = 0
    while (off + HEADER <= data.length) {
      const len = data.readUInt32BE(off)
      const sum = data.readUInt32BE(off + 4)
      if (len > MAX_RECORD || off + HEADER + len > data.length) break
      const payload = data.subarray(off + HEADER, off + HEADER + len)
      if (crc32(payload) !== sum) break
      records.push(payload)
      off += HEADER + len
      ends.push(off)
      lastSum = sum
    }
    const truncated = data.length - off
    if (truncated > 0) {
      log?.warn('cut a torn record off the end of the change log (the daemon stopped mid-write)', { path, bytes: truncated })
      await fh.truncate(off)
      await fh.sync()
    }
    return { log: new ChangeLog(fh, off, records.length, lastSum), records, ends, truncated }
  }

  /** Durable bytes (whole records only). */
  get bytes (): number { return this.size }
  /** Durable records. */
  get records (): number { return this.count }
  /** crc32 of the last durable record's payload (0 for an empty log). */
  get lastChecksum (): number { return this.lastSum }

  /** Resolves when the record is on disk (the file is O_DSYNC). */
  async append (payload: Uint8Array): Promise<void> {
    if (this.closed) throw new Error('change log is closed')
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
        for (const { bytes } of batch) total += HEADER + bytes.length
        const buf = Buffer.allocUnsafe(total)
        let off = 0
        let lastSum = this.lastSum
        for (const { bytes } of batch) {
          lastSum = crc32(bytes)
          buf.writeUInt32BE(bytes.length, off)
          buf.writeUInt32BE(lastSum, off + 4)
          buf.set(bytes, off + HEADER)
          off += HEADER + bytes.length
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
