/**
 * The bulk side channel for image bytes: a plain TCP connection to the serving host, encrypted and
 * authenticated with Node's native AES-256-GCM. libp2p (noise + yamux in JS) moves ~100–250 MiB/s
 * on one core; this moves what the disk, sha256 and AES-GCM can (several times more).
 *
 * It is negotiated over the authenticated libp2p image stream (node/compute/images/transfer.ts): the server hands
 * the requesting peer a one-time token and a fresh random key, valid for a few seconds and only
 * while that stream stays open. Whoever lacks the token gets the socket closed; whoever lacks the
 * key cannot read or alter a byte. The client still verifies the image's sha256 before it enters
 * the store, and falls back to the libp2p stream when this connection fails.
 *
 *   client → "pcb1" ‖ token (16 bytes)
 *   server → records: u32 BE length n ‖ ciphertext (n bytes) ‖ GCM tag (16 bytes)
 *            the record with n = 0 ends the transfer (so a cut connection never looks finished)
 *
 * Record i is sealed with nonce 0⁴ ‖ u64 BE i under the grant's own key: nonces never repeat.
 * The client side runs in a worker thread (node/compute/images/bulk-worker.ts, through BulkFetcher).
 */
import { createCipheriv, createDecipheriv, randomBytes, timingSafeEqual, type DecipherGCM } from 'node:crypto'
import { open } from 'node:fs/promises'
import { fork, type ChildProcess } from 'node:child_process'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { Worker } from 'node:worker_threads'
import type { Logger } from '../../log.ts'
import type { ImageInfo } from './store.ts'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'

export const BULK_MAGIC = Buffer.from('pcb1')
/**
 * Plaintext bytes per record sent. Large enough that per-record costs (cipher set-up, tag) vanish;
 * small enough that each record's fresh buffers are reused memory: with 1 MiB records every
 * buffer was new pages from the kernel, and 256 MiB went ~30% slower (bench: images).
 */
export const RECORD_BYTES = 256 * 1024
/** The largest record a receiver accepts (earlier versions sent 1 MiB records). */
export const MAX_RECORD_BYTES = 1024 * 1024
const TOKEN_BYTES = 16
const TAG_BYTES = 16
const HELLO_BYTES = BULK_MAGIC.length + TOKEN_BYTES
const CIPHER = 'aes-256-gcm'

/** What the server tells the client over the libp2p stream (base64 fields). */
export interface BulkOffer { port: number, token: string, key: string }

export function isBulkOffer (v: unknown): v is BulkOffer {
  const o = v as BulkOffer
  return typeof o === 'object' && o !== null && Number.isInteger(o.port) && o.port > 0 && o.port < 65536 &&
    typeof o.token === 'string' && Buffer.from(o.token, 'base64').length === TOKEN_BYTES &&
    typeof o.key === 'string' && Buffer.from(o.key, 'base64').length === 32
}

function nonce (counter: number): Buffer {
  const n = Buffer.alloc(12)
  n.writeUInt32BE(Math.floor(counter / 2 ** 32), 4)
  n.writeUInt32BE(counter >>> 0, 8)
  return n
}

/** One record, as the buffers to write: length, ciphertext, tag. */
export function sealRecord (key: Buffer, counter: number, plain: Uint8Array): Buffer[] {
  const c = createCipheriv(CIPHER, key, nonce(counter))
  const head = Buffer.alloc(4)
  head.writeUInt32BE(plain.length)
  const body = c.update(plain)
  c.final()
  return [head, body, c.getAuthTag()]
}

/**
 * Turns the byte stream of records back into plaintext, record by record, as bytes arrive in
 * chunks of any size. A record's plaintext comes out only once its tag has verified.
 */
export class RecordOpener {
  private readonly key: Buffer
  private counter = 0
  private pending: Buffer[] = []
  private pendingBytes = 0
  private body?: { left: number, decipher: DecipherGCM, out: Buffer[] }
  /** The end record has been seen: the transfer is complete. */
  ended = false

  constructor (key: Buffer) { this.key = key }

