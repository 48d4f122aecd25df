/**
 * Issue 12, points 8 and 9 (resource exhaustion), against real daemons with the attacker on
 * libp2p (test/helpers/attacker.ts) driving the sync protocol frame by frame and gossiping bytes of
 * its choosing:
 * - an over-announced sync stream (a HELLO claiming a billion changes, then frame after frame)
 *   keeps the daemon's memory bounded and its API answering;
 * - a sync peer that dribbles its bytes is cut within the idle timeout (20 s);
 * - a change over 256 KiB is refused by gossip and by sync alike, and its sender penalised;
 *   garbage on the gossip topic is penalised too; a host record over 1 MiB is refused;
 * - held changes (missing predecessor) are bounded by bytes per author: a flood of them from one
 *   author leaves another author's held change in place, and the daemon's memory bounded.
 * What the sync protocol itself must refuse and penalise (more than announced, garbage frames):
 * sync-abuse.test.ts. The limits at the unit level: test/unit/change-log.test.ts,
 * test/unit/rate-limit.test.ts, test/unit/api-server.test.ts (the local API's own limits).
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest'
import { readFile } from 'node:fs/promises'
import * as A from '@automerge/automerge'
import type { TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import {
  joinAttacker, addressOf, waitForFeed, forge, craft, hash16, helloFrame, frontierOf, changesFrame, NetAttacker
} from '../helpers/attacker.ts'
import { Stores, sync, FAST_TMP } from '../helpers/stores.ts'
import { scalars } from '../../crdt/schema.ts'
import { encodeSignedChange, type SignedChange } from '../../crdt/signed-changes.ts'
import { MAX_CHANGE_BYTES } from '../../crdt/feed.ts'
import { IDLE_MS } from '../../crdt/sync.ts'
import { publishHostRecord } from '../../crdt/membership.ts'
import type { StateStore } from '../../crdt/store.ts'
import { attackedMesh, type AttackedMesh } from '../helpers/attacked-mesh.ts'

const CONFIG = 'hypervisor = "none"\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'
const MiB = 2 ** 20
/** How much the over-announced stream sends (PICOCLOUD_ADV_STREAM_MIB). */
const STREAM_MIB = Number(process.env.PICOCLOUD_ADV_STREAM_MIB ?? 2048)

