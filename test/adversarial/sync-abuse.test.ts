/**
 * Issue 12, point 8: the sync protocol abused by a member (test/helpers/attacker.ts drives it frame
 * by frame against a real daemon). docs/byzantine.md: a sync carries "exactly what the peer's
 * HELLO announced … applied frame by frame; 20 s per read, 5 min per sync", the penalty hitting
 * the peer. Each abuse must end the stream and count against the attacker in `status` penalties:
 * more changes than announced, a change of a feed it did not announce, garbage frames, a frame
 * over the limit (and on gossip, a message over the RPC limit). And a peer that stops reading what the daemon sends is cut within the idle
 * timeout, as one that stops writing is (limits.test.ts). And the per-author rate that holds a
 * member flooding its own feed by gossip (limits.test.ts) holds by sync too; evidence of
 * "equivocations" by keys that are no members of the mesh is neither kept nor spread.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import type { TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import {
  joinAttacker, addressOf, waitForFeed, frontierOf, helloFrame, changesFrame, frame, itemsFrame, FRAME, randomPeer,
  type NetAttacker, type RawSync
} from '../helpers/attacker.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { readFile } from 'node:fs/promises'
import { scalars } from '../../crdt/schema.ts'
import * as A from '@automerge/automerge'
import { IDLE_MS, MAX_FRAME } from '../../crdt/sync.ts'
import { makeEvidence, encodeEvidence } from '../../crdt/evidence.ts'
import { verifyChange } from '../../crdt/signed-changes.ts'
import { forge } from '../helpers/attacker.ts'
import { attackedMesh, type AttackedMesh } from '../helpers/attacked-mesh.ts'

const CONFIG = 'hypervisor = "none"\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

describe('adversarial: sync abuse is cut and penalised (real daemons)', () => {
  let t: AttackedMesh | undefined
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined

  beforeAll(async () => {
    t = await attackedMesh(['alpha', 'bravo'], CONFIG)
    ;({ daemons, m } = t)
  })
  afterAll(async () => { await t?.stop() })

  /** Opens a sync with HELLO (its true frontier unless given) and reads the daemon's side to END. */
  async function opened (d: TestDaemon, frontier?: Array<[string, number, string]>): Promise<RawSync> {
    const attacker = m as NetAttacker
    const s = await attacker.rawSync(await addressOf(d))
    await s.write(helloFrame({ mesh: attacker.meshId, frontier: frontier ?? frontierOf(attacker.store), evidence: [] }))
    await s.readHelloAndChanges(AbortSignal.timeout(20_000))
    return s
  }

  /** The daemon ends the stream (a read fails) within a few seconds. */
  async function isCut (s: RawSync): Promise<boolean> {
    try {
      for (;;) await s.read(AbortSignal.timeout(5000))
    } catch (err: any) {
      return !/aborted|timeout/i.test(String(err?.name) + String(err?.message))
    }
  }

  async function penalised (d: TestDaemon, reason: RegExp): Promise<void> {
    const attacker = m as NetAttacker
    await waitFor(async () => (await d.status()).penalties.find(p => p.peerId === attacker.peerId)?.offences.some(o => reason.test(o.reason)),
      { timeoutMs: 5000, what: `${d.name} to penalise the attacker for ${String(reason)}` })
  }

  it('more CHANGES than its HELLO announced: the stream is cut and the sender penalised', async () => {
    const attacker = m as NetAttacker
    const [alpha] = daemons
    const last = attacker.feed.at(-1)
    if (last === undefined) throw new Error('no feed')
    // Its frontier as the daemon has it: one change per feed may come (a fork proof); it sends ten.
    const s = await opened(alpha)
    await s.write(changesFrame(Array.from({ length: 10 }, () => last)))
    expect(await isCut(s)).toBe(true)
    await penalised(alpha, /more changes than it announced/)
  })

  it('a change of a feed it did not announce: cut and penalised', async () => {
    const attacker = m as NetAttacker
    const [alpha] = daemons
    const next = await attacker.append(d => { d.host.name = scalars('unannounced') })
    const s = await opened(alpha, frontierOf(attacker.store).filter(e => e[0] !== attacker.peerId))
    await s.write(changesFrame([next]))
    expect(await isCut(s)).toBe(true)
    await penalised(alpha, /outside what it announced/)
    await attacker.push(await addressOf(alpha), [next])
    await waitForFeed(alpha, attacker)
  })

  it('garbage frames (empty, unknown type, truncated items, undecodable change): each cut and penalised', async () => {
    const [, bravo] = daemons
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ['an empty frame', new Uint8Array(), /empty frame/],
      ['an unknown frame type', frame(42, new Uint8Array([1, 2, 3])), /unexpected frame type/],
      ['a truncated item', frame(FRAME.CHANGES, new Uint8Array([0, 0, 1, 0, 7, 7])), /truncated/],
      ['an undecodable change', itemsFrame(FRAME.CHANGES, [new Uint8Array(200).fill(9)]), /undecodable change/]
    ]
    for (const [what, bytes, reason] of cases) {
      const s = await opened(bravo)
      await s.write(bytes)
      expect(await isCut(s), what).toBe(true)
      await penalised(bravo, reason)
    }
  })

  it('a malformed HELLO, and a frame over 1 MiB: cut and penalised', async () => {
    const attacker = m as NetAttacker
    const [alpha, bravo] = daemons
    const s = await attacker.rawSync(await addressOf(alpha))
    await s.write(frame(FRAME.HELLO, new TextEncoder().encode(JSON.stringify({ mesh: attacker.meshId, frontier: [[await randomPeer(), -1, 'zz']], evidence: ['x'] }))))
    expect(await isCut(s), 'malformed HELLO').toBe(true)
    await penalised(alpha, /malformed HELLO/)
    const big = await opened(bravo)
    await big.write(frame(FRAME.CHANGES, new Uint8Array(MAX_FRAME + 1024)))
    expect(await isCut(big), 'a frame over 1 MiB').toBe(true)
    await waitFor(async () => (await bravo.status()).penalties.find(p => p.peerId === attacker.peerId)?.offences.some(o => /too long|length|frame/i.test(o.reason) && !/truncated|empty|unexpected/.test(o.reason)),
      { timeoutMs: 5000, what: 'bravo to penalise a frame over the limit' })
  })

  it('a peer that asks for everything and then stops reading is cut within the idle timeout', async () => {
    const [alpha] = daemons
    // Enough in the daemon's state that its side cannot fit in the stream's buffers: 12 MiB of
    // valid changes, from four members (each within the per-author burst of 4 MiB).
    const bulk: NetAttacker[] = []
    try {
      for (let k = 0; k < 4; k++) {
        const b = await joinAttacker(daemons, `bulk-${k}`)
        bulk.push(b)
        for (let i = 0; i < 12; i++) await b.append(d => { d.host.netError = scalars(`${i}`.padEnd(250 * 1024, 'w')) })
        await b.push(await addressOf(alpha), b.feed)
        await waitForFeed(alpha, b)
      }
    } finally {
      for (const b of bulk) await b.stop()
    }
    const attacker = await joinAttacker(daemons, 'non-reader')
    const s = await attacker.rawSync(await addressOf(alpha))
    await s.write(helloFrame({ mesh: attacker.meshId, frontier: [], evidence: [] }))
    // Reads nothing at all from here on.
    const started = Date.now()
    const cutAfter = await waitFor(async () => s.cut && Date.now() - started, { timeoutMs: IDLE_MS + 15_000, intervalMs: 500, what: 'alpha to cut a peer that does not read' }).catch(() => undefined)
    s.abort()
    await attacker.stop()
    expect(cutAfter, `cut within ${IDLE_MS + 5000} ms`).toBeDefined()
    expect(cutAfter as number).toBeLessThan(IDLE_MS + 5000)
  }, 150_000)

  it('a gossip message over the RPC limit (2 MiB): the daemons stay up and connected, and penalise the sender as for a sync frame over its limit', async () => {
    const attacker = m as NetAttacker
    await attacker.subscribe()
    await waitFor(async () => attacker.node.services.pubsub.getSubscribers(attacker.topic).length >= 2, { timeoutMs: 10_000, what: 'the daemons to be topic peers' })
    await attacker.gossip(new Uint8Array(2 * 2 ** 20).fill(7)).catch(() => {})
    for (const d of daemons) {
      expect((await d.status()).peers.length, `${d.name} keeps its peers`).toBeGreaterThan(0)
      await waitFor(async () => (await d.status()).penalties.some(p => p.peerId === attacker.peerId && p.offences.some(o => /gossip|too (long|large)|limit/i.test(o.reason) && !/undecodable/.test(o.reason))),
        { timeoutMs: 5000, what: `${d.name} to penalise a gossip message over the limit` })
    }
  })

  it('a member flooding its own feed by sync is held to the same per-author rate as by gossip, and penalised', async () => {
    const [alpha] = daemons
    const flooder = await joinAttacker(daemons, 'sync-flooder')
    try {
      const flood = []
      for (let i = 0; i < 40; i++) flood.push(await flooder.append(d => { d.host.netError = scalars(`${i}`.padEnd(250 * 1024, 's')) }))
      const started = Date.now()
      const pushed = await flooder.push(await addressOf(alpha), flooder.feed)
      expect(pushed.error).toBeUndefined()
      await waitForFeed(alpha, flooder).catch(() => {})
      const seconds = (Date.now() - started) / 1000
      // What gossip would let through in that time: a 4 MiB burst and 64 KiB/s.
      const allowed = 4 * 2 ** 20 + 64 * 1024 * seconds
      const s = await alpha.status()
      const head = flood.findIndex(c => s.state.heads.includes(hashOfChange(c)))
      const taken = flood.slice(0, head + 1).reduce((n, c) => n + c.change.length, 0)
      expect(taken, `bytes of the flood taken in ${seconds.toFixed(1)} s (at most ${Math.round(allowed / 1024)} KiB)`).toBeLessThanOrEqual(allowed)
      expect(s.penalties.find(p => p.peerId === flooder.peerId)?.offences.map(o => o.reason).join('\n') ?? '', 'penalised for its rate').toMatch(/limit|rate/)
    } finally {
      await flooder.stop()
    }
  }, 90_000)

  it('evidence of equivocations by 1,000 keys that are no members is neither kept, nor listed, nor spread to the other daemons', async () => {
    // A fresh member: the one the tests above used is penalised past the limit by now.
    const attacker = await joinAttacker(daemons, 'evidence')
    const [alpha, bravo] = daemons
    const items: Uint8Array[] = []
    const ids: string[] = []
    for (let i = 0; i < 1000; i++) {
      const k = await generateKeyPair('Ed25519')
      const e = makeEvidence(await verifyChange(forge(k, [], d => { d.host = { name: 'x' } })), await verifyChange(forge(k, [], d => { d.host = { name: 'y' } })))
      if (e === undefined) throw new Error('no evidence')
      items.push(encodeEvidence(e))
      ids.push(e.id)
    }
    const before = await Promise.all([alpha, bravo].map(async d => await d.status()))
    const logBefore = (await readFile(`${alpha.state}/changes.log`)).length
    const s = await attacker.rawSync(await addressOf(alpha))
    await s.write(helloFrame({ mesh: attacker.meshId, frontier: frontierOf(attacker.store), evidence: ids }))
    await s.readHelloAndChanges(AbortSignal.timeout(20_000))
    for (let i = 0; i < items.length; i += 250) await s.write(itemsFrame(FRAME.EVIDENCE, items.slice(i, i + 250))).catch(() => {})
    await s.write(frame(FRAME.END)).catch(() => {})
    await new Promise(resolve => setTimeout(resolve, 5000))
    const after = await Promise.all([alpha, bravo].map(async d => await d.status()))
    for (const [i, d] of [alpha, bravo].entries()) {
      expect(after[i].state.equivocations.length, `${d.name}: equivocations listed`).toBe(before[i].state.equivocations.length)
      expect(after[i].state.feeds, `${d.name}: feeds`).toBe(before[i].state.feeds)
    }
    expect((await readFile(`${alpha.state}/changes.log`)).length - logBefore, 'bytes alpha wrote to its log').toBeLessThan(64 * 1024)
    await attacker.stop()
  })
})

const hashOfChange = (c: { change: Uint8Array }): string => A.decodeChange(c.change).hash
