/**
 * Images between hosts: each host keeps a content-addressed store (node/drivers/images/store.ts),
 * publishes which images it holds in its record, serves them over a libp2p stream protocol, and
 * fetches what it lacks from any peer that has it — resuming after an interruption, verifying the
 * hash before anything enters the store, trying the next peer when one serves bad bytes.
 *
 *   client → {sha256, offset, bulk?: true}     (one length-prefixed JSON frame)
 *   server → {size} | {error}, then data frames, then an empty frame
 *
 * With `bulk` (and the server's side channel on, node/bulk.ts) the server answers
 * {size, bulk: {port, token, key}} instead and waits: the client fetches the bytes over the side
 * channel and then sends {done: true}, or, when that failed, {offset} to get the rest here as
 * data frames. Servers that do not know `bulk` ignore it and send data frames at once.
 */
import { lpStream } from 'it-length-prefixed-stream'
import { createReadStream } from 'node:fs'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { BulkFetcher, isBulkOffer, type BulkServer, type BulkFetchResult } from './bulk.ts'
import type { ImageStore, ImageInfo } from './drivers/images/store.ts'
import type { StateStore } from '../crdt/store.ts'
import type { P2PNode } from './p2p.ts'
import type { Logger } from './log.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'

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

/** Peers whose records say they hold the image, connected ones first. */
export function holders (state: StateStore, sha256: string, connected: Set<string>): string[] {
  const out: string[] = []
  for (const [peer, rec] of Object.entries(state.doc.hosts ?? {})) {
    if (peer === state.self) continue
    if ((rec as any).images?.[sha256] !== undefined) out.push(peer)
  }
  return out.sort((a, b) => Number(connected.has(b)) - Number(connected.has(a)))
}

/**
 * Fetches an image from the first holder that serves it whole and correct. Resumes from what an
 * earlier, interrupted attempt left. Throws IMAGE_NOT_FOUND / IMAGE_HASH_MISMATCH with the story.
 */
export async function fetchImage (p2p: P2PNode, store: ImageStore, sha256: string, peers: string[], log: Logger,
  onProgress: (p: FetchProgress) => void = () => {}): Promise<ImageInfo> {
  if (await store.has(sha256)) return await store.info(sha256) as ImageInfo
  if (peers.length === 0) throw new PicocloudError(ErrorCode.ImageNotFound, `no host of the mesh holds image ${sha256.slice(0, 12)}; add it with \`picocloud image add\` on a host`, 404)
  const problems: string[] = []
  for (const peer of peers) {
    let partial = await store.partial(sha256)
    const t0 = Date.now()
    // Boots while the offer is asked for; unused when the peer offers no side channel.
    const fetcher = new BulkFetcher()
    try {
      const conn = await p2p.dial(peerIdFromString(peer), { signal: AbortSignal.timeout(10_000) })
      const stream = await conn.newStream(IMAGE_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
      const lp = lpStream(stream, { maxDataLength: CHUNK + 1024 })
      await lp.write(enc({ sha256, offset: partial.offset, bulk: true }))
      const head = JSON.parse(new TextDecoder().decode((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray()))
      if (typeof head.size !== 'number') throw new Error(head.error === 'NOT_FOUND' ? 'does not have it' : String(head.error))
      let received = partial.offset
      let last = 0
      const take = async (chunks: Uint8Array | Uint8Array[]): Promise<void> => {
        const length = Array.isArray(chunks) ? chunks.reduce((n, c) => n + c.length, 0) : chunks.length
        if (received + length > head.size) throw new Error('sent more bytes than the image has')
        await partial.write(chunks)
        received += length
        if (Date.now() - last > 250) { last = Date.now(); onProgress({ sha256, received, total: head.size, peer }) }
      }
      if (head.bulk !== undefined) {
        const host = hostOf(conn.remoteAddr)
        let error = 'no usable side channel offer'
        if (isBulkOffer(head.bulk) && host !== undefined) {
          // The worker (node/bulk-worker.ts) takes the partial download over, and finishes it.
          await partial.close()
          const job = { stateDir: store.stateDir, maxBytes: store.maxBytes, sha256, size: head.size, host, offer: head.bulk }
          const r = await fetcher.run(job, n => { onProgress({ sha256, received: n, total: head.size, peer }) })
            .catch((err: Error): BulkFetchResult => ({ kind: 'failed', error: err.message, received: -1, written: 0 }))
          store.stats.downloadedBytes += r.written
          if (r.kind !== 'failed') {
            await lp.write(enc({ done: true })).catch(() => {})
            await stream.close().catch(() => {})
          }
          if (r.kind === 'done') {
            onProgress({ sha256, received: head.size, total: head.size, peer })
            log.info('fetched image', { sha256: sha256.slice(0, 12), bytes: r.info.size, from: peer, over: 'side-channel', ms: Date.now() - t0 })
            return r.info
          }
          if (r.kind === 'corrupt') {
            problems.push(`${peer}: ${r.error}`)
            log.warn('peer served a corrupted image', { peer, sha256: sha256.slice(0, 12), error: r.error })
            continue
          }
          error = r.error
          partial = await store.partial(sha256)
          received = partial.offset
        }
        // Whatever verified so far is kept: the rest comes over the libp2p stream.
        // Where it tried, so that an operator can check that TCP port on that host (image_listen).
        log.info('image side channel failed; going on over libp2p', { peer, address: `${host ?? '?'}:${String(isBulkOffer(head.bulk) ? head.bulk.port : '?')}`, bytes: received, error })
        await lp.write(enc({ offset: received }))
      }
      for (;;) {
        const chunk = (await lp.read({ signal: AbortSignal.timeout(30_000) })).subarray()
        if (chunk.length === 0) break
        await take(chunk)
      }
      onProgress({ sha256, received, total: head.size, peer })
      await stream.close().catch(() => {})
      if (received !== head.size) throw new Error(`transfer ended after ${received} of ${head.size} bytes`)
      try {
        const info = await partial.finalize()
        log.info('fetched image', { sha256: sha256.slice(0, 12), bytes: info.size, from: peer, over: 'libp2p', ms: Date.now() - t0 })
        return info
      } catch (err: any) {
        // Bad bytes: throw away everything from this peer and try another.
        await partial.discard()
        problems.push(`${peer}: ${err.message}`)
        log.warn('peer served a corrupted image', { peer, sha256: sha256.slice(0, 12), error: err.message })
        continue
      }
    } catch (err: any) {
      await partial.close().catch(() => {})
      problems.push(`${peer}: ${err.message}`)
      log.warn('image fetch from peer failed; will try another', { peer, error: err.message })
    } finally {
      fetcher.cancel()
    }
  }
  throw new PicocloudError(ErrorCode.ImageHashMismatch, `could not fetch image ${sha256.slice(0, 12)} from any host: ${problems.join('; ')}`, 502)
}