  /**
   * Feeds bytes; returns the plaintexts of the records they completed, each as the pieces it was
   * decrypted in (no copy into one buffer). Throws on bad bytes.
   */
  push (chunk: Buffer): Buffer[][] {
    const done: Buffer[][] = []
    let at = 0
    while (at < chunk.length) {
      if (this.ended) throw new Error('bytes after the end of the transfer')
      if (this.body === undefined) {
        at = this.take(chunk, at, 4)
        if (this.pendingBytes < 4) break
        const n = this.drain(4).readUInt32BE(0)
        if (n > MAX_RECORD_BYTES) throw new Error(`record of ${n} bytes is larger than ${MAX_RECORD_BYTES}`)
        this.body = { left: n, decipher: createDecipheriv(CIPHER, this.key, nonce(this.counter++)), out: [] }
      }
      const b = this.body
      if (b.left > 0) {
        const n = Math.min(b.left, chunk.length - at)
        b.out.push(b.decipher.update(chunk.subarray(at, at + n)))
        b.left -= n
        at += n
        if (b.left > 0) break
      }
      at = this.take(chunk, at, TAG_BYTES)
      if (this.pendingBytes < TAG_BYTES) break
      b.decipher.setAuthTag(this.drain(TAG_BYTES))
      try { b.decipher.final() } catch { throw new Error('record failed authentication (corrupted or forged bytes)') }
      this.body = undefined
      const pieces = b.out.filter(p => p.length > 0)
      if (pieces.length === 0) this.ended = true
      // Bytes that came in dribs and drabs: one buffer is cheaper to hash and write.
      else done.push(pieces.length > 64 ? [Buffer.concat(pieces)] : pieces)
    }
    return done
  }

  /** Copies up to `want` − pending bytes from chunk[at…] into the pending buffer. */
  private take (chunk: Buffer, at: number, want: number): number {
    const n = Math.min(want - this.pendingBytes, chunk.length - at)
    // A copy: the caller may reuse its buffer for the next bytes.
    if (n > 0) { this.pending.push(Buffer.from(chunk.subarray(at, at + n))); this.pendingBytes += n }
    return at + Math.max(n, 0)
  }

  private drain (n: number): Buffer {
    const b = Buffer.concat(this.pending, n)
    this.pending = []
    this.pendingBytes = 0
    return b
  }
}

interface Grant {
  peer: string
  path: string
  offset: number
  size: number
  key: Buffer
  expires: number
}

export interface BulkServerInit {
  host: string
  port: number
  log: Logger
  /** How long an unused token stays valid. @default 10 s */
  ttlMs?: number
  /** How long the sender process outlives its last transfer. @default 30 s */
  senderIdleMs?: number
  /** Whether transfers go through a sender process (node/compute/images/bulk-sender.ts). @default true */
  senderProcess?: boolean
  /** At most one log line about refused connections per this long. @default 60 s */
  refusalLogMs?: number
}

/** What the daemon tells its sender process. A `send` comes with the client's socket. */
export type SenderCommand =
  | { kind: 'send', id: string, path: string, offset: number, size: number, key: string }
  | { kind: 'revoke', id: string }

/** What the sender process tells the daemon: a transfer is over (`error` when it broke off). */
export interface SenderReport { kind: 'ended', id: string, error?: string }

/**
 * Serves granted byte ranges of files over the side channel.
 *
 * The listener and the tokens live on the daemon's main thread; the bytes are read, sealed and sent
 * by a child process (node/compute/images/bulk-sender.ts) that is started with the first grant and exits once idle.
 * Sealing allocates a fresh buffer per record, and on the daemon's heap the garbage collections
 * that triggers cost more CPU than the encryption itself; a worker thread instead would cost every
 * host ~15–25 MB of idle RSS. Without the process (it could not start), the main thread sends.
 */
export class BulkServer {
  private readonly init: BulkServerInit
  private readonly grants = new Map<string, Grant>()
  /** Transfers under way, by grant id, with the socket when the main thread sends it. */
  private readonly active = new Map<string, { peer: string, socket?: Socket }>()
  private readonly sockets = new Set<Socket>()
  private server?: Server
  private boundPort = 0
  private sender?: ChildProcess
  private senderIdle?: ReturnType<typeof setTimeout>
  private readonly refusals: RefusalLog

  constructor (init: BulkServerInit) {
    this.init = init
    this.refusals = new RefusalLog(init.log, init.refusalLogMs ?? 60_000)
  }

  get port (): number { return this.boundPort }

