/**
 * Image transfer between two real libp2p nodes on loopback: over the bulk side channel
 * (node/compute/images/bulk.ts) when it works, over the libp2p stream when it does not, always resumable and
 * sha256-verified; and the side channel's own rules (one-time tokens, authenticated records).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises'
import { createServer, connect } from 'node:net'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { createHash, randomBytes } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { ImageStore } from '../../node/compute/images/store.ts'
import { IMAGE_PROTOCOL, serveImage, fetchImage } from '../../node/compute/images/transfer.ts'
import { BulkServer, bulkReceive, sealRecord, RecordOpener, startBulkServer, RECORD_BYTES, MAX_RECORD_BYTES, BULK_MAGIC, type BulkOffer } from '../../node/compute/images/bulk.ts'
import { createLogger, silentLogger } from '../../node/log.ts'
import type { P2PNode } from '../../node/mesh/p2p.ts'
import { waitFor } from '../helpers/wait.ts'

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

/** A logger that keeps its lines, to see which path a transfer took. */
function recorder (): { log: ReturnType<typeof createLogger>, lines: string[] } {
  const lines: string[] = []
  return { log: createLogger('test', l => { lines.push(l) }), lines }
}

async function node (): Promise<P2PNode> {
  return await createLibp2p({ addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] }) as unknown as P2PNode
}

/** A host that holds images and serves them, with or without a side channel. */
interface Host { p2p: P2PNode, store: ImageStore, bulk?: BulkServer, id: string }

async function host (dir: string, name: string, bulk: BulkServer | undefined, log = silentLogger): Promise<Host> {
  const p2p = await node()
  const store = new ImageStore({ stateDir: join(dir, name) })
  await bulk?.start()
  await p2p.handle(IMAGE_PROTOCOL, ({ stream, connection }) => {
    void serveImage(stream, store, log, bulk === undefined ? undefined : { server: bulk, peer: connection.remotePeer.toString() })
  })
  return { p2p, store, bulk, id: p2p.peerId.toString() }
}

