/**
 * Images between hosts: each host keeps a content-addressed store (node/compute/images/store.ts),
 * publishes which images it holds in its record, serves them over a libp2p stream protocol, and
 * fetches what it lacks from any peer that has it — resuming after an interruption, verifying the
 * hash before anything enters the store, trying the next peer when one serves bad bytes.
 *
 *   client → {sha256, offset, bulk?: true}     (one length-prefixed JSON frame)
 *   server → {size} | {error}, then data frames, then an empty frame
 *
 * With `bulk` (and the server's side channel on, node/compute/images/bulk.ts) the server answers
 * {size, bulk: {port, token, key}} instead and waits: the client fetches the bytes over the side
 * channel and then sends {done: true}, or, when that failed, {offset} to get the rest here as
 * data frames. Servers that do not know `bulk` ignore it and send data frames at once.
 *
 * Holders are not trusted to be quick either: every attempt runs under a TransferWatchdog
 * (node/compute/images/transfer-watchdog.ts) that cuts a holder that stalls or trickles, and the next one is
 * tried; the order they are tried in is this host's (`holders`), not one a holder can choose.
 */
import { lpStream, type LengthPrefixedStream } from 'it-length-prefixed-stream'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { BulkFetcher, isBulkOffer, type BulkServer, type BulkFetchResult } from './bulk.ts'
import type { ImageStore, ImageInfo, PartialImage } from './store.ts'
import type { StateStore } from '../../../crdt/store.ts'
import type { P2PNode } from '../../mesh/index.ts'
import type { Logger } from '../../log.ts'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import { TransferWatchdog, HolderCutError, type WatchdogOptions } from './transfer-watchdog.ts'

export { TransferWatchdog, HolderCutError, HolderStalledError, HolderTooSlowError, type WatchdogOptions } from './transfer-watchdog.ts'

export const IMAGE_PROTOCOL = '/picocloud/image/1.0.0'
const CHUNK = 256 * 1024
const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v))

export interface FetchProgress { sha256: string, received: number, total: number, peer: string }

/** What the server needs to offer the side channel: its listener and who is asking. */
export interface BulkServing { server: BulkServer, peer: string }

/** Serves one image request from the local store. */
export async function serveImage (stream: Stream, store: ImageStore, log: Logger, bulk?: BulkServing): Promise<void> {
  const lp = lpStream(stream, { maxDataLength: CHUNK + 1024 })
  let revoke = (): void => {}
  try {
    const req = JSON.parse(new TextDecoder().decode((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray()))
    const sha = String(req?.sha256 ?? '')
    let offset = Number(req?.offset ?? 0)
    const info = /^[0-9a-f]{64}$/.test(sha) ? await store.info(sha) : undefined
    if (info === undefined || !Number.isSafeInteger(offset) || offset < 0 || offset > info.size) {
      await lp.write(enc({ error: info === undefined ? 'NOT_FOUND' : 'BAD_OFFSET' }))
      await stream.close()
      return
    }
    if (req.bulk === true && bulk !== undefined && offset < info.size) {
      const g = bulk.server.grant({ peer: bulk.peer, path: store.path(sha), offset, size: info.size })
      revoke = g.revoke
      await lp.write(enc({ size: info.size, bulk: g.offer }))
      // No time limit: the side transfer may take long; the stream ends if the peer goes away.
      const next = JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))
      revoke()
      if (next?.done === true) { await stream.close(); return }
      offset = Number(next?.offset)
      if (!Number.isSafeInteger(offset) || offset < 0 || offset > info.size) throw new Error(`bad resume offset ${String(next?.offset)}`)
    } else {
      await lp.write(enc({ size: info.size }))
    }
    if (offset < info.size) {
      for await (const chunk of createReadStream(store.path(sha), { start: offset, highWaterMark: CHUNK })) {
        await lp.write(chunk as Buffer)
      }
    }
    await lp.write(new Uint8Array())
    await stream.close()
  } catch (err: any) {
    log.debug('image transfer ended early', { error: err.message })
    stream.abort(err)
  } finally {
    revoke()
  }
}

/** The IP address a connection reached the peer at: where its side channel listens too. */
export function hostOf (addr: Multiaddr): string | undefined {
  try {
    const o = addr.toOptions()
    return o.transport === 'tcp' ? o.host : undefined
  } catch { return undefined }
}

/**
 * Holders that failed a fetch lately (cut for stalling or slowness, bad bytes, unreachable):
 * later fetches try them after the others. In memory only, and forgotten after `forgetMs`: a
 * holder that was slow once is not shunned for good, it only stops going first.
 */
