/**
 * Append-only, crash-safe log of signed changes: the durable form of the replicated state and its
 * audit history. Each record is `u32 length | u32 crc32 | payload`. Appends are batched into one
 * write + fdatasync (group commit); `append` resolves only once its record is durable. On open, a
 * torn or corrupt tail (a `kill -9` mid-write) is cut off, so at most the record being written is
 * lost and the rest always loads.
 */
import { open, type FileHandle } from 'node:fs/promises'
import { crc32 } from 'node:zlib'
import type { Logger } from '../node/log.ts'

const HEADER = 8
/** No single change is anywhere near this; a bigger length means a corrupt header. */
const MAX_RECORD = 64 * 1024 * 1024

export interface OpenedLog {
  log: ChangeLog
  records: Uint8Array[]
  /** Bytes cut off the end because they were torn or corrupt. */
  truncated: number
}

export class ChangeLog {
  private readonly fh: FileHandle
  private size: number
  private queue: Array<{ bytes: Uint8Array, done: () => void, fail: (e: Error) => void }> = []
  private flushing: Promise<void> | undefined
  private closed = false

  private constructor (fh: FileHandle, size: number) {
    this.fh = fh
    this.size = size
  }

  static async open (path: string, log?: Logger): Promise<OpenedLog> {
    const fh = await open(path, 'a+', 0o600)
    const data = await fh.readFile()
    const records: Uint8Array[] = []
    let off = 0
    while (off + HEADER <= data.length) {
      const len = data.readUInt32BE(off)
      const sum = data.readUInt32BE(off + 4)
      if (len > MAX_RECORD || off + HEADER + len > data.length) break
      const payload = data.subarray(off + HEADER, off + HEADER + len)
      if (crc32(payload) !== sum) break
      records.push(new Uint8Array(payload))
      off += HEADER + len
    }
    const truncated = data.length - off
    if (truncated > 0) {
      log?.warn('cut a torn record off the end of the change log (the daemon stopped mid-write)', { path, bytes: truncated })
      await fh.truncate(off)
      await fh.sync()
    }
    return { log: new ChangeLog(fh, off), records, truncated }
  }

  get bytes (): number { return this.size }

  /** Resolves when the record is on disk (fdatasync). */
  async append (payload: Uint8Array): Promise<void> {
    if (this.closed) throw new Error('change log is closed')
    const p = new Promise<void>((resolve, reject) => this.queue.push({ bytes: payload, done: resolve, fail: reject }))
    this.flushing ??= this.flush()
    return await p
  }

  private async flush (): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue
        this.queue = []
        const parts: Buffer[] = []
        for (const { bytes } of batch) {
          const header = Buffer.alloc(HEADER)
          header.writeUInt32BE(bytes.length, 0)
          header.writeUInt32BE(crc32(bytes), 4)
          parts.push(header, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
        }
        const buf = Buffer.concat(parts)
        try {
          await this.fh.write(buf, 0, buf.length)
          await this.fh.datasync()
          this.size += buf.length
          for (const item of batch) item.done()
        } catch (err: any) {
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