describe('image transfer between peers', () => {
  let dir: string
  const data = randomBytes(5 * RECORD_BYTES + 12345)
  const hash = sha(data)
  let client: P2PNode
  const hosts: Host[] = []
  const connectTo = async (h: Host): Promise<void> => { await client.dial(h.p2p.getMultiaddrs()[0]) }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-transfer-'))
    client = await node()
  })
  afterAll(async () => {
    for (const h of hosts) { await h.bulk?.stop(); await h.p2p.stop() }
    await client.stop()
    await rm(dir, { recursive: true, force: true })
  })

  async function serving (name: string, bulk: boolean, bytes = data, log = silentLogger): Promise<Host> {
    const h = await host(dir, name, bulk ? new BulkServer({ host: '127.0.0.1', port: 0, log }) : undefined, log)
    await h.store.add((async function * () { yield bytes })())
    if (bytes !== data) {
      // A peer whose copy went bad: its file under the right hash holds other bytes.
      await rm(h.store.path(hash), { force: true })
      await writeFile(h.store.path(hash), bytes)
      await writeFile(`${h.store.path(hash)}.json`, JSON.stringify({ sha256: hash, format: 'raw', size: bytes.length, added: new Date().toISOString() }))
    }
    hosts.push(h)
    await connectTo(h)
    return h
  }

  const freshStore = (name: string): ImageStore => new ImageStore({ stateDir: join(dir, name) })

  it('fetches over the side channel, verified, with no fallback', async () => {
    const { log, lines } = recorder()
    const a = await serving('a', true)
    const store = freshStore('c1')
    const info = await fetchImage(client, store, hash, [a.id], log)
    expect(info).toMatchObject({ sha256: hash, size: data.length })
    expect(await readFile(store.path(hash))).toEqual(data)
    expect(lines.join('\n')).not.toMatch(/side channel failed/)
  })

  it('falls back to the libp2p stream when the side port is unreachable', async () => {
    const { log, lines } = recorder()
    const a = await serving('b', true)
    // The offer names a port nobody listens on (as if a firewall rejected it).
    const closed = createServer()
    await new Promise<void>(resolve => closed.listen(0, '127.0.0.1', resolve))
    const deadPort = (closed.address() as { port: number }).port
    await new Promise(resolve => closed.close(resolve))
    const grant = a.bulk!.grant.bind(a.bulk)
    a.bulk!.grant = g => { const r = grant(g); return { ...r, offer: { ...r.offer, port: deadPort } } }
    const store = freshStore('c2')
    expect(await fetchImage(client, store, hash, [a.id], log)).toMatchObject({ sha256: hash })
    expect(await readFile(store.path(hash))).toEqual(data)
    expect(lines.join('\n')).toMatch(/side channel failed; going on over libp2p.*bytes=0.*ECONNREFUSED/)
  })

  it('resumes over libp2p from where the side channel broke off, and from a partial left earlier', async () => {
    const { log, lines } = recorder()
    const a = await serving('d', true)
    const store = freshStore('c3')
    // An earlier attempt left the first 1.5 records.
    const p = await store.partial(hash)
    await p.write(data.subarray(0, RECORD_BYTES * 1.5))
    await p.close()
    // The side connection goes through a proxy that resets it a little after two more records.
    const cutAfter = 2 * (4 + RECORD_BYTES + 16) + 1000
    const proxy = createServer(client => {
      const upstream = connect({ host: '127.0.0.1', port: a.bulk!.port })
      let n = 0
      client.on('data', d => upstream.write(d))
      upstream.on('data', d => {
        n += d.length
        if (n < cutAfter) client.write(d)
        else { client.write(d.subarray(0, d.length - (n - cutAfter))); client.resetAndDestroy(); upstream.destroy() }
      })
      client.on('error', () => {}); upstream.on('error', () => {})
    })
    await new Promise<void>(resolve => proxy.listen(0, '127.0.0.1', resolve))
    const grant = a.bulk!.grant.bind(a.bulk)
    let offered = -1
    a.bulk!.grant = g => {
      offered = g.offset
      const r = grant(g)
      return { ...r, offer: { ...r.offer, port: (proxy.address() as { port: number }).port } }
    }
    try {
      expect(await fetchImage(client, store, hash, [a.id], log)).toMatchObject({ sha256: hash })
    } finally { proxy.close() }
    expect(offered).toBe(RECORD_BYTES * 1.5)
    expect(await readFile(store.path(hash))).toEqual(data)
    expect(lines.join('\n')).toMatch(/side channel failed; going on over libp2p/)
    // Whole records only (a reset may drop what the kernel still held): 1.5, 2.5 or 3.5 MiB.
    const kept = Number(/going on over libp2p.* bytes=(\d+)/.exec(lines.join('\n'))?.[1])
    expect([1.5, 2.5, 3.5].map(r => r * RECORD_BYTES)).toContain(kept)
  })

  it('rejects a peer serving corrupted bytes (over the side channel) and takes the image from another', async () => {
    const { log, lines } = recorder()
    const bad = Buffer.from(data); bad[3 * RECORD_BYTES + 7] ^= 0x40
    const liar = await serving('liar', true, bad)
    const honest = await serving('honest', true)
    const store = freshStore('c4')
    expect(await fetchImage(client, store, hash, [liar.id, honest.id], log)).toMatchObject({ sha256: hash })
    expect(await readFile(store.path(hash))).toEqual(data)
    expect(lines.join('\n')).toMatch(new RegExp(`peer served a corrupted image.*peer=${liar.id}`))
  })

  it('still fetches from a peer without a side channel (or an older daemon that ignores `bulk`)', async () => {
    const a = await serving('plain', false)
    const store = freshStore('c5')
    expect(await fetchImage(client, store, hash, [a.id], silentLogger)).toMatchObject({ sha256: hash })
    expect(await readFile(store.path(hash))).toEqual(data)
  })
})