async function rssMiB (d: TestDaemon): Promise<number> {
  const status = await readFile(`/proc/${d.proc?.pid ?? 0}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024
}

/** A change of about `bytes` on top of the attacker's feed (one string field of its own record), not appended. */
function bigChange (m: NetAttacker, bytes: number, field = 'netError'): SignedChange {
  return m.forge(d => { d.host[field] = scalars('x'.repeat(bytes)) })
}

describe('adversarial: limits on what a member can send (real daemons)', () => {
  let t: AttackedMesh | undefined
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined

  beforeAll(async () => {
    t = await attackedMesh(['alpha', 'bravo'], CONFIG)
    ;({ daemons, m } = t)
  })
  afterAll(async () => { await t?.stop() })

  // These two take a while (a stream, a timeout) and use one daemon each: side by side.
  it.concurrent(`an over-announced sync stream (${STREAM_MIB} MiB in 1 MiB frames) keeps the daemon's memory bounded and its API answering`, async () => {
    const attacker = m as NetAttacker
    const [alpha] = daemons
    // Its latest change, big (the daemon holds it): the one change at the daemon's position that
    // the announced gap lets through, as often as the sender likes.
    const big = await attacker.append(d => { d.host.netError = scalars('x'.repeat(250 * 1024)) })
    await attacker.push(await addressOf(alpha), [big])
    await waitForFeed(alpha, attacker)
    const before = await rssMiB(alpha)
    const s = await attacker.rawSync(await addressOf(alpha))
    const frontier = frontierOf(attacker.store).map(e => e[0] === attacker.peerId ? [e[0], 1_000_000_000, e[2]] as [string, number, string] : e)
    await s.write(helloFrame({ mesh: attacker.meshId, frontier, evidence: [] }))
    await s.readHelloAndChanges(AbortSignal.timeout(20_000))
    const frame = changesFrame([big, big, big, big])
    let peak = before
    let slowest = 0
    let cut: string | undefined
    const samples: number[] = []
    const watch = setInterval(() => {
      void rssMiB(alpha).then(r => { peak = Math.max(peak, r); samples.push(Math.round(r)) }, () => {})
      const t = Date.now()
      void alpha.status().then(() => { slowest = Math.max(slowest, Date.now() - t) }, () => { slowest = Infinity })
    }, 250)
    const started = Date.now()
    try {
      while (s.bytesWritten < STREAM_MIB * MiB) {
        try { await s.write(frame, AbortSignal.timeout(30_000)) } catch (err: any) { cut = err.message; break }
      }
    } finally {
      clearInterval(watch)
    }
    const seconds = (Date.now() - started) / 1000
    console.log(`over-announced stream: ${Math.round(s.bytesWritten / MiB)} MiB in ${seconds.toFixed(1)} s${cut === undefined ? '' : ` (cut: ${cut})`}; alpha RSS ${before.toFixed(0)} → peak ${peak.toFixed(0)} MiB; slowest status ${slowest} ms; samples ${samples.join(' ')}`)
    s.abort()
    // Decoding 1 MiB frames of 250 KiB changes grows the heap (Automerge's wasm memory, V8) by about
    // 100 MiB, in steps, over the first ~800 MiB sent; after that it stays flat however long the
    // stream goes on (512 MiB took ~1.7 GiB of RSS before issue 12). Bounded: a plateau, not a
    // slope, so the stream runs long enough (2 GiB) for its second half to show which it is. One
    // step of the heap (~30 MiB, seen at 1,900 MiB with 4 MiB semi-spaces) may fall in the second
    // half; keeping even 6% of the 1 GiB sent in it would add over 60 MiB.
    const half = Math.floor(samples.length / 2)
    const firstHalf = Math.max(before, ...samples.slice(0, half))
    expect(peak - before, 'RSS growth (MiB)').toBeLessThan(150)
    expect(peak - firstHalf, 'RSS growth in the second half of the stream (MiB)').toBeLessThan(60)
    expect(slowest, 'the API answers meanwhile (ms)').toBeLessThan(5000)
    expect((await alpha.status()).state.heads).toContain(A.decodeChange(big.change).hash)
    // What is bounded here is memory, not time: 2 GiB take ~55 s on an idle machine and longer
    // beside other test files (QEMU guests among them).
  }, 150_000)

  it.concurrent('a sync peer that dribbles a frame (a byte a second) is cut within the idle timeout', async () => {
    const attacker = m as NetAttacker
    const [, bravo] = daemons
    const s = await attacker.rawSync(await addressOf(bravo))
    await s.write(helloFrame({ mesh: attacker.meshId, frontier: frontierOf(attacker.store), evidence: [] }))
    await s.readHelloAndChanges(AbortSignal.timeout(20_000))
    // A frame of 64 KiB announced, then its bytes one a second.
    await s.writeRaw(new Uint8Array([0x80, 0x80, 0x04]))
    const started = Date.now()
    let cutAfter: number | undefined
    for (let i = 0; i < 60 && cutAfter === undefined; i++) {
      try {
        await s.writeRaw(new Uint8Array([FRAME_CHANGES]), AbortSignal.timeout(2000))
      } catch {
        cutAfter = Date.now() - started
      }
      if (s.cut) cutAfter ??= Date.now() - started
      await new Promise(resolve => setTimeout(resolve, 1000))
    }
    expect(cutAfter, 'cut after (ms)').toBeDefined()
    expect(cutAfter as number).toBeLessThan(IDLE_MS + 5000)
  }, 90_000)

  it('a change over 256 KiB is refused by gossip and by sync alike, and its sender penalised; garbage on gossip is penalised', async () => {
    const attacker = m as NetAttacker
    const [alpha, bravo] = daemons
    const heads = async (d: TestDaemon): Promise<string> => (await d.status()).state.heads.sort().join()
    const before = await Promise.all(daemons.map(heads))
    const oversized = bigChange(attacker, MAX_CHANGE_BYTES + 1024, 'name')
    expect(oversized.change.length).toBeGreaterThan(MAX_CHANGE_BYTES)
    // By sync to alpha.
    await attacker.push(await addressOf(alpha), [oversized])
    await waitFor(async () => (await alpha.status()).penalties.find(p => p.peerId === attacker.peerId)?.offences.some(o => /bytes \(at most 262144\)/.test(o.reason)),
      { timeoutMs: 10_000, what: 'alpha to penalise the oversized change sent by sync' })
    // By gossip to bravo (and alpha), and garbage after it.
    await attacker.subscribe()
    await waitFor(async () => attacker.node.services.pubsub.getSubscribers(attacker.topic).length >= 2, { timeoutMs: 10_000, what: 'the daemons to be topic peers' })
    await attacker.gossip(encodeSignedChange(oversized))
    await waitFor(async () => (await bravo.status()).penalties.find(p => p.peerId === attacker.peerId)?.offences.some(o => /bytes \(at most 262144\)/.test(o.reason)),
      { timeoutMs: 10_000, what: 'bravo to penalise the oversized change sent by gossip' })
    await attacker.gossip(new TextEncoder().encode('not a change at all'))
    await waitFor(async () => (await bravo.status()).penalties.find(p => p.peerId === attacker.peerId)?.offences.some(o => /undecodable change on gossip/.test(o.reason)),
      { timeoutMs: 10_000, what: 'bravo to penalise garbage on gossip' })
    expect(await Promise.all(daemons.map(heads))).toEqual(before)
  })

  it('a flood of 40 MiB of changes that can never apply leaves another member\'s held change in place, and the daemon\'s memory bounded', async () => {
    const attacker = m as NetAttacker
    const [alpha] = daemons
    const other = await joinAttacker(daemons, 'trudy')
    try {
      const first = await other.append(d => { d.host.name = scalars('trudy-1') })
      const second = await other.append(d => { d.host.name = scalars('trudy-2') })
      await other.push(await addressOf(alpha), [second], { exactly: true })
      await waitFor(async () => (await alpha.status()).state.pending === 1, { what: 'alpha to hold trudy\'s second change' })
      const before = await rssMiB(alpha)
      const base = attacker.forge(d => { d.host.netError = scalars('z'.repeat(250 * 1024)) })
      // Far ahead of anything it will sign later (the same sequence number twice is equivocation).
      const flood = Array.from({ length: 160 }, (_, i) => craft(attacker.key, base, d => { d.seq += 100_000 + i }))
      await attacker.push(await addressOf(alpha), flood, { exactly: true, frontier: [...frontierOf(attacker.store).filter(e => e[0] !== attacker.peerId), [attacker.peerId, 1_000_000_000, hash16(base)]] })
      const s = await alpha.status()
      expect(s.state.pendingBytes, 'bytes held').toBeLessThanOrEqual(16 * MiB + second.change.length + 1024)
      expect((await rssMiB(alpha)) - before, 'RSS growth (MiB)').toBeLessThan(100)
      await other.push(await addressOf(alpha), [first])
      await waitForFeed(alpha, other)
    } finally {
      await other.stop()
    }
  })

  it('a host record over 1 MiB, built from changes each under 256 KiB, is refused at the change that crosses the limit', async () => {
    // A member of its own: the one above has spent its per-author rate (64 KiB/s after 4 MiB).
    const attacker = await joinAttacker(daemons, 'big-record')
    const [alpha] = daemons
    const fields = ['wgPublicKey', 'version', 'netError', 'name', 'updated']
    const changes: SignedChange[] = []
    for (const f of fields) changes.push(forge(attacker.key, [...attacker.feed, ...changes], d => { d.host[f] = scalars('y'.repeat(240 * 1024)) }))
    await attacker.push(await addressOf(alpha), changes)
    const reason = await waitFor(async () => (await alpha.status()).penalties.find(p => p.peerId === attacker.peerId)?.offences.find(o => /host record .* bytes \(at most 1048576\)/.test(o.reason)),
      { timeoutMs: 10_000, what: 'alpha to refuse the record over 1 MiB' })
    expect(reason.reason).toMatch(/change \d+ of/)
    const held = (await alpha.status()).state.heads
    expect(held).toContain(A.decodeChange(changes[3].change).hash)
    expect(held).not.toContain(A.decodeChange(changes[4].change).hash)
    await attacker.stop()
  })

  it('a member flooding its own feed by gossip (10 MiB of valid changes at once) is held to its rate at the first honest host and penalised', async () => {
    // A member of its own (gossipsub's scores already count the other's invalid messages).
    const flooder = await joinAttacker(daemons, 'flooder')
    try {
      const [, bravo] = daemons
      const flood: SignedChange[] = []
      for (let i = 0; i < 40; i++) flood.push(await flooder.append(d => { d.host.netError = scalars(`${i}`.padEnd(250 * 1024, 'g')) }))
      await flooder.subscribe()
      await waitFor(async () => flooder.node.services.pubsub.getSubscribers(flooder.topic).length >= 2, { timeoutMs: 10_000, what: 'the daemons to be topic peers' })
      for (const c of flood) await flooder.gossip(encodeSignedChange(c))
      await waitFor(async () => (await bravo.status()).penalties.find(p => p.peerId === flooder.peerId)?.offences.some(o => /per-author gossip limit/.test(o.reason)),
        { timeoutMs: 15_000, what: 'bravo to penalise the flood' })
      const heads = (await bravo.status()).state.heads
      expect(heads, 'not all of the flood taken at once').not.toContain(A.decodeChange(flood.at(-1)?.change as Uint8Array).hash)
    } finally {
      await flooder.stop()
    }
  })

})

