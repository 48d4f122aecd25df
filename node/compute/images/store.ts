/**
 * Content-addressed image store: `<stateDir>/images/sha256/<hex>` holds the bytes whose sha256 is
 * `<hex>`, `<hex>.json` its metadata. Only raw and qcow2 images are accepted (qcow2 without a
 * backing file or external data file: an image must never make QEMU open another host file).
 *
 * Writes go to a temporary file while hashing; the file is fsynced, its hash verified and only
 * then renamed into place, so a truncated or corrupted transfer never enters the store.
 * Downloads can be resumed: `partial(hash)` tells how many bytes are already there; the transfer
 * (the libp2p protocol, built on top) appends from that offset and `finalize` verifies the hash.
 *
 * @example
 * const store = new ImageStore({ stateDir: '/var/lib/picocloud' })
 * const info = await store.add('/tmp/debian.qcow2', { expectedSha256: hash })
 * const p = await store.partial(hash)   // resume: p.offset bytes are already there
 * await p.write(chunk); const done = await p.finalize()
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import type { DiskFormat } from '../hypervisor/types.ts'

export interface ImageInfo {
  sha256: string
  format: DiskFormat
  size: number
  /** ISO time it entered the store. */
  added: string
  /** A human label, e.g. the file name it was added from. */
  name?: string
}

export interface AddOptions {
  /** The add fails with IMAGE_HASH_MISMATCH unless the content hashes to this. */
  expectedSha256?: string
  /** Declared format; must match what the content is. Default: detected. */
  format?: DiskFormat
  name?: string
}

export interface ImageStoreInit {
  stateDir: string
  /** Largest image accepted. @default 64 GiB */
  maxBytes?: number
}

/** A resumable download of one image. */
export interface PartialImage {
  sha256: string
  /** Bytes already received: resume the transfer from here. */
  readonly offset: number
  /**
   * Appends the next bytes (at `offset`), one chunk or several in a row; they must not change
   * afterwards (they are written later).
   */
  write: (chunk: Uint8Array | Uint8Array[]) => Promise<void>
  /** Verifies the hash of everything received and moves it into the store. */
  finalize: (options?: { format?: DiskFormat, name?: string }) => Promise<ImageInfo>
  /** Closes the file; the bytes stay for a later resume. */
  close: () => Promise<void>
  /** Drops what was received. */
  discard: () => Promise<void>
}

export type ImageSource = string | AsyncIterable<Uint8Array>

const HEX = /^[0-9a-f]{64}$/

function checkHash (hash: string): void {
  if (!HEX.test(hash)) throw new PicocloudError(ErrorCode.BadImage, `not a sha256 image id (64 lower-case hex digits): ${JSON.stringify(hash)}`)
}

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb])
/** Formats QEMU knows that the store refuses, by their magic bytes (offset, bytes). */
const REFUSED: Array<{ name: string, offset: number, magic: Buffer }> = [
  { name: 'vmdk', offset: 0, magic: Buffer.from('KDMV') },
  { name: 'vmdk (descriptor)', offset: 0, magic: Buffer.from('# Disk DescriptorFile') },
  { name: 'vhdx', offset: 0, magic: Buffer.from('vhdxfile') },
  { name: 'vdi', offset: 64, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
  { name: 'qed', offset: 0, magic: Buffer.from([0x51, 0x45, 0x44, 0x00]) },
  { name: 'luks', offset: 0, magic: Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) },
  { name: 'qcow (version 1)', offset: 0, magic: Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1]) }
]

/** The image's format from its first 512 bytes; throws BAD_IMAGE for formats the store refuses. */
export function detectFormat (head: Buffer): DiskFormat {
  for (const r of REFUSED) {
    if (head.length >= r.offset + r.magic.length && head.subarray(r.offset, r.offset + r.magic.length).equals(r.magic)) {
      throw new PicocloudError(ErrorCode.BadImage, `image format ${r.name} is not accepted (only raw and qcow2): convert it with \`qemu-img convert -O qcow2 IN OUT\``)
    }
  }
  if (head.length >= 4 && head.subarray(0, 4).equals(QCOW2_MAGIC)) {
    if (head.length < 80) throw new PicocloudError(ErrorCode.BadImage, 'truncated qcow2 header')
    const version = head.readUInt32BE(4)
    if (version !== 2 && version !== 3) throw new PicocloudError(ErrorCode.BadImage, `qcow2 version ${version} is not supported`)
    if (head.readBigUInt64BE(8) !== 0n) {
      throw new PicocloudError(ErrorCode.BadImage, 'qcow2 image has a backing file: not accepted (flatten it with `qemu-img convert -O qcow2 IN OUT`)')
    }
    if (version === 3 && (head.readBigUInt64BE(72) & 4n) !== 0n) {
      throw new PicocloudError(ErrorCode.BadImage, 'qcow2 image has an external data file: not accepted')
    }
    return 'qcow2'
  }
  return 'raw'
}