export class HolderHistory {
  private readonly failed = new Map<string, number>()
  private readonly forgetMs: number

  /** @param forgetMs @default 10 min */
  constructor (forgetMs = 10 * 60_000) { this.forgetMs = forgetMs }

  failedLately (peer: string): boolean {
    const at = this.failed.get(peer)
    return at !== undefined && Date.now() - at < this.forgetMs
  }

  noteFailure (peer: string): void {
    this.failed.delete(peer)
    this.failed.set(peer, Date.now())
    // Bounded: the oldest goes first (a Map iterates in insertion order).
    if (this.failed.size > 1024) this.failed.delete(this.failed.keys().next().value as string)
  }

  noteSuccess (peer: string): void { this.failed.delete(peer) }
}

/** The daemon's: what one fetch learnt about holders, the next one uses. */
export const holderHistory = new HolderHistory()

/** Secret to this process: other hosts cannot know (or grind a peer id for) the order below. */
const ORDER_SALT = randomBytes(32)

/**
 * Peers whose records say they hold the image, in the order to try them: those that failed a
 * fetch lately last, connected ones first (no dial to wait for), and otherwise a shuffle keyed
 * by a secret of this process and the image. Records are self-declared, so any member can claim
 * every image; the order must not be one it can choose, as the records' order or a sort by peer
 * id would be (an id can be ground to sort first). The keyed shuffle is stable within a process
 * (same image, same order) and spreads images over their holders. A holder that stalls is cut
 * anyway (fetchImage): the order only decides who costs that time, and how often.
 */
export function holders (state: StateStore, sha256: string, connected: Set<string>,
  o: { history?: HolderHistory, salt?: Uint8Array } = {}): string[] {
  const history = o.history ?? holderHistory
  const salt = o.salt ?? ORDER_SALT
  const out: Array<{ peer: string, late: boolean, connected: boolean, rank: string }> = []
  for (const [peer, rec] of Object.entries(state.doc.hosts ?? {})) {
    if (peer === state.self) continue
    if ((rec as any).images?.[sha256] === undefined) continue
    const rank = createHash('sha256').update(salt).update(`${sha256}\n${peer}`).digest('hex')
    out.push({ peer, late: history.failedLately(peer), connected: connected.has(peer), rank })
  }
  return out.sort((a, b) => Number(a.late) - Number(b.late) || Number(b.connected) - Number(a.connected) ||
    (a.rank < b.rank ? -1 : 1)).map(h => h.peer)
}

/** The bytes did not hash to the image. `alone`: this holder sent all of them (else some came from earlier attempts). */
export class CorruptImageError extends Error {
  override name = 'CorruptImageError'
  readonly peer: string
  readonly alone: boolean
  constructor (peer: string, message: string, alone: boolean) { super(message); this.peer = peer; this.alone = alone }
}

export interface FetchOptions extends WatchdogOptions {
  /**
   * A holder cut this many times in one fetch is not tried again in it. A cut holder goes to
   * the back of the line (every other holder gets its turn first); the bytes it sent stay,
   * for the next attempt to go on from (the hash checks them at the end).
   * @default 2
   */
  maxCutsPerHolder?: number
  /** @default holderHistory, the daemon's */
  history?: HolderHistory
}

/**
 * Fetches an image from the first holder that serves it whole and correct. Resumes from what an
 * earlier, interrupted attempt left. Every attempt is watched (TransferWatchdog): a holder that
 * stalls or trickles is cut and the next one tried, so a member that claims every image and then
 * serves nothing (or next to nothing) costs a fetch seconds, not the VM its start.
 * Throws IMAGE_NOT_FOUND / IMAGE_HASH_MISMATCH with every holder's story (and, as `cause`, an
 * AggregateError of their errors).
 */
