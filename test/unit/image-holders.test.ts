/**
 * Image fetches against holders that lie (security review, issue 12): a member's host record is
 * self-declared, so any member can claim to hold every image and then serve nothing, a trickle,
 * half an image or garbage. Each such holder goes first, an honest one second: the fetch must
 * end from the honest one within a bounded time (short watchdog limits, injected), resuming from
 * what was kept where it can. Plus the order holders are tried in.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, readFile } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { createHash, randomBytes } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { lpStream, type LengthPrefixedStream } from 'it-length-prefixed-stream'
import type { Stream } from '@libp2p/interface'
import { ImageStore } from '../../node/compute/images/store.ts'
import {
  IMAGE_PROTOCOL, serveImage, fetchImage, holders, HolderHistory, TransferWatchdog,
  HolderStalledError, HolderTooSlowError, type FetchOptions
} from '../../node/compute/images/transfer.ts'
import { BulkServer, sealRecord, RECORD_BYTES, type BulkOffer } from '../../node/compute/images/bulk.ts'
import { createLogger } from '../../node/log.ts'
import type { StateStore } from '../../crdt/store.ts'
import type { P2PNode } from '../../node/mesh/p2p.ts'

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')
const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v))
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const FRAME = 256 * 1024

function recorder (): { log: ReturnType<typeof createLogger>, lines: string[] } {
  const lines: string[] = []
  return { log: createLogger('test', l => { lines.push(l) }), lines }
}

async function node (): Promise<P2PNode> {
  return await createLibp2p({ addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] }) as unknown as P2PNode
}

/** What a fake holder does once it has read the request. It may stall: the client cuts it. */
type Serve = (lp: LengthPrefixedStream<Stream>, req: { offset: number, bulk?: boolean }) => Promise<void>

interface Holder { id: string, p2p: P2PNode, offsets: number[] }

