/**
 * Issue 12, points 1 and 2 (backdated writes, padding, admissions naming anyone), at the level of
 * the replicated state: in-process StateStores synced with the real sync protocol, an attacking
 * member that signs with its own valid key whatever it likes (test/helpers/attacker.ts). Every
 * verdict is checked on several honest hosts and for every order in which the contested changes
 * can arrive (each order on a fresh host that had everything else first).
 *
 * The same attacks against real daemons, with the attacker on libp2p: fuzz.test.ts (daemon variant)
 * and equivocation.test.ts. Unit tests of the same rules: test/unit/store.test.ts.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { StateStore } from '../../crdt/store.ts'
import type { SignedChange } from '../../crdt/signed-changes.ts'
import { admit, expel, setMeshPolicy, seenNow } from '../../crdt/membership.ts'
import { deriveWorld } from '../../crdt/world.ts'
import { scalars } from '../../crdt/schema.ts'
import { Stores, sync, FAST_TMP } from '../helpers/stores.ts'
import { forge, forgeChain, event, pushEvents, peerOf } from '../helpers/attacker.ts'
import { fakeRequest, storeRequest, judgeRequests, issuer, trusting, RESOURCES } from '../helpers/fake-requests.ts'

/** Everything a host's view holds, comparable across hosts. */
const view = (s: StateStore): unknown => JSON.parse(JSON.stringify({ ...s.doc, requests: [...s.doc.requests].sort() }))
const ownFeed = (s: StateStore): SignedChange[] => s.feeds.get(s.self)?.changesAfter(0) ?? []

/** All orders of `xs`. */
function permutations<T> (xs: T[]): T[][] {
  if (xs.length <= 1) return [xs]
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map(p => [x, ...p]))
}

/** Syncs every pair of stores, both ways. */
async function syncAll (stores: StateStore[]): Promise<void> {
  for (const a of stores) for (const b of stores) if (a !== b) await sync(a, b)
}