async function syncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try { await fh.sync() } finally { await fh.close() }
}

async function readHead (path: string): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.alloc(512)
    const { bytesRead } = await fh.read(buf, 0, 512, 0)
    return buf.subarray(0, bytesRead)
  } finally { await fh.close() }
}

export class ImageStore {
  readonly root: string
  readonly maxBytes: number
  readonly stateDir: string
  /** Bytes written into resumable downloads (fetched from peers) since start: a metric. */
  readonly stats = { downloadedBytes: 0 }

  constructor (init: ImageStoreInit) {
    this.stateDir = init.stateDir
    this.root = join(init.stateDir, 'images')
    this.maxBytes = init.maxBytes ?? 64 * 1024 ** 3
  }

  private dir (sub: 'sha256' | 'tmp' | 'partial'): string { return join(this.root, sub) }

  private async ensureDirs (): Promise<void> {
    // 0755: the images are not secret and libvirt's QEMU (another user) must reach them.
    for (const d of ['sha256', 'tmp', 'partial'] as const) await mkdir(this.dir(d), { recursive: true, mode: 0o755 })
  }

  /** Where the image with this hash lives (whether or not it is there). */
  path (hash: string): string {
    checkHash(hash)
    return join(this.dir('sha256'), hash)
  }

  async has (hash: string): Promise<boolean> {
    try { return (await stat(this.path(hash))).isFile() } catch { return false }
  }

  async info (hash: string): Promise<ImageInfo | undefined> {
    if (!(await this.has(hash))) return undefined
    try {
      return JSON.parse(await readFile(`${this.path(hash)}.json`, 'utf8')) as ImageInfo
    } catch {
      const st = await stat(this.path(hash))
      return { sha256: hash, format: detectFormat(await readHead(this.path(hash))), size: st.size, added: st.mtime.toISOString() }
    }
  }

  async list (): Promise<ImageInfo[]> {
    let names: string[]
    try { names = await readdir(this.dir('sha256')) } catch { return [] }
    const infos = await Promise.all(names.filter(n => HEX.test(n)).sort().map(async n => await this.info(n)))
    return infos.filter((i): i is ImageInfo => i !== undefined)
  }

  async remove (hash: string): Promise<void> {
    const p = this.path(hash)
    await rm(p, { force: true })
    await rm(`${p}.json`, { force: true })
  }

  /** Adds a file (by path) or a stream of bytes; returns the stored image's info. */
  async add (source: ImageSource, options: AddOptions = {}): Promise<ImageInfo> {
    if (options.expectedSha256 !== undefined) checkHash(options.expectedSha256)
    await this.ensureDirs()
    const tmp = join(this.dir('tmp'), `${Date.now()}-${randomBytes(6).toString('hex')}`)
    const fh = await open(tmp, 'wx', 0o644)
    let closed = false
    try {
      const h = createHash('sha256')
      let size = 0
      const input = typeof source === 'string' ? createReadStream(source) : source
      for await (const chunk of input) {
        size += chunk.length
        if (size > this.maxBytes) throw new PicocloudError(ErrorCode.BadImage, `image is larger than the limit of ${this.maxBytes} bytes`, 413)
        h.update(chunk)
        await fh.write(chunk)
      }
      await fh.sync()
      await fh.close()
      closed = true
      return await this.commit(tmp, h.digest('hex'), size, { ...options, name: options.name ?? (typeof source === 'string' ? source.split('/').pop() : undefined) })
    } finally {
      if (!closed) await fh.close().catch(() => {})
      await rm(tmp, { force: true })
    }
  }