describe('fetching an image when holders lie', () => {
  let dir: string
  let client: P2PNode
  const data = randomBytes(5 * RECORD_BYTES + 12345)
  const hash = sha(data)
  const nodes: P2PNode[] = []
  const servers: Server[] = []
  const bulks: BulkServer[] = []
  let stores = 0

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-holders-'))
    client = await node()
  })
  afterAll(async () => {
    for (const b of bulks) await b.stop()
    for (const s of servers) s.close()
    for (const n of nodes) await n.stop()
    await client.stop()
    await rm(dir, { recursive: true, force: true })
  })

  const freshStore = (): ImageStore => new ImageStore({ stateDir: join(dir, `client-${++stores}`) })

  /** A holder that serves the request its own way; records the offsets it was asked for. */
  async function fake (serve: Serve): Promise<Holder> {
    const p2p = await node()
    nodes.push(p2p)
    const offsets: number[] = []
    await p2p.handle(IMAGE_PROTOCOL, ({ stream }) => {
      const lp = lpStream(stream)
      void (async () => {
        const req = JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))
        offsets.push(req.offset)
        await serve(lp, req)
      })().catch(() => {})
    })
    await client.dial(p2p.getMultiaddrs()[0])
    return { id: p2p.peerId.toString(), p2p, offsets }
  }

  /** An honest holder with a side channel (the offsets it was asked for: through its grants). */
  async function honest (): Promise<Holder> {
    const p2p = await node()
    nodes.push(p2p)
    const store = new ImageStore({ stateDir: join(dir, `honest-${nodes.length}`) })
    await store.add((async function * () { yield data })())
    const bulk = new BulkServer({ host: '127.0.0.1', port: 0, log: createLogger('x', () => {}) })
    bulks.push(bulk)
    await bulk.start()
    const offsets: number[] = []
    const grant = bulk.grant.bind(bulk)
    bulk.grant = g => { offsets.push(g.offset); return grant(g) }
    await p2p.handle(IMAGE_PROTOCOL, ({ stream, connection }) => {
      void serveImage(stream, store, createLogger('x', () => {}), { server: bulk, peer: connection.remotePeer.toString() })
    })
    await client.dial(p2p.getMultiaddrs()[0])
    return { id: p2p.peerId.toString(), p2p, offsets }
  }

  /** Waits until the client gives up on the stream (its reads then fail). */
  const untilCut = async (lp: LengthPrefixedStream<Stream>): Promise<void> => { await lp.read().catch(() => {}) }

  /** Offers a side channel on a TCP server of its own, which `side` runs once the hello came. */
  async function sideOffer (side: (sock: Socket, key: Buffer) => void): Promise<BulkOffer> {
    const key = randomBytes(32)
    const server = createServer(sock => {
      sock.on('error', () => {})
      sock.once('data', () => { side(sock, key) })
    })
    servers.push(server)
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    return { port: (server.address() as { port: number }).port, token: randomBytes(16).toString('base64'), key: key.toString('base64') }
  }

  /** Sends the image's bytes from `offset`, one byte a second, until the client hangs up. */
  const oneBytePerSecond: Serve = async (lp, req) => {
    await lp.write(enc({ size: data.length }))
    for (let at = req.offset; at < data.length; at++) {
      await lp.write(data.subarray(at, at + 1))
      await sleep(1000)
    }
  }

  const attacks: Array<{ name: string, serve: () => Promise<Serve>, options: FetchOptions, cut: string }> = [
    {
      name: 'answers the offer and then never sends',
      serve: async () => async lp => { await lp.write(enc({ size: data.length })); await untilCut(lp) },
      options: { idleMs: 500 },
      cut: 'HolderStalledError'
    },
    {
      name: 'offers a side channel that never sends',
      serve: async () => {
        const offer = await sideOffer(() => {})
        return async lp => { await lp.write(enc({ size: data.length, bulk: offer })); await untilCut(lp) }
      },
      options: { idleMs: 500 },
      cut: 'HolderStalledError'
    },
    {
      // Each byte is progress: the idle limit alone would never cut it.
      name: 'sends 1 byte per second',
      serve: async () => oneBytePerSecond,
      options: { idleMs: 3000, rateWindowMs: 1000 },
      cut: 'HolderTooSlowError'
    },
    {
      // Records sealed with the key it handed out: they verify, one byte each.
      name: 'sends 1 byte per second over its side channel',
      serve: async () => {
        const offer = await sideOffer((sock, key) => {
          let i = 0
          const t = setInterval(() => { for (const b of sealRecord(key, i, data.subarray(i, i + 1))) sock.write(b); i++ }, 1000)
          sock.once('close', () => { clearInterval(t) })
        })
        return async lp => { await lp.write(enc({ size: data.length, bulk: offer })); await untilCut(lp) }
      },
      options: { idleMs: 3000, rateWindowMs: 1000 },
      cut: 'HolderTooSlowError'
    }
  ]

  for (const attack of attacks) {
    it(`a holder that ${attack.name} is cut, and the honest holder after it serves the image`, async () => {
      const { log, lines } = recorder()
      const liar = await fake(await attack.serve())
      const good = await honest()
      const history = new HolderHistory()
      const t0 = Date.now()
      const info = await fetchImage(client, freshStore(), hash, [liar.id, good.id], log, undefined, { ...attack.options, history })
      const ms = Date.now() - t0
      expect(info).toMatchObject({ sha256: hash, size: data.length })
      // One limit (and the check's lag) plus the honest transfer: seconds, where without the watchdog it never ends.
      expect(ms).toBeLessThan(Math.min(attack.options.idleMs ?? 15_000, attack.options.rateWindowMs ?? 30_000) + 4000)
      expect(good.offsets).toHaveLength(1)
      expect(lines.join('\n')).toMatch(new RegExp(`image holder cut; trying the next.*peer=${liar.id}.*reason="${attack.cut === 'HolderStalledError' ? 'stalled' : 'too slow'}`))
      // Later fetches try it last; the honest one is in good standing.
      expect(history.failedLately(liar.id)).toBe(true)
      expect(history.failedLately(good.id)).toBe(false)
    })
  }

  it('a holder that stalls mid-transfer is cut; the honest holder goes on from the bytes it sent', async () => {
    const { log } = recorder()
    const liar = await fake(async (lp, req) => {
      await lp.write(enc({ size: data.length }))
      for (let at = req.offset; at < 2 * FRAME; at += FRAME) await lp.write(data.subarray(at, at + FRAME))
      await untilCut(lp)
    })
    const good = await honest()
    const store = freshStore()
    const t0 = Date.now()
    expect(await fetchImage(client, store, hash, [liar.id, good.id], log, undefined, { idleMs: 500, history: new HolderHistory() })).toMatchObject({ sha256: hash })
    expect(Date.now() - t0).toBeLessThan(4500)
    expect(good.offsets).toEqual([2 * FRAME])
    expect(await readFile(store.path(hash))).toEqual(data)
  })

  it('a holder that serves garbage is rejected by the hash; the honest holder sends the image from the first byte', async () => {
    const { log, lines } = recorder()
    const liar = await fake(async lp => {
      await lp.write(enc({ size: data.length }))
      const junk = randomBytes(data.length)
      for (let at = 0; at < junk.length; at += FRAME) await lp.write(junk.subarray(at, at + FRAME))
      await lp.write(new Uint8Array())
      await untilCut(lp)
    })
    const good = await honest()
    const store = freshStore()
    const history = new HolderHistory()
    expect(await fetchImage(client, store, hash, [liar.id, good.id], log, undefined, { idleMs: 500, history })).toMatchObject({ sha256: hash })
    expect(good.offsets).toEqual([0])
    expect(await readFile(store.path(hash))).toEqual(data)
    expect(lines.join('\n')).toMatch(new RegExp(`peer served a corrupted image.*peer=${liar.id}`))
    expect(history.failedLately(liar.id)).toBe(true)
  })

  it('garbage left by a holder cut for stalling does not get the honest holder blamed: it sends the whole image again', async () => {
    const { log, lines } = recorder()
    const liar = await fake(async lp => {
      await lp.write(enc({ size: data.length }))
      await lp.write(randomBytes(1000))
      await untilCut(lp)
    })
    const good = await honest()
    const store = freshStore()
    const history = new HolderHistory()
    expect(await fetchImage(client, store, hash, [liar.id, good.id], log, undefined, { idleMs: 500, history })).toMatchObject({ sha256: hash })
    // Resumed after the liar's 1000 bytes; that did not verify; then from the first byte.
    expect(good.offsets).toEqual([1000, 0])
    expect(await readFile(store.path(hash))).toEqual(data)
    expect(lines.join('\n')).toMatch(/resumed image download did not verify; fetching it again from the first byte/)
    expect(history.failedLately(good.id)).toBe(false)
  })

  it('when the only holder is slow, the fetch fails after a bounded time, naming it and why; its bytes were kept', async () => {
    const slow = await fake(oneBytePerSecond)
    const t0 = Date.now()
    const err = await fetchImage(client, freshStore(), hash, [slow.id], createLogger('x', () => {}), undefined,
      { idleMs: 3000, rateWindowMs: 1000, history: new HolderHistory() }).catch((e: any) => e)
    const ms = Date.now() - t0
    // Cut twice (a second turn, as no other holder came before it), one window each.
    expect(ms).toBeGreaterThanOrEqual(2000)
    expect(ms).toBeLessThan(4500)
    expect(err).toMatchObject({ code: 'IMAGE_HASH_MISMATCH' })
    expect(err.message).toMatch(new RegExp(`could not fetch image ${hash.slice(0, 12)} from any host: ${slow.id}: too slow: sent \\d+ B in 1\\.\\d s \\(\\d+ B/s\\), below the floor of 64\\.0 KiB/s`))
    expect(err.cause.errors.map((e: Error) => e.name)).toEqual(['HolderTooSlowError', 'HolderTooSlowError'])
    expect(err.cause.errors[0].peer).toBe(slow.id)
    // The second turn resumed after what the first one sent.
    expect(slow.offsets).toHaveLength(2)
    expect(slow.offsets[0]).toBe(0)
    expect(slow.offsets[1]).toBeGreaterThan(0)
  })
})