describe('adversarial: membership cannot be rewritten by what a member leaves out or pads', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup(FAST_TMP) })
  afterEach(async () => { await t.teardown() })

  /**
   * A fresh honest host that first gets `base` (everything but the contested changes), then the
   * contested ones one by one in `order`.
   */
  async function observe (base: SignedChange[], order: SignedChange[]): Promise<StateStore> {
    const o = await t.store()
    o.joining = ''
    await o.receive(base)
    o.joining = undefined
    expect(o.inMesh).toBe(true)
    for (const c of order) await o.receive([c])
    return o
  }

  /** Every order of `contested` on a fresh host each; `check` on each; all end with one view. */
  async function everyOrder (base: SignedChange[], contested: SignedChange[], check: (s: StateStore, order: string) => void): Promise<void> {
    let first: unknown
    const names = new Map(contested.map((c, i) => [c, String.fromCharCode(97 + i)]))
    for (const order of permutations(contested)) {
      const o = await observe(base, order)
      const label = order.map(c => names.get(c)).join('')
      check(o, label)
      first ??= view(o)
      expect(view(o), `order ${label}`).toEqual(first)
    }
  }

  it('an expelled member\'s later acts (admitting, expelling, re-admitting) never count, on any host, in any order, whether it knew of its expulsion or not', async () => {
    const { stores: [f, h1, h2, x, m], keys: [, , , , mKey] } = await t.mesh(5)
    await syncAll([f, h1, h2, x, m])
    // M is an expeller (so its acts would count if it still were), X is expelled by the founder.
    await setMeshPolicy(f, { expellers: [m.self] })
    await expel(f, x.self, 'the founder expels X')
    await sync(m, f)
    // An act M makes while it is a member, that the founder saw before expelling it: it stands.
    const n0 = peerOf(await generateKeyPair('Ed25519'))
    await admit(m, n0, 'admitted-in-time')
    await sync(f, m)
    await expel(f, m.self, 'rogue')
    const expulsion = ownFeed(f).at(-1) as SignedChange

    const [n1, n2] = [peerOf(await generateKeyPair('Ed25519')), peerOf(await generateKeyPair('Ed25519'))]
    // (1) M did not know: it acts on its own view, its `seen` honestly without the expulsion.
    await admit(m, n1, 'late')
    await expel(m, h1.self, 'spite')
    await admit(m, x.self, 'back')
    const unaware = ownFeed(m).slice(-3)
    const before = ownFeed(m).slice(0, -3)
    // (2) M knew (it synced with the founder) and claims to have seen everything but the
    // expulsion: a backdated write, signed on its feed as it was before (1).
    await sync(m, f)
    const seen = seenNow(m)
    seen[f.self] = `${ownFeed(f).length - 1}:${(f.feeds.get(f.self)?.hashAt(ownFeed(f).length - 1) as string).slice(0, 16)}`
    const backdated = forgeChain(mKey, before, [
      pushEvents(event({ op: 'admit', peer: n2, name: 'late' }, seen)),
      pushEvents(event({ op: 'expel', peer: h2.self, reason: 'spite' }, seen)),
      pushEvents(event({ op: 'admit', peer: x.self, name: 'back' }, seen))
    ])

    const base = [...ownFeed(f).slice(0, -1), ...[h1, h2, x].flatMap(ownFeed), ...before]
    const check = (s: StateStore, order: string): void => {
      const members = s.doc.members
      expect(members[m.self]?.expelled?.by, order).toBe(f.self)
      expect(members[n0]?.expelled, `${order}: an act from before the expulsion stands`).toBeUndefined()
      expect(members[n0]?.admittedBy, order).toBe(m.self)
      for (const n of [n1, n2]) expect(members[n], `${order}: admitted after the expulsion`).toBeUndefined()
      for (const h of [h1, h2]) expect(members[h.self]?.expelled, `${order}: expelled by an expelled member`).toBeUndefined()
      expect(members[x.self]?.expelled?.by, `${order}: re-admitted by an expelled member`).toBe(f.self)
      expect(s.doc.hosts[m.self], order).toBeUndefined()
      expect(s.state().problems.get(m.self)?.join('\n') ?? '', order).toMatch(/does not count/)
    }
    await everyOrder(base, [expulsion, ...unaware], check)
    await everyOrder(base, [expulsion, ...backdated], check)
  })

  it('the real hosts agree, whichever of them hears of the expulsion first', async () => {
    const { stores: [f, h1, h2, m] } = await t.mesh(4)
    await syncAll([f, h1, h2, m])
    await expel(f, m.self, 'rogue')
    const newcomer = peerOf(await generateKeyPair('Ed25519'))
    await admit(m, newcomer, 'late')
    // H1 hears M first, H2 the founder first; then everyone syncs with everyone.
    await sync(h1, m); await sync(h2, f)
    expect(h1.doc.members[newcomer]).toBeDefined()
    await sync(h1, f); await sync(h2, m)
    await syncAll([f, h1, h2])
    for (const s of [f, h1, h2]) {
      expect(s.doc.members[newcomer]).toBeUndefined()
      expect(s.doc.members[m.self].expelled?.by).toBe(f.self)
    }
    expect(view(h1)).toEqual(view(f))
    expect(view(h2)).toEqual(view(f))
    expect(h1.digestInput()).toEqual(f.digestInput())
  })

  it('a demoted expeller\'s expulsions concurrent with its demotion do not count (whether it knew or not); its expulsion the founder saw before the demotion does', async () => {
    const { stores: [f, h1, h2, h3, m], keys: [, , , , mKey] } = await t.mesh(5)
    await syncAll([f, h1, h2, h3, m])
    await setMeshPolicy(f, { expellers: [m.self] })
    await sync(m, f)
    // Seen by the founder before it demotes M: stands.
    await expel(m, h3.self, 'in time')
    await sync(f, m)
    await setMeshPolicy(f, { expellers: [] })
    const demotion = ownFeed(f).at(-1) as SignedChange
    // Concurrent with the demotion (M had not seen it) …
    await expel(m, h1.self, 'concurrent')
    const concurrent = ownFeed(m).at(-1) as SignedChange
    // … and backdated (M leaves the demotion out of what it claims to have seen).
    const seen = seenNow(f)
    seen[f.self] = `${ownFeed(f).length - 1}:${(f.feeds.get(f.self)?.hashAt(ownFeed(f).length - 1) as string).slice(0, 16)}`
    delete seen[m.self]
    const backdated = forge(mKey, ownFeed(m).slice(0, -1), pushEvents(event({ op: 'expel', peer: h2.self, reason: 'backdated' }, seen)))
    const base = [...ownFeed(f).slice(0, -1), ...[h1, h2, h3].flatMap(ownFeed), ...ownFeed(m).slice(0, -1)]
    const check = (s: StateStore, order: string): void => {
      expect(s.doc.members[h3.self]?.expelled?.by, order).toBe(m.self)
      for (const h of [h1, h2]) expect(s.doc.members[h.self]?.expelled, order).toBeUndefined()
      expect(s.doc.members[m.self]?.expelled, `${order}: demoted, not expelled`).toBeUndefined()
      expect(s.doc.mesh.policy.expellers, order).toEqual([])
    }
    await everyOrder(base, [demotion, concurrent], check)
    await everyOrder(base, [demotion, backdated], check)
  })

  it('a change padded with 20,000 operations changes nothing for anyone else: another host\'s stored request, its record and the world stay as they are, also after a restart', async () => {
    const { stores: [f, h1, h2, m], keys: [fKey, , , mKey] } = await t.mesh(4)
    const user = issuer(1)
    for (const s of [f, h1, h2]) await s.change('resources', (d: any) => { d.host.resources = scalars(RESOURCES); d.host.policy = scalars(trusting(user)) })
    const r = fakeRequest(f.meshId as string, user, 'vm.create', { name: 'victim', image: 'tiny', type: 'small' })
    await h1.change('store', storeRequest(r))
    await syncAll([f, h1, h2, m])
    const worldOf = async (s: StateStore): Promise<unknown> => {
      const w = deriveWorld(s.doc, await judgeRequests(s.doc))
      return JSON.parse(JSON.stringify({ vms: [...w.vms], requests: [...w.requests] }))
    }
    const worldBefore = await worldOf(f)
    expect((await judgeRequests(f.doc))(r.id, h1.self)?.ok).toBe(true)

    const tampered = { ...r, signature: 'broken' }
    const pad = (d: any): void => {
      d.host.pad ??= {}
      for (let i = 0; i < 20_000; i++) d.host.pad[`k${i}`] = i
    }
    // Valid for its feed (its own record, its own copy of the request id): applied, and harmless.
    const own = forge(mKey, ownFeed(m), d => { pad(d); storeRequest(tampered, new Date(Date.now() - 60_000))(d) })
    // The same, made to depend on H1's feed and written over H1's copy: refused.
    const onH1 = forge(mKey, ownFeed(m), d => { pad(d); d.requests ??= {}; d.requests[r.id] = scalars({ payload: r.payload, signature: 'broken', at: new Date().toISOString() }) }, { extraDeps: ownFeed(h1) })
    for (const s of [f, h1, h2]) {
      const refused = await s.receive([onH1], m.self)
      expect(refused.rejected[0]?.reason).toMatch(/must depend on its previous change only/)
      const applied = await s.receive([own], m.self)
      expect(applied.applied).toHaveLength(1)
    }
    for (const s of [f, h1, h2]) {
      const copies = s.doc.requests.get(r.id) ?? []
      expect(copies.find(c => c.via === h1.self)?.signature).toBe(r.signature)
      expect(await worldOf(s)).toEqual(worldBefore)
      expect(s.doc.hosts[h1.self]).toEqual(h1.doc.hosts[h1.self])
    }
    // The founder restarts: the same world from its log.
    const again = await t.reopen(f, fKey)
    expect(await worldOf(again)).toEqual(worldBefore)
  })

  it('a member cannot change or remove its own stored request, however many operations it pads the change with', async () => {
    const { stores: [f, h1, m], keys: [, , mKey] } = await t.mesh(3)
    const r = fakeRequest(f.meshId as string, issuer(2), 'vm.create', { name: 'mine', image: 'tiny', type: 'small' })
    await m.change('store', storeRequest(r))
    await syncAll([f, h1, m])
    const pad = (d: any): void => { d.host.pad = {}; for (let i = 0; i < 20_000; i++) d.host.pad[`k${i}`] = i }
    const attempts = [
      forge(mKey, ownFeed(m), d => { pad(d); d.requests[r.id].signature = 'rewritten' }),
      forge(mKey, ownFeed(m), d => { pad(d); d.requests[r.id] = scalars({ payload: r.payload, signature: 'rewritten', at: new Date().toISOString() }) }),
      forge(mKey, ownFeed(m), d => { delete d.requests[r.id] }),
      forge(mKey, ownFeed(m), d => { d.requests = {} })
    ]
    for (const s of [f, h1]) {
      for (const a of attempts) {
        const res = await s.receive([a], m.self)
        expect(res.applied).toEqual([])
        expect(res.rejected[0]?.reason).toMatch(/stored request/)
      }
      expect(s.doc.requests.get(r.id)?.[0].signature).toBe(r.signature)
    }
  })

  it('an admission names its author: a member cannot say the founder admitted a host', async () => {
    const { stores: [f, h1, m], keys: [, , mKey] } = await t.mesh(3)
    await syncAll([f, h1, m])
    const newcomer = peerOf(await generateKeyPair('Ed25519'))
    const lie = forge(mKey, ownFeed(m), d => {
      d.events ??= []
      d.events.push(scalars({ ...event({ op: 'admit', peer: newcomer, name: 'by-the-founder' }, seenNow(m)), admittedBy: f.self, by: f.self, author: f.self }))
    })
    for (const s of [f, h1]) {
      await s.receive([lie], m.self)
      expect(s.doc.members[newcomer]?.admittedBy).toBe(m.self)
    }
  })

  it('events a member signs with a time of its choosing or a `seen` naming changes that do not exist wait and count for nothing', async () => {
    const { stores: [f, h1, m], keys: [, , mKey] } = await t.mesh(3)
    await syncAll([f, h1, m])
    const [n1, n2] = [peerOf(await generateKeyPair('Ed25519')), peerOf(await generateKeyPair('Ed25519'))]
    const seen = seenNow(m)
    // Claims to have seen a change of the founder's that nobody holds (its expulsion "undone").
    const fake = { ...seen, [f.self]: `${ownFeed(f).length + 5}:${'0'.repeat(16)}` }
    const changes = forgeChain(mKey, ownFeed(m), [
      pushEvents(event({ op: 'admit', peer: n1 }, fake)),
      pushEvents(event({ op: 'admit', peer: n2 }, seen, new Date('1970-01-01T00:00:00.000Z')))
    ])
    for (const s of [f, h1]) {
      await s.receive(changes, m.self)
      expect(s.doc.members[n1]).toBeUndefined()
      // A time in the past changes nothing about what counts: this one is a valid admission.
      expect(s.doc.members[n2]?.admittedBy).toBe(m.self)
    }
  })
})