  /** Verifies and moves a complete, fsynced file into the store. */
  private async commit (file: string, actual: string, size: number, options: AddOptions): Promise<ImageInfo> {
    if (options.expectedSha256 !== undefined && actual !== options.expectedSha256) {
      throw new PicocloudError(ErrorCode.ImageHashMismatch, `image content hashes to sha256 ${actual}, expected ${options.expectedSha256} (${size} bytes received: truncated or corrupted)`, 422)
    }
    if (size === 0) throw new PicocloudError(ErrorCode.BadImage, 'image is empty')
    const format = detectFormat(await readHead(file))
    if (options.format !== undefined && options.format !== format) {
      throw new PicocloudError(ErrorCode.BadImage, `image was declared ${options.format} but is ${format}`)
    }
    const existing = await this.info(actual)
    if (existing !== undefined) return existing
    const info: ImageInfo = { sha256: actual, format, size, added: new Date().toISOString() }
    if (options.name !== undefined) info.name = options.name
    const dest = this.path(actual)
    const metaTmp = `${file}.json`
    await writeFile(metaTmp, JSON.stringify(info) + '\n', { mode: 0o644 })
    await rename(metaTmp, `${dest}.json`)
    await rename(file, dest)
    await syncDir(this.dir('sha256'))
    return info
  }

  /** A resumable download of the image `hash`: continues where an earlier one stopped. */
  async partial (hash: string): Promise<PartialImage> {
    checkHash(hash)
    await this.ensureDirs()
    const file = join(this.dir('partial'), hash)
    let fh: FileHandle | undefined = await open(file, 'a', 0o644)
    let offset = (await fh.stat()).size
    // Hash as the bytes arrive (no second pass over the file); what an earlier attempt left is
    // hashed once, from the file, before the first new byte.
    const h = createHash('sha256')
    let hashed = 0
    const catchUp = async (): Promise<void> => {
      if (hashed < offset) for await (const c of createReadStream(file, { start: hashed, end: offset - 1 })) h.update(c as Buffer)
      hashed = offset
    }
    // File writes run behind, in order, while the caller decrypts and hashes the next bytes; a
    // few MiB may wait. The first failure fails every later call.
    let writing: Promise<void> = Promise.resolve()
    let queued = 0
    let failed: Error | undefined
    // Written bytes go to disk along the way (one datasync at a time, beside the writes), so the
    // fsync before the rename only has the tail left to flush.
    let unsynced = 0
    let syncing: Promise<void> | undefined
    const drain = async (): Promise<void> => { await writing; await syncing; if (failed !== undefined) throw failed }
    const store = this
    const closeFile = async (): Promise<void> => {
      if (fh === undefined) return
      const f = fh
      fh = undefined
      try { await drain(); await f.sync() } finally { await f.close() }
    }
    return {
      sha256: hash,
      get offset () { return offset },
      async write (chunkOrChunks) {
        if (fh === undefined) throw new PicocloudError(ErrorCode.Internal, 'partial image is closed', 500)
        if (failed !== undefined) throw failed
        const chunks = Array.isArray(chunkOrChunks) ? chunkOrChunks : [chunkOrChunks]
        const length = chunks.reduce((n, c) => n + c.length, 0)
        if (offset + length > store.maxBytes) throw new PicocloudError(ErrorCode.BadImage, `image is larger than the limit of ${store.maxBytes} bytes`, 413)
        await catchUp()
        for (const c of chunks) h.update(c)
        offset += length
        hashed = offset
        store.stats.downloadedBytes += length
        const f = fh
        queued += length
        writing = writing.then(async () => {
          if (failed !== undefined) return
          try {
            const { bytesWritten } = await f.writev(chunks)
            if (bytesWritten !== length) throw new PicocloudError(ErrorCode.Internal, `short write to ${file}`, 500)
            unsynced += length
            if (unsynced >= 32 * 1024 * 1024 && syncing === undefined) {
              unsynced = 0
              syncing = f.datasync().catch((err: Error) => { failed ??= err }).finally(() => { syncing = undefined })
            }
          } catch (err: any) { failed = err } finally { queued -= length }
        })
        // Back-pressure on the writes only: the datasync runs beside them, and waiting for it
        // here would stall the transfer whenever the disk is busy flushing.
        if (queued > 8 * 1024 * 1024) { await writing; if (failed !== undefined) throw failed }
      },
      async finalize (options = {}) {
        await closeFile()
        await catchUp()
        const actual = h.digest('hex')
        try {
          return await store.commit(file, actual, offset, { ...options, expectedSha256: hash })
        } finally {
          // A mismatch means the bytes are wrong, not short: resuming them cannot help.
          await rm(file, { force: true })
        }
      },
      close: closeFile,
      async discard () { await closeFile().catch(() => {}); await rm(file, { force: true }) }
    }
  }
}