  /** The sender process's pid while it runs. */
  get senderPid (): number | undefined { return this.sender?.pid }

  async start (): Promise<number> {
    const server = createServer({ noDelay: true }, sock => { this.accept(sock) })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.init.port, this.init.host, () => { server.off('error', reject); resolve() })
    })
    this.server = server
    this.boundPort = (server.address() as { port: number }).port
    return this.boundPort
  }

  async stop (): Promise<void> {
    this.grants.clear()
    this.active.clear()
    for (const s of this.sockets) s.destroy()
    this.stopSender()
    this.refusals.stop()
    await new Promise<void>(resolve => { if (this.server === undefined) resolve(); else this.server.close(() => { resolve() }) })
    this.server = undefined
  }

  /**
   * A one-time permission for `peer` to read `path` from `offset` to `size`. `revoke` ends it
   * (and any transfer under way): call it when the libp2p stream that carried the offer ends.
   */
  grant (g: { peer: string, path: string, offset: number, size: number }): { offer: BulkOffer, revoke: () => void } {
    const token = randomBytes(TOKEN_BYTES)
    const key = randomBytes(32)
    const id = token.toString('hex')
    this.grants.set(id, { ...g, key, expires: Date.now() + (this.init.ttlMs ?? 10_000) })
    // Started now, so that it boots while the client gets ready to connect.
    this.ensureSender()
    return {
      offer: { port: this.boundPort, token: token.toString('base64'), key: key.toString('base64') },
      revoke: () => { this.revoke(id) }
    }
  }

  /** Ends a grant, and its transfer if one is under way. */
  private revoke (id: string): void {
    this.grants.delete(id)
    const t = this.active.get(id)
    if (t !== undefined) {
      t.socket?.destroy()
      this.command({ kind: 'revoke', id })
    }
    this.ended(id)
  }

  private accept (sock: Socket): void {
    this.sockets.add(sock)
    sock.once('close', () => this.sockets.delete(sock))
    const chunks: Buffer[] = []
    let got = 0
    sock.setTimeout(5_000, () => sock.destroy())
    sock.on('error', () => {})
    const onData = (d: Buffer): void => {
      chunks.push(d)
      got += d.length
      if (got < HELLO_BYTES) return
      sock.off('data', onData)
      sock.pause()
      const hello = Buffer.concat(chunks)
      const [id, grant] = this.redeem(hello.subarray(0, HELLO_BYTES)) ?? []
      if (id === undefined || grant === undefined || got > HELLO_BYTES) {
        this.refusals.add(sock.remoteAddress)
        sock.destroy()
        return
      }
      sock.setTimeout(0)
      this.dispatch(id, grant, sock)
    }
    sock.on('data', onData)
  }

  /** Hands the redeemed transfer to the sender process, or sends it from here without one. */
  private dispatch (id: string, g: Grant, sock: Socket): void {
    const sender = this.ensureSender()
    if (sender !== undefined) {
      this.active.set(id, { peer: g.peer })
      const cmd: SenderCommand = { kind: 'send', id, path: g.path, offset: g.offset, size: g.size, key: g.key.toString('base64') }
      // The socket moves to the child: closed here once sent.
      sender.send(cmd, sock, err => {
        if (err === null) return
        this.init.log.debug('could not hand an image transfer to the sender process', { error: err.message })
        sock.destroy()
        this.ended(id)
      })
      return
    }
    this.active.set(id, { peer: g.peer, socket: sock })
    sock.once('close', () => { this.ended(id) })
    sock.setTimeout(30_000, () => sock.destroy(new Error('client stopped reading')))
    sendRecords(sock, g).catch((err: Error) => {
      this.init.log.debug('bulk image transfer ended early', { peer: g.peer, error: err.message })
      sock.destroy()
    })
  }

  /** The grant the hello's token names, taken out (single use) if it is still valid. */
  private redeem (hello: Buffer): [string, Grant] | undefined {
    if (!timingSafeEqual(hello.subarray(0, BULK_MAGIC.length), BULK_MAGIC)) return undefined
    const id = hello.subarray(BULK_MAGIC.length).toString('hex')
    const g = this.grants.get(id)
    if (g === undefined) return undefined
    this.grants.delete(id)
    return g.expires >= Date.now() ? [id, g] : undefined
  }

  /** The running sender process, started if need be; undefined when off or it cannot run. */
  private ensureSender (): ChildProcess | undefined {
    if (this.init.senderProcess === false) return undefined
    clearTimeout(this.senderIdle)
    this.senderIdle = undefined
    if (this.sender !== undefined && this.sender.connected) return this.sender
    try {
      const child = fork(new URL('./bulk-sender.ts', import.meta.url), [], {
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
        // Its own flags: not the daemon's small young generation, which suits an idle daemon.
        execArgv: ['--disable-warning=ExperimentalWarning']
      })
      child.on('message', (m: SenderReport) => {
        if (m.kind !== 'ended') return
        if (m.error !== undefined) this.init.log.debug('bulk image transfer ended early', { peer: this.active.get(m.id)?.peer, error: m.error })
        this.ended(m.id)
      })
      child.on('error', err => { this.init.log.warn('image sender process failed', { error: err.message }) })
      child.once('exit', () => {
        if (this.sender === child) this.sender = undefined
        // Its transfers died with it: the clients go on over libp2p.
        for (const [id, t] of this.active) if (t.socket === undefined) this.active.delete(id)
      })
      this.sender = child
      return child
    } catch (err: any) {
      this.init.log.warn('cannot start the image sender process; sending from the daemon', { error: err.message })
      return undefined
    }
  }

  private command (c: SenderCommand): void {
    if (this.sender?.connected === true) this.sender.send(c)
  }

  /** A transfer is over; with nothing left to send, the sender process goes after a while. */
  private ended (id: string): void {
    this.active.delete(id)
    if (this.active.size > 0 || this.grants.size > 0 || this.sender === undefined || this.senderIdle !== undefined) return
    this.senderIdle = setTimeout(() => { this.senderIdle = undefined; if (this.active.size === 0 && this.grants.size === 0) this.stopSender() }, this.init.senderIdleMs ?? 30_000)
    this.senderIdle.unref()
  }

  private stopSender (): void {
    clearTimeout(this.senderIdle)
    this.senderIdle = undefined
    this.sender?.kill()
    this.sender = undefined
  }
}