describe('transfer watchdog', () => {
  it('cuts an attempt that goes quiet, but not for time this host spent busy (hold … release)', async () => {
    const wd = new TransferWatchdog('p', { idleMs: 200, rateWindowMs: 60_000 })
    try {
      wd.hold()
      await sleep(500)
      wd.release()
      expect(wd.signal.aborted).toBe(false)
      wd.progress(10)
      const t0 = Date.now()
      await new Promise(resolve => wd.signal.addEventListener('abort', resolve))
      expect(Date.now() - t0).toBeGreaterThanOrEqual(190)
      expect(wd.signal.reason).toBeInstanceOf(HolderStalledError)
      expect(wd.signal.reason).toMatchObject({ name: 'HolderStalledError', peer: 'p' })
    } finally { wd.stop() }
  })

  it('cuts an attempt whose rate over a window is below the floor, not one above it', async () => {
    const fast = new TransferWatchdog('p', { idleMs: 10_000, rateWindowMs: 200, minBytesPerSecond: 1000 })
    const slow = new TransferWatchdog('q', { idleMs: 10_000, rateWindowMs: 200, minBytesPerSecond: 1000 })
    try {
      // 100 bytes per 50 ms: 2000 B/s, twice the floor; 1 byte per 50 ms: 20 B/s.
      for (let i = 0; i < 10; i++) { fast.progress(100); slow.progress(1); await sleep(50) }
      expect(fast.signal.aborted).toBe(false)
      expect(slow.signal.reason).toBeInstanceOf(HolderTooSlowError)
    } finally { fast.stop(); slow.stop() }
  })
})