const FRAME_CHANGES = 2

describe('adversarial: held changes are bounded by bytes per author', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup(FAST_TMP) })
  afterEach(async () => { await t.teardown() })

  /** `n` distinct changes of `key`'s author, each about 250 KiB, none applicable (they skip ahead). */
  function orphans (key: Parameters<typeof forge>[0], feed: SignedChange[], n: number): SignedChange[] {
    const big = forge(key, feed, d => { d.host.netError = scalars('z'.repeat(250 * 1024)) })
    return Array.from({ length: n }, (_, i) => craft(key, big, d => { d.seq += 2 + i }))
  }

  it('a flood of changes with missing predecessors from one member does not push out another member\'s held change, and stays within its share', async () => {
    const { stores: [a, m1, m2], keys: [, k1, k2] } = await t.mesh(3)
    await sync(a, m1); await sync(a, m2)
    // M2's next two changes; the second reaches A first and waits for the first.
    await publishHostRecord(m2, { name: 'one', addresses: [], wgPublicKey: '', version: 't' })
    await publishHostRecord(m2, { name: 'two', addresses: [], wgPublicKey: '', version: 't' })
    const [first, second] = own(m2).slice(-2)
    await a.receive([second], m2.self)
    expect(a.pendingCount).toBe(1)
    // M1 floods A with 24 MiB of changes that can never apply.
    const flood = orphans(k1, own(m1), 96)
    for (let i = 0; i < flood.length; i += 8) await a.receive(flood.slice(i, i + 8), m1.self)
    expect(a.pendingBytes).toBeLessThanOrEqual(16 * MiB + 2 * second.change.length + 1024)
    // M2's held change is still there: its predecessor makes both apply.
    const r = await a.receive([first], m2.self)
    expect(r.applied.map(v => v.hash)).toEqual([hashOf(first), hashOf(second)])
    expect(a.doc.hosts[m2.self].name).toBe('two')
    void k2
  })
})

const own = (s: StateStore): SignedChange[] => s.feeds.get(s.self)?.changesAfter(0) ?? []
const hashOf = (c: SignedChange): string => A.decodeChange(c.change).hash