/**
 * Logs refused side-channel connections as at most one line per `everyMs`: the first refusal after
 * a quiet spell at once, the ones after it summed up (how many, from how many addresses) when the
 * spell ends. The port is open to anyone: a line per connection would let them fill the disk.
 */
export class RefusalLog {
  private readonly log: Logger
  private readonly everyMs: number
  private count = 0
  /** Bounded: past this many, the count of addresses means "at least". */
  private readonly addresses = new Set<string>()
  private last?: string
  private window?: ReturnType<typeof setTimeout>

  constructor (log: Logger, everyMs: number) {
    this.log = log
    this.everyMs = everyMs
  }

  add (address = 'unknown'): void {
    this.count++
    if (this.addresses.size < 4096) this.addresses.add(address)
    this.last = address
    if (this.window === undefined) this.flush()
  }

  /** Logs what was counted, if anything, and opens a new window. */
  private flush (): void {
    clearTimeout(this.window)
    this.window = undefined
    if (this.count === 0) return
    this.log.warn('refused image side channel connections: no valid token', { connections: this.count, addresses: this.addresses.size, from: this.last })
    this.count = 0
    this.addresses.clear()
    this.window = setTimeout(() => { this.flush() }, this.everyMs)
    this.window.unref()
  }

  /** Logs what is left. */
  stop (): void {
    this.flush()
    clearTimeout(this.window)
    this.window = undefined
  }
}

/**
 * Sends the granted range of a file as sealed records, then the end record, and ends the socket.
 * Rejects when the socket closes first.
 */