export async function fetchImage (p2p: P2PNode, store: ImageStore, sha256: string, peers: string[], log: Logger,
  onProgress: (p: FetchProgress) => void = () => {}, options: FetchOptions = {}): Promise<ImageInfo> {
  if (await store.has(sha256)) return await store.info(sha256) as ImageInfo
  if (peers.length === 0) throw new PicocloudError(ErrorCode.ImageNotFound, `no host of the mesh holds image ${sha256.slice(0, 12)}; add it with \`picocloud image add\` on a host`, 404)
  const history = options.history ?? holderHistory
  const queue = [...new Set(peers)].map(peer => ({ peer, cuts: 0, restarted: false }))
  const errors: Error[] = []
  const problems: string[] = []
  for (let h = queue.shift(); h !== undefined; h = queue.shift()) {
    const wd = new TransferWatchdog(h.peer, options)
    try {
      const info = await fetchFrom({ p2p, store, sha256, peer: h.peer, log, onProgress, wd })
      history.noteSuccess(h.peer)
      return info
    } catch (err: any) {
      if (err instanceof CorruptImageError && !err.alone && !h.restarted) {
        // Part of the bytes came from earlier attempts (another holder, maybe one cut for
        // trickling garbage): which of them lied is unknown. This one gets to send them all.
        h.restarted = true
        queue.unshift(h)
        log.warn('a resumed image download did not verify; fetching it again from the first byte', { peer: h.peer, sha256: sha256.slice(0, 12), error: err.message })
        continue
      }
      errors.push(err)
      problems.push(`${h.peer}: ${err.message}`)
      history.noteFailure(h.peer)
      if (err instanceof HolderCutError) {
        if (++h.cuts < (options.maxCutsPerHolder ?? 2)) queue.push(h)
        log.warn('image holder cut; trying the next', { peer: h.peer, sha256: sha256.slice(0, 12), reason: err.message, kept: await partialBytes(store, sha256).catch(() => 0) })
      } else if (err instanceof CorruptImageError) {
        log.warn('peer served a corrupted image', { peer: h.peer, sha256: sha256.slice(0, 12), error: err.message })
      } else {
        log.warn('image fetch from peer failed; will try another', { peer: h.peer, error: err.message })
      }
    } finally {
      wd.stop()
    }
  }
  throw new PicocloudError(ErrorCode.ImageHashMismatch, `could not fetch image ${sha256.slice(0, 12)} from any host: ${problems.join('; ')}`, 502, { cause: new AggregateError(errors) })
}

interface Attempt {
  p2p: P2PNode
  store: ImageStore
  sha256: string
  peer: string
  log: Logger
  onProgress: (p: FetchProgress) => void
  wd: TransferWatchdog
}

/** The offer: the image's size, and the side channel's when the holder offers one. */
interface Head { size: number, bulk?: unknown }

/** Bytes the partial download holds (unverified until the whole image hashes right). */
async function partialBytes (store: ImageStore, sha256: string): Promise<number> {
  const p = await store.partial(sha256)
  await p.close()
  return p.offset
}

/** A limit of its own for one step, within the attempt's watchdog. */
const within = (wd: TransferWatchdog, ms: number): AbortSignal => AbortSignal.any([wd.signal, AbortSignal.timeout(ms)])

/**
 * Ends a stream without waiting on the other side: a holder that never closes its end must not
 * hold up a fetch that has what it needs.
 */
function closeQuietly (stream: Stream): void {
  stream.close({ signal: AbortSignal.timeout(5_000) }).catch((err: Error) => { stream.abort(err) })
}

/** One attempt at one holder; throws the watchdog's HolderCutError when it cut the attempt. */
async function fetchFrom (a: Attempt): Promise<ImageInfo> {
  const { store, sha256, peer, wd } = a
  let partial = await store.partial(sha256)
  const start = partial.offset
  const t0 = Date.now()
  // Boots while the offer is asked for; unused when the peer offers no side channel.
  const fetcher = new BulkFetcher()
  let stream: Stream | undefined
  try {
    const conn = await a.p2p.dial(peerIdFromString(peer), { signal: within(wd, 10_000) })
    stream = await conn.newStream(IMAGE_PROTOCOL, { signal: within(wd, 10_000) })
    const lp = lpStream(stream, { maxDataLength: CHUNK + 1024 })
    await lp.write(enc({ sha256, offset: start, bulk: true }), { signal: wd.signal })
    const head = JSON.parse(new TextDecoder().decode((await lp.read({ signal: within(wd, 10_000) })).subarray())) as Head & { error?: unknown }
    wd.progress(0)
    if (typeof head.size !== 'number') throw new Error(head.error === 'NOT_FOUND' ? 'does not have it' : String(head.error))
    if (!Number.isSafeInteger(head.size) || head.size > store.maxBytes) throw new Error(`offers an image of ${head.size} bytes (the limit is ${store.maxBytes})`)
    if (head.bulk !== undefined) {
      await partial.close()
      const r = await viaSideChannel(a, fetcher, head, hostOf(conn.remoteAddr), start)
      if (typeof r !== 'number') {
        await lp.write(enc({ done: true }), { signal: AbortSignal.timeout(1000) }).catch(() => {})
        closeQuietly(stream)
        logFetched(a, r, 'side-channel', t0)
        return r
      }
      partial = await store.partial(sha256)
      await lp.write(enc({ offset: partial.offset }), { signal: wd.signal })
    }
    await receiveFrames(a, lp, partial, head.size)
    closeQuietly(stream)
    // All bytes are in: what is left (hash, fsync) is this host's work, not the holder's.
    wd.stop()
    try {
      const info = await partial.finalize()
      logFetched(a, info, 'libp2p', t0)
      return info
    } catch (err: any) {
      await partial.discard()
      throw new CorruptImageError(peer, err.message, start === 0)
    }
  } catch (err: any) {
    await partial.close().catch(() => {})
    if (wd.signal.aborted && !(err instanceof CorruptImageError)) err = wd.signal.reason
    stream?.abort(err)
    throw err
  } finally {
    fetcher.cancel()
  }
}