describe('the order holders are tried in', () => {
  const image = 'a'.repeat(64)
  const state = (peers: string[]): StateStore => ({
    self: 'me',
    doc: { hosts: Object.fromEntries(['me', ...peers, 'other'].map(p => [p, { images: p === 'other' ? {} : { [image]: { size: 1, format: 'raw' } } }])) }
  }) as unknown as StateStore
  const peers = Array.from({ length: 12 }, (_, i) => `peer-${String(i).padStart(2, '0')}`)

  it('connected ones first, then the rest; not this host, not hosts without the image', () => {
    const connected = new Set(['peer-03', 'peer-07'])
    const order = holders(state(peers), image, connected, { history: new HolderHistory() })
    expect(order.slice(0, 2).sort()).toEqual(['peer-03', 'peer-07'])
    expect([...order].sort()).toEqual(peers)
  })

  it('not the records\' order nor the ids\': a shuffle keyed by a secret of this process, stable within it', () => {
    const s = state(peers)
    const history = new HolderHistory()
    const a = holders(s, image, new Set(), { history, salt: Buffer.from('one') })
    expect(holders(s, image, new Set(), { history, salt: Buffer.from('one') })).toEqual(a)
    expect(a).not.toEqual(peers)
    expect(holders(s, image, new Set(), { history, salt: Buffer.from('two') })).not.toEqual(a)
    // Without a salt given: the process's own, unknown to other hosts.
    expect(holders(s, image, new Set(), { history })).toEqual(holders(s, image, new Set(), { history }))
  })

  it('holders that failed a fetch lately go last (even when connected), until they succeed or it is forgotten', async () => {
    const s = state(peers)
    const history = new HolderHistory(150)
    const before = holders(s, image, new Set(peers), { history })
    history.noteFailure(before[0])
    expect(holders(s, image, new Set(peers), { history }).at(-1)).toBe(before[0])
    expect(holders(s, image, new Set([before[0]]), { history }).at(-1)).toBe(before[0])
    history.noteSuccess(before[0])
    expect(holders(s, image, new Set(peers), { history })).toEqual(before)
    history.noteFailure(before[0])
    await sleep(200)
    expect(holders(s, image, new Set(peers), { history })).toEqual(before)
  })
})