export async function sendRecords (sock: Socket, g: { path: string, offset: number, size: number, key: Buffer }): Promise<void> {
  let counter = 0
  const write = async (bufs: Buffer[]): Promise<void> => {
    sock.cork()
    let ok = true
    for (const b of bufs) ok = sock.write(b)
    sock.uncork()
    if (!ok && !sock.destroyed) {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error): void => { sock.off('drain', done); sock.off('close', closed); if (err) reject(err); else resolve() }
        const closed = (): void => done(new Error('connection closed'))
        sock.once('drain', done)
        sock.once('close', closed)
      })
    }
    if (sock.destroyed) throw new Error('connection closed')
  }
  // Two reused buffers: the next record is read from disk while this one is sealed and sent.
  const fh = await open(g.path, 'r')
  try {
    const bufs = [Buffer.allocUnsafe(RECORD_BYTES), Buffer.allocUnsafe(RECORD_BYTES)]
    let pos = g.offset
    const readAt = (i: number): Promise<{ bytesRead: number, buffer: Buffer }> | undefined =>
      pos < g.size ? fh.read(bufs[i], 0, Math.min(RECORD_BYTES, g.size - pos), pos) : undefined
    let next = readAt(0)
    for (let i = 1; next !== undefined; i ^= 1) {
      const { bytesRead, buffer } = await next
      if (bytesRead === 0) throw new Error('the image file is shorter than its size')
      pos += bytesRead
      next = readAt(i)
      await write(sealRecord(g.key, counter++, buffer.subarray(0, bytesRead)))
    }
  } finally { await fh.close() }
  await write(sealRecord(g.key, counter++, new Uint8Array()))
  sock.end()
}

export interface BulkReceive {
  host: string
  offer: BulkOffer
  /** Takes each verified record (as pieces), in order; its promise holds back the next. */
  write: (pieces: Buffer[]) => Promise<void>
  signal?: AbortSignal
  /** @default 3 s: a firewalled port (packets dropped) must not hold the fetch up long. */
  connectTimeoutMs?: number
  /** @default 30 s without a byte */
  idleTimeoutMs?: number
}

/** Receives one granted transfer; resolves when the server's end record has verified. */
export async function bulkReceive (r: BulkReceive): Promise<void> {
  const opener = new RecordOpener(Buffer.from(r.offer.key, 'base64'))
  let any = false
  let failed: Error | undefined
  let writing: Promise<void> = Promise.resolve()
  let waiting = 0
  const fail = (err: Error): void => { failed ??= err; sock.destroy() }
  // Reads land in one reused buffer (no allocation per read); the socket pauses while more than a
  // few records wait to be written.
  const sock = connect({
    host: r.host,
    port: r.offer.port,
    noDelay: true,
    onread: {
      buffer: Buffer.allocUnsafe(MAX_RECORD_BYTES),
      callback: (n: number, buf: Uint8Array): boolean => {
        any = true
        let plains: Buffer[][]
        try { plains = opener.push(Buffer.from(buf.buffer, buf.byteOffset, n)) } catch (err: any) { fail(err); return false }
        for (const plain of plains) {
          waiting++
          writing = writing.then(async () => { if (failed === undefined) await r.write(plain) }).catch(fail).finally(() => {
            if (--waiting === 2) sock.resume()
          })
        }
        return waiting <= 4
      }
    }
  })
  const abort = (): void => { fail(new Error('aborted')) }
  r.signal?.addEventListener('abort', abort)
  if (r.signal?.aborted === true) abort()
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => { sock.destroy(); reject(new Error(`no answer from ${r.host}:${r.offer.port} within ${r.connectTimeoutMs ?? 3000} ms`)) }, r.connectTimeoutMs ?? 3000)
      sock.once('connect', () => { clearTimeout(t); resolve() })
      sock.once('error', err => { clearTimeout(t); reject(err) })
      // Destroyed (aborted) before it connected: no 'error' comes.
      sock.once('close', () => { clearTimeout(t); reject(failed ?? new Error('connection closed')) })
    })
    sock.setTimeout(r.idleTimeoutMs ?? 30_000, () => { fail(new Error('the side connection went quiet')) })
    sock.write(Buffer.concat([BULK_MAGIC, Buffer.from(r.offer.token, 'base64')]))
    await new Promise<void>(resolve => {
      sock.once('close', () => resolve())
      sock.once('end', () => resolve())
    })
    await writing
    if (failed !== undefined) throw failed
    if (!opener.ended) throw new Error(any ? 'the side connection closed before the end of the transfer' : 'the server refused the side connection')
  } finally {
    r.signal?.removeEventListener('abort', abort)
    sock.destroy()
  }
}

/** One transfer for node/compute/images/bulk-worker.ts: the rest of image `sha256` into the store at `stateDir`. */
export interface BulkFetchJob { stateDir: string, maxBytes: number, sha256: string, size: number, host: string, offer: BulkOffer }