function logFetched (a: Attempt, info: ImageInfo, over: string, t0: number): void {
  a.log.info('fetched image', { sha256: a.sha256.slice(0, 12), bytes: info.size, from: a.peer, over, ms: Date.now() - t0 })
}

/**
 * The side channel part of an attempt (node/compute/images/bulk.ts, in a worker): the image when it came whole
 * and correct; else the number of verified bytes now in the partial download, for the libp2p
 * stream to go on from. `start`: the bytes it begins with (all from earlier attempts). Throws
 * CorruptImageError for bad bytes, the watchdog's error when cut.
 */
async function viaSideChannel (a: Attempt, fetcher: BulkFetcher, head: Head, host: string | undefined, start: number): Promise<ImageInfo | number> {
  const { store, sha256, peer, wd } = a
  let error = 'no usable side channel offer'
  if (isBulkOffer(head.bulk) && host !== undefined) {
    // The worker (node/compute/images/bulk-worker.ts) takes the partial download over, and finishes it.
    const job = { stateDir: store.stateDir, maxBytes: store.maxBytes, sha256, size: head.size, host, offer: head.bulk }
    let seen = start
    // Until the worker has the job (it may still be booting, slowly on a busy host): our time.
    wd.hold()
    const r = await fetcher.run(job, {
      signal: wd.signal,
      onProgress: n => { wd.progress(n - seen); seen = n; a.onProgress({ sha256, received: n, total: head.size, peer }) },
      onHeld: held => { if (held) wd.hold(); else wd.release() }
    }).catch((err: Error): BulkFetchResult => ({ kind: 'failed', error: err.message, received: -1, written: 0 }))
      .finally(() => { wd.release() })
    store.stats.downloadedBytes += r.written
    if (r.kind === 'done') {
      a.onProgress({ sha256, received: head.size, total: head.size, peer })
      return r.info
    }
    if (r.kind === 'corrupt') throw new CorruptImageError(peer, r.error, start === 0)
    // Cut by the watchdog: no going on over libp2p with this holder; its bytes stay.
    if (wd.signal.aborted) throw wd.signal.reason
    error = r.error
  }
  const received = await partialBytes(store, sha256)
  // Whatever verified so far is kept: the rest comes over the libp2p stream.
  // Where it tried, so that an operator can check that TCP port on that host (image_listen).
  a.log.info('image side channel failed; going on over libp2p', { peer, address: `${host ?? '?'}:${String(isBulkOffer(head.bulk) ? head.bulk.port : '?')}`, bytes: received, error })
  return received
}

/** Data frames up to the empty one that ends them, into the partial download. */
async function receiveFrames (a: Attempt, lp: LengthPrefixedStream<Stream>, partial: PartialImage, size: number): Promise<void> {
  const { sha256, peer, wd } = a
  let last = 0
  for (;;) {
    const chunk = (await lp.read({ signal: wd.signal })).subarray()
    if (chunk.length === 0) break
    if (partial.offset + chunk.length > size) throw new Error('sent more bytes than the image has')
    wd.progress(chunk.length)
    // Waiting on this host's disk is not the holder's time.
    wd.hold()
    try { await partial.write(chunk) } finally { wd.release() }
    if (Date.now() - last > 250) { last = Date.now(); a.onProgress({ sha256, received: partial.offset, total: size, peer }) }
  }
  a.onProgress({ sha256, received: partial.offset, total: size, peer })
  if (partial.offset !== size) throw new Error(`transfer ended after ${partial.offset} of ${size} bytes`)
}
