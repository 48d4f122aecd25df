/**
 * Issue 12, point 7: "the receiver charges the relayer (an honest host) and penalises it". A
 * change is blamed on the host that sent it only when that host could have known better; an
 * honest host that passes on a valid change, or the evidence of an equivocation, is never blamed,
 * and a sync between two honest hosts never ends as misbehaviour. In-process stores; the same over
 * real daemons (penalties in `status`): equivocation.test.ts. Found by the fuzzer (fuzz.test.ts, d).
 */
import { describe, it, expect, beforeEach, afterEach, beforeAll, afterAll } from 'vitest'
import * as A from '@automerge/automerge'
import type { StateStore, Rejection } from '../../crdt/store.ts'
import { SyncError } from '../../crdt/sync.ts'
import { publishHostRecord } from '../../crdt/membership.ts'
import { scalars } from '../../crdt/schema.ts'
import { Stores, sync, FAST_TMP } from '../helpers/stores.ts'
import { forge, joinAttacker, addressOf, waitForFeed, hash16, type NetAttacker } from '../helpers/attacker.ts'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'

const own = (s: StateStore) => s.feeds.get(s.self)?.changesAfter(0) ?? []
const record = (name: string) => ({ name, addresses: [], wgPublicKey: '', version: 't' })

/** Rejections `s` holds against a sender, as the daemon would penalise them. */
function blames (s: StateStore): Array<Rejection & { from?: string }> {
  const out: Array<Rejection & { from?: string }> = []
  s.on('rejected', r => { if (r.blame === 'sender') out.push(r) })
  return out
}

/** A sync that reports its failure instead of throwing. */
async function trySync (a: StateStore, b: StateStore): Promise<string | undefined> {
  try { await sync(a, b); return undefined } catch (err: any) { return `${err instanceof SyncError ? err.code : err.name}: ${err.message}` }
}

describe('adversarial: the honest relayer is never blamed', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup(FAST_TMP) })
  afterEach(async () => { await t.teardown() })

  it('a change that breaks its feed\'s rules, held for a missing predecessor, is not blamed on the honest host that later sends the predecessor', async () => {
    const { stores: [a, b, m], keys: [, , mKey] } = await t.mesh(3)
    await sync(a, m); await sync(b, m)
    // M's next valid change goes to B only; its change after that (writing a part of the state
    // that is nobody's) goes to A first, where it waits for its predecessor.
    await publishHostRecord(m, record('valid'))
    const next = own(m).at(-1)!
    const bad = forge(mKey, own(m), d => { d.hosts = { [a.self]: { name: 'owned' } } })
    expect((await a.receive([bad], m.self)).pending).toBe(1)
    await b.receive([next], m.self)
    const onA = blames(a)
    // B, honest, passes M's valid change on to A (by sync here; by gossip it is the same receive).
    const failed = await trySync(a, b)
    expect(onA.filter(r => r.from === b.self).map(r => r.reason), 'A blames B').toEqual([])
    expect(failed, 'the sync of two honest hosts').toBeUndefined()
    // A holds M's valid change, and refused the bad one.
    expect(a.feeds.get(m.self)?.seq).toBe(own(m).length)
    expect(a.doc.hosts[m.self].name).toBe('valid')
  })

  it('a change of a forked chain, held at one host, is not blamed on the honest host that brings the other fork\'s predecessor', async () => {
    const { stores: [a, b, m], keys: [, , mKey] } = await t.mesh(3)
    await sync(a, m); await sync(b, m)
    const base = own(m)
    // M equivocates at n+1 and builds on fork X: X's n+2 reaches A before anything else does.
    const x1 = forge(mKey, base, d => { d.host.name = scalars('x1') })
    const x2 = forge(mKey, [...base, x1], d => { d.host.name = scalars('x2') })
    const y1 = forge(mKey, base, d => { d.host.name = scalars('y1') })
    await a.receive([x2], m.self)
    await b.receive([y1], m.self)
    const onA = blames(a)
    const failed = await trySync(a, b)
    expect(onA.filter(r => r.from === b.self).map(r => r.reason), 'A blames B').toEqual([])
    expect(failed, 'the sync of two honest hosts').toBeUndefined()
  })

  it('a host that holds evidence of an equivocation syncs with one that does not yet: the other\'s changes past the cut are no misbehaviour, and the evidence reaches it', async () => {
    const { stores: [a, b, c, m], keys: [, , , mKey] } = await t.mesh(4)
    for (const s of [a, b, c]) await sync(s, m)
    const base = own(m)
    const forkA = forge(mKey, base, d => { d.host.name = scalars('fork-a') })
    const forkA2 = forge(mKey, [...base, forkA], d => { d.host.name = scalars('fork-a2') })
    const forkB = forge(mKey, base, d => { d.host.name = scalars('fork-b') })
    // A holds fork A (two changes); C holds fork B and, given fork A too, the evidence.
    await a.receive([forkA, forkA2], m.self)
    await c.receive([forkB], m.self)
    await c.receive([forkA], m.self)
    expect(c.evidence()).toHaveLength(1)
    // C starts the sync with A (as anti-entropy may): A sends what C lacks by C's frontier.
    expect(await trySync(c, a), 'the sync of two honest hosts').toBeUndefined()
    expect(a.evidence()).toHaveLength(1)
    expect(a.digestInput().sort()).toEqual(c.digestInput().sort())
  })
})

describe('adversarial: the honest relayer is never penalised (three real daemons)', () => {
  let mesh: TestMesh
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined

  beforeAll(async () => {
    mesh = await TestMesh.create()
    daemons = await mesh.form(['alpha', 'bravo', 'charlie'], 'hypervisor = "none"\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n')
    m = await joinAttacker(daemons)
  })
  afterAll(async () => {
    await m?.stop()
    await mesh.stopAll()
  })

  it('the attacker hands alpha a bad change ahead of its valid one, and bravo the valid one, five times: alpha takes each valid one from an honest host, penalises none and stays connected to both', async () => {
    const attacker = m as NetAttacker
    const [alpha, bravo] = daemons
    const honest = new Map(await Promise.all(daemons.map(async d => [(await d.id()).peerId, d.name] as const)))
    for (let round = 0; round < 5; round++) {
      const next = await attacker.append(d => { d.host.name = scalars(`valid-${round}`) })
      const bad = forge(attacker.key, attacker.feed, d => { d.hosts = { x: { name: 'owned' } } })
      const seq = attacker.feed.length
      expect(A.decodeChange(next.change).seq).toBe(seq)
      await attacker.push(await addressOf(alpha), [bad], { exactly: true, frontier: [[attacker.peerId, seq + 1, hash16(bad)]] })
      await waitFor(async () => (await alpha.status()).state.pending > 0, { what: 'alpha to hold the bad change' })
      await attacker.push(await addressOf(bravo), [next])
      await waitForFeed(alpha, attacker, seq)
    }
    for (const d of daemons) {
      const s = await d.status()
      const blamed = s.penalties.filter(p => honest.has(p.peerId)).map(p => `${honest.get(p.peerId) ?? ''}: ${p.offences.map(o => o.reason).join('; ')}`)
      expect(blamed, `${d.name} penalises an honest host`).toEqual([])
    }
    const peers = (await alpha.status()).peers.map(p => honest.get(p.peerId)).filter(n => n !== undefined).sort()
    expect(peers, 'alpha\'s connections to the honest hosts').toEqual(['bravo', 'charlie'])
  })
})