export type BulkFetchResult =
  /** Whole, verified and in the store. */
  | { kind: 'done', info: ImageInfo, written: number }
  /** The side transfer broke off: `received` bytes are in the partial download, verified so far. */
  | { kind: 'failed', error: string, received: number, written: number }
  /** Whole but wrong: the partial download is gone. */
  | { kind: 'corrupt', error: string, written: number }

/** What node/compute/images/bulk-worker.ts tells its parent while it works, before its BulkFetchResult. */
export type BulkWorkerNote =
  /** Bytes in the partial download so far (now and then). */
  | { received: number }
  /** Whether it is waiting on this host (its disk, the final hash), not on the sender. */
  | { held: boolean }

export interface BulkFetchRun {
  /** Hears the bytes received so far. */
  onProgress?: (received: number) => void
  /** Hears when the transfer waits on this host rather than on the sender, and when it stops. */
  onHeld?: (held: boolean) => void
  /** Ends the transfer: the run resolves `failed`, what verified so far stays in the partial download. */
  signal?: AbortSignal
}

/**
 * A worker thread (node/compute/images/bulk-worker.ts) for one transfer, started before the offer comes: it boots
 * (tens of ms) while the request travels. `run` gives it the job; `cancel` ends it unused.
 */
export class BulkFetcher {
  private readonly worker = new Worker(new URL('./bulk-worker.ts', import.meta.url))
  private readonly exited: Promise<never>

  constructor () {
    this.exited = new Promise<never>((_resolve, reject) => {
      this.worker.once('error', reject)
      this.worker.once('exit', code => { reject(new Error(`the image worker exited (${code})`)) })
    })
    // Until `run` listens: a failed start is its business, not an unhandled rejection.
    this.exited.catch(() => {})
  }

  /**
   * Runs the job. On `signal` the worker is asked to stop (it closes the partial download, so
   * its bytes stay) and, should it not answer within 5 s, terminated.
   */
  async run (job: BulkFetchJob, r: BulkFetchRun = {}): Promise<BulkFetchResult> {
    let kill: ReturnType<typeof setTimeout> | undefined
    const abort = (): void => {
      this.worker.postMessage({ abort: true })
      kill = setTimeout(() => { this.cancel() }, 5_000)
    }
    try {
      const done = new Promise<BulkFetchResult>(resolve => {
        this.worker.on('message', (m: BulkFetchResult | BulkWorkerNote) => {
          if ('kind' in m) resolve(m)
          else if ('held' in m) r.onHeld?.(m.held)
          else r.onProgress?.(m.received)
        })
      })
      this.worker.postMessage(job)
      if (r.signal?.aborted === true) abort()
      else r.signal?.addEventListener('abort', abort, { once: true })
      return await Promise.race([done, this.exited])
    } finally {
      r.signal?.removeEventListener('abort', abort)
      clearTimeout(kill)
      this.cancel()
    }
  }

  cancel (): void { void this.worker.terminate() }
}

/**
 * Starts the side channel on `listen` ("ADDRESS:PORT"; port 0: any free port). Undefined: off.
 * A port that cannot be bound stops the daemon when the operator chose it; when it is only the
 * default, the host goes on without (peers then fetch from it over libp2p, more slowly).
 */
export async function startBulkServer (listen: string | undefined, log: Logger): Promise<BulkServer | undefined> {
  if (listen === undefined) return undefined
  // Imported here: node/compute/images/bulk-worker.ts loads this module and should start fast.
  const { DEFAULT_IMAGE_LISTEN, parseListenAddress } = await import('../../config.ts')
  const server = new BulkServer({ ...parseListenAddress('image_listen', listen), log })
  try {
    log.info('serving image side channel', { listen, port: await server.start() })
    return server
  } catch (err: any) {
    const why = err.code === 'EADDRINUSE' ? 'the address is in use' : err.code === 'EADDRNOTAVAIL' ? 'no interface has that address' : err.message
    if (listen !== DEFAULT_IMAGE_LISTEN) throw new PicocloudError(ErrorCode.Config, `cannot serve images on ${listen}: ${why}. Change image_listen (or --image-listen), or set it to "" to send images over libp2p only`)
    log.warn('image side channel off: cannot listen on the default port; peers fetch images from here over libp2p (slower). Set image_listen to a free ADDRESS:PORT', { listen, error: why })
    return undefined
  }
}