describe('bulk side channel', () => {
  let dir: string
  let file: string
  const data = randomBytes(3 * RECORD_BYTES + 99)
  let server: BulkServer
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-bulk-'))
    file = join(dir, 'f')
    await writeFile(file, data)
    server = new BulkServer({ host: '127.0.0.1', port: 0, log: silentLogger, ttlMs: 500 })
    await server.start()
  })
  afterAll(async () => { await server.stop(); await rm(dir, { recursive: true, force: true }) })

  const receive = async (offer: BulkOffer): Promise<Buffer> => {
    const got: Buffer[] = []
    await bulkReceive({ host: '127.0.0.1', offer, write: async c => { got.push(...c) } })
    return Buffer.concat(got)
  }

  it('sends the granted range, once per token', async () => {
    const { offer } = server.grant({ peer: 'p', path: file, offset: 1000, size: data.length })
    expect(await receive(offer)).toEqual(data.subarray(1000))
    await expect(receive(offer)).rejects.toThrow(/refused/)
  })

  it('refuses a connection without a valid token: unknown, expired or revoked', async () => {
    const { offer } = server.grant({ peer: 'p', path: file, offset: 0, size: data.length })
    await expect(receive({ ...offer, token: randomBytes(16).toString('base64') })).rejects.toThrow(/refused/)
    const late = server.grant({ peer: 'p', path: file, offset: 0, size: data.length })
    await new Promise(resolve => setTimeout(resolve, 600))
    await expect(receive(late.offer)).rejects.toThrow(/refused/)
    const revoked = server.grant({ peer: 'p', path: file, offset: 0, size: data.length })
    revoked.revoke()
    await expect(receive(revoked.offer)).rejects.toThrow(/refused/)
    // Nothing but garbage: the server hangs up without a byte.
    const sock = connect({ host: '127.0.0.1', port: server.port })
    sock.write(Buffer.concat([BULK_MAGIC, Buffer.alloc(16)]))
    const bytes = await new Promise<number>(resolve => { let n = 0; sock.on('data', d => { n += d.length }); sock.on('close', () => resolve(n)) })
    expect(bytes).toBe(0)
    // A valid token that was never used before still works.
    expect(await receive(server.grant({ peer: 'p', path: file, offset: 0, size: data.length }).offer)).toEqual(data)
  })

  it('logs refused connections as a few summary lines, not one each', async () => {
    const { log, lines } = recorder()
    const s = new BulkServer({ host: '127.0.0.1', port: 0, log, refusalLogMs: 60_000 })
    await s.start()
    // 1000 connections with a wrong token, from three addresses, 100 at a time.
    const refused = async (i: number): Promise<void> => {
      const sock = connect({ host: '127.0.0.1', port: s.port, localAddress: `127.0.0.${1 + i % 3}` })
      sock.on('error', () => {})
      sock.write(Buffer.concat([BULK_MAGIC, randomBytes(16)]))
      await new Promise(resolve => sock.on('close', resolve))
    }
    for (let i = 0; i < 1000; i += 100) await Promise.all(Array.from({ length: 100 }, async (_, j) => { await refused(i + j) }))
    // The first at once; the rest when the window ends (or, as here, when the server stops).
    expect(lines).toHaveLength(1)
    await s.stop()
    expect(lines.length).toBeLessThanOrEqual(2)
    const counts = lines.map(l => Number(/ connections=(\d+)/.exec(l)?.[1]))
    expect(counts.reduce((a, b) => a + b, 0)).toBe(1000)
    expect(lines.at(-1)).toMatch(/msg="refused image side channel connections: no valid token" connections=999 addresses=3 from=127\.0\.0\.\d/)

    // Without a stop, the window's end writes the sum; after a quiet window the next refusal is logged at once.
    const quick = recorder()
    const q = new BulkServer({ host: '127.0.0.1', port: 0, log: quick.log, refusalLogMs: 300 })
    await q.start()
    try {
      const bad = async (): Promise<void> => {
        const sock = connect({ host: '127.0.0.1', port: q.port })
        sock.on('error', () => {})
        sock.write(Buffer.alloc(20))
        await new Promise(resolve => sock.on('close', resolve))
      }
      await bad()
      await Promise.all([bad(), bad(), bad(), bad()])
      await waitFor(() => quick.lines.length === 2, { what: 'the summary line' })
      expect(quick.lines.map(l => / connections=(\d+)/.exec(l)?.[1])).toEqual(['1', '4'])
      // A window with nothing in it passes.
      await new Promise(resolve => setTimeout(resolve, 400))
      await bad()
      expect(quick.lines.map(l => / connections=(\d+)/.exec(l)?.[1])).toEqual(['1', '4', '1'])
    } finally { await q.stop() }
  })

  it('sends from a child process that exits once idle; a revoke cuts a transfer under way; without the process the daemon sends', async () => {
    const big = join(dir, 'big')
    // Far more than the socket buffers on both ends hold: the stalled transfer cannot finish.
    await writeFile(big, randomBytes(64 * 2 ** 20))
    const s = new BulkServer({ host: '127.0.0.1', port: 0, log: silentLogger, senderIdleMs: 200 })
    await s.start()
    try {
      const { offer } = s.grant({ peer: 'p', path: file, offset: 0, size: data.length })
      const pid = s.senderPid as number
      expect(pid).toBeGreaterThan(0)
      expect(await receive(offer)).toEqual(data)
      // Idle: the process is gone, not just forgotten.
      await waitFor(() => s.senderPid === undefined && !alive(pid), { what: 'the sender process to exit' })

      // The client reads one record and stalls; the revoke ends the transfer from the server side.
      const g = s.grant({ peer: 'p', path: big, offset: 0, size: 64 * 2 ** 20 })
      let release = (): void => {}
      const stalled = new Promise<void>(resolve => { release = resolve })
      let records = 0
      const cut = bulkReceive({ host: '127.0.0.1', offer: g.offer, write: async () => { if (++records === 1) { g.revoke(); await stalled } } })
      await waitFor(() => records >= 1, { what: 'the first record' })
      release()
      await expect(cut).rejects.toThrow(/closed before the end/)
    } finally { await s.stop() }

    const inline = new BulkServer({ host: '127.0.0.1', port: 0, log: silentLogger, senderProcess: false })
    await inline.start()
    try {
      const { offer } = inline.grant({ peer: 'p', path: file, offset: 5, size: data.length })
      expect(inline.senderPid).toBeUndefined()
      expect(await receive(offer)).toEqual(data.subarray(5))
    } finally { await inline.stop() }
  })

  it('records open only with their key, in order, whole; any flipped bit fails', () => {
    const key = randomBytes(32)
    // The largest record a receiver accepts (earlier senders sent 1 MiB records), among others.
    const plain = [randomBytes(100), randomBytes(MAX_RECORD_BYTES), randomBytes(RECORD_BYTES), new Uint8Array()]
    const wire = Buffer.concat(plain.flatMap((p, i) => sealRecord(key, i, p)))
    // Arbitrary chunking, down to single bytes.
    for (const step of [1, 7, 4096, wire.length]) {
      const o = new RecordOpener(key)
      const out: Buffer[] = []
      for (let i = 0; i < wire.length; i += step) for (const record of o.push(wire.subarray(i, i + step))) out.push(...record)
      expect(Buffer.concat(out)).toEqual(Buffer.concat(plain))
      expect(o.ended).toBe(true)
    }
    for (const at of [2, 10, 60, 4 + 100 + 3, wire.length - 1]) {
      const bad = Buffer.from(wire); bad[at] ^= 1
      expect(() => new RecordOpener(key).push(bad), `bit flipped at ${at}`).toThrow()
    }
    expect(() => new RecordOpener(randomBytes(32)).push(wire)).toThrow(/authentication/)
    // A record announcing more than a receiver accepts is refused before any of it is read.
    const huge = Buffer.alloc(4); huge.writeUInt32BE(MAX_RECORD_BYTES + 1)
    expect(() => new RecordOpener(key).push(huge)).toThrow(/larger than/)
    // Records swapped: the nonces no longer match.
    const swapped = Buffer.concat([...sealRecord(key, 1, plain[0]), ...sealRecord(key, 0, plain[1])])
    expect(() => new RecordOpener(key).push(swapped)).toThrow(/authentication/)
  })

  it('a port that is taken stops the start when chosen, and only turns the channel off when it is the default', async () => {
    const taken = `127.0.0.1:${server.port}`
    await expect(startBulkServer(taken, silentLogger)).rejects.toMatchObject({ code: 'BAD_CONFIG', message: expect.stringMatching(/cannot serve images on .*the address is in use/) })
    expect(await startBulkServer(undefined, silentLogger)).toBeUndefined()
  })
})
