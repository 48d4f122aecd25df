import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { appendFile, stat, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import * as A from '@automerge/automerge'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { CHANGE_LOG_FILE, type StateStore } from '../../crdt/store.ts'
import { admit, expel, publishHostRecord, setMeshPolicy, seenNow } from '../../crdt/membership.ts'
import { signChangeHash, type SignedChange } from '../../crdt/signed-changes.ts'
import { actorForPeer } from '../../keys/peer-key.ts'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Stores, sync, hostRecord } from '../helpers/stores.ts'

const record = (name: string) => ({ name, addresses: [], wgPublicKey: '', version: 't' })
const frontierOf = (s: StateStore) => new Map(s.frontier().map(e => [e.author, { seq: e.seq, hash16: e.hash16 }]))
/** Everything a host's view holds, comparable across hosts. */
const world = (s: StateStore) => JSON.parse(JSON.stringify({ ...s.doc, requests: [...s.doc.requests] }))

/**
 * A change by `key`'s author that depends on `deps` exactly, made on a copy of its feed: what a
 * member that does not play by the rules can sign.
 */
function forge (key: PrivateKey, feedChanges: SignedChange[], fn: (d: any) => void, extra: SignedChange[] = []): SignedChange {
  const actor = actorForPeer(peerIdFromPrivateKey(key))
  let doc = A.init<any>({ actor })
  ;[doc] = A.applyChanges(doc, [...feedChanges, ...extra].map(c => c.change))
  const before = A.getHeads(doc)
  doc = A.change(doc, fn)
  const [meta] = A.getChangesMetaSince(doc, before)
  return signChangeHash(A.getLastLocalChange(doc) as Uint8Array, meta.hash, key)
}

describe('replicated state: one signed feed per host', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup() })
  afterEach(async () => { await t.teardown() })

  it('replicates a mesh and the hosts\' own records by sync, in both directions', async () => {
    const { stores: [a, b, c] } = await t.mesh(3)
    await publishHostRecord(b, record('bee'))
    await sync(a, b)
    await sync(c, a)
    expect(a.doc.hosts[b.self].name).toBe('bee')
    expect(c.doc.hosts[b.self].name).toBe('bee')
    expect(a.frontier()).toEqual(c.frontier())
    expect(world(a)).toEqual(world(c))
    // A second sync has nothing to carry.
    const again = await sync(c, a)
    expect(again.a.sent + again.b.sent).toBe(0)
  })

  it('sends a peer that is one change ahead only what it lacks, never the whole history', async () => {
    const { stores: [a, b] } = await t.mesh(2)
    for (let i = 0; i < 20; i++) await publishHostRecord(a, record(`a${i}`))
    await sync(b, a)
    await publishHostRecord(b, record('b-ahead'))
    const r = await sync(a, b)
    expect(r.a.sent).toBe(0)
    expect(r.b.sent).toBe(1)
  })

  it('refuses, on every receiver, a change that breaks its own feed\'s rules, and blames the sender', async () => {
    const { stores: [a, b, c], keys: [, bKey] } = await t.mesh(3)
    await admit(b, peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString(), 'new')
    await sync(a, b); await sync(c, b)
    const bFeed = b.feeds.get(b.self)!.changesAfter(0)
    const cases: Array<[string, SignedChange, RegExp]> = [
      ['rewrites the genesis', forge(bKey, bFeed, d => { d.mesh = { id: 'x' } }), /genesis can be written only/],
      ['removes its membership events', forge(bKey, bFeed, d => { d.events = [] }), /replaces or removes the membership events/],
      ['rewrites a membership event', forge(bKey, bFeed, d => { d.events[0].peer = a.self }), /changes or removes a membership event/],
      ['deletes a membership event', forge(bKey, bFeed, d => { d.events.splice(0, 1) }), /changes or removes a membership event/],
      ['writes an unknown part of the state', forge(bKey, bFeed, d => { d.hosts = { [a.self]: { name: 'pwned' } } }), /unknown part/],
      ['depends on another feed (a chosen causal past)', forge(bKey, bFeed, d => { d.host.name = 'x' }, a.feeds.get(a.self)!.changesAfter(0)), /previous change only/]
    ]
    for (const [what, change, reason] of cases) {
      for (const s of [a, c]) {
        const before = s.frontier()
        const r = await s.receive([change], b.self)
        expect(r.applied, what).toEqual([])
        expect(r.rejected[0]?.reason, what).toMatch(reason)
        expect(r.rejected[0]?.blame, what).toBe('sender')
        expect(s.frontier(), what).toEqual(before)
      }
    }
    // B's honest next change is still taken: a refused change uses up nothing.
    await publishHostRecord(b, record('honest'))
    await sync(a, b)
    expect(a.doc.hosts[b.self].name).toBe('honest')
  })

  it('a stored request is immutable: its host cannot rewrite or remove it later', async () => {
    const { stores: [a, b], keys: [, bKey] } = await t.mesh(2)
    const id = 'ab'.repeat(32)
    await b.change('store a request', d => { d.requests ??= {}; d.requests[id] = { payload: '{}', signature: 's', at: new Date().toISOString() } })
    await sync(a, b)
    expect(a.doc.requests.get(id)?.[0].via).toBe(b.self)
    const feed = b.feeds.get(b.self)!.changesAfter(0)
    for (const change of [
      forge(bKey, feed, d => { d.requests[id].signature = 'broken' }),
      forge(bKey, feed, d => { delete d.requests[id] }),
      forge(bKey, feed, d => { d.requests = {} })
    ]) {
      const r = await a.receive([change], b.self)
      expect(r.rejected[0]?.reason).toMatch(/stored request|stored requests/)
    }
    expect(a.doc.requests.get(id)?.[0].signature).toBe('s')
  })

  it('refuses a bad signature, and holds (never applies) the feed of a host nobody admitted', async () => {
    const { stores: [a] } = await t.mesh(1)
    const stranger = await t.store()
    await stranger.change('hello', d => { d.host = hostRecord('stranger') })
    const change = stranger.feeds.get(stranger.self)!.changeAt(1)!
    const r = await a.receive([change], stranger.self)
    expect(r.applied).toEqual([])
    expect(r.pending).toBe(1)
    expect(a.feeds.has(stranger.self)).toBe(false)
    const bad = { ...change, signature: new Uint8Array(64) }
    const r2 = await a.receive([bad], stranger.self)
    expect(r2.rejected[0]).toMatchObject({ blame: 'sender' })
    expect(r2.rejected[0].reason).toMatch(/bad signature/)
  })

  it('holds a change whose previous change is missing and applies it once that arrives', async () => {
    const { stores: [a, b] } = await t.mesh(2)
    await publishHostRecord(b, record('one'))
    await publishHostRecord(b, record('two'))
    const feed = b.feeds.get(b.self)!
    const second = feed.changeAt(feed.seq)!
    const first = feed.changeAt(feed.seq - 1)!
    const r = await a.receive([second], b.self)
    expect(r.applied).toEqual([])
    expect(a.pendingCount).toBe(1)
    const r2 = await a.receive([first], b.self)
    expect(r2.applied).toHaveLength(2)
    expect(a.doc.hosts[b.self].name).toBe('two')
    expect(a.pendingCount).toBe(0)
  })

  it('equivocation: evidence cuts the author\'s feed on every host, whatever fork each held; nobody else\'s changes are stranded and no relayer is blamed', async () => {
    const { stores: [a, b, c], keys: [, , cKey] } = await t.mesh(3)
    await sync(b, c)
    const base = c.feeds.get(c.self)!.changesAfter(0)
    // C signs two different next changes and shows one to A, the other to B.
    const forkA = forge(cKey, base, d => { d.host.name = 'fork-a' })
    const forkB = forge(cKey, base, d => { d.host.name = 'fork-b' })
    await a.receive([forkA], c.self)
    await b.receive([forkB], c.self)
    // A and B build on what they have.
    await publishHostRecord(a, record('a-after'))
    await publishHostRecord(b, record('b-after'))
    const rejected: unknown[] = []
    a.on('rejected', r => rejected.push(r)); b.on('rejected', r => rejected.push(r))
    await sync(a, b)
    await sync(b, a)
    for (const s of [a, b]) {
      expect(s.evidence().map(e => e.author)).toEqual([c.self])
      expect(s.feeds.get(c.self)!.cut).toBe(base.length)
      expect(s.doc.members[c.self].expelled?.reason).toMatch(/equivocated/)
      expect(s.doc.hosts[c.self]).toBeUndefined()
    }
    expect(a.doc.hosts[b.self].name).toBe('b-after')
    expect(b.doc.hosts[a.self].name).toBe('a-after')
    expect(a.digestInput()).toEqual(b.digestInput())
    expect(world(a)).toEqual(world(b))
    expect(rejected).toEqual([])
    // A host that learns of it later, by sync with either, reaches the same state.
    const d = await t.store()
    d.joining = ''
    await sync(d, a)
    d.joining = undefined
    expect(world(d)).toEqual(world(a))
  })

  it('a plain member cannot expel, and an expulsion the founder made wins over acts the expelled host made after it, in whatever order they arrive', async () => {
    const { stores: [f, m, x] } = await t.mesh(3)
    await sync(m, x)
    // M (a plain member) writes an expulsion of X: it does not count anywhere.
    await expect(expel(m, x.self, 'spite')).rejects.toThrow(/may not expel/)
    await m.change('expel anyway', d => { d.events ??= []; d.events.push({ op: 'expel', peer: x.self, reason: 'spite', at: new Date().toISOString(), seen: seenNow(m) } as any) })
    await sync(f, m)
    expect(f.doc.members[x.self].expelled).toBeUndefined()
    expect(f.state().problems.get(m.self)?.join()).toMatch(/may not expel/)

    // The founder expels M. M, not knowing (or pretending not to), then admits a newcomer.
    const newcomer = (await generateKeyPair('Ed25519'))
    const newId = peerIdFromPrivateKey(newcomer).toString()
    await expel(f, m.self, 'test')
    await admit(m, newId, 'late')
    // X learns M's admission first, then the expulsion: the admission counts for nothing.
    await sync(x, m)
    expect(x.doc.members[newId]?.expelled).toBeUndefined()
    await sync(x, f)
    expect(x.doc.members[m.self].expelled).toBeDefined()
    expect(x.doc.members[newId]).toBeUndefined()
    // F learns them the other way round: the same world.
    await sync(f, m)
    expect(world(f)).toEqual(world(x))
  })

  it('demoting a host\'s right wins over its concurrent acts: a member admits after the founder reserved admission to expellers', async () => {
    const { stores: [f, m] } = await t.mesh(2)
    const newId = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    await setMeshPolicy(f, { admit: 'expellers' })
    await admit(m, newId, 'concurrent') // M has not seen the policy yet: allowed locally
    await sync(f, m)
    for (const s of [f, m]) expect(s.doc.members[newId]).toBeUndefined()
    // With the policy seen, M cannot even try.
    await expect(admit(m, peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString(), 'x')).rejects.toThrow(/may not admit/)
  })

  it('only an expeller re-admits an expelled host; a re-admission concurrent with the expulsion loses; the founder cannot be expelled', async () => {
    const { stores: [f, e, m, x] } = await t.mesh(4)
    for (const s of [e, m, x]) await sync(s, f)
    await setMeshPolicy(f, { expellers: [e.self] })
    for (const s of [e, m, x]) await sync(s, f)
    await expel(e, x.self, 'by the expeller')
    await sync(m, e)
    expect(m.doc.members[x.self].expelled?.by).toBe(e.self)
    // A plain member re-admits: refused locally, and does not count when forced.
    await expect(admit(m, x.self, 'back')).rejects.toThrow(/only the founder or an expeller/)
    await m.change('re-admit anyway', d => { d.events ??= []; d.events.push({ op: 'admit', peer: x.self, name: 'back', at: new Date().toISOString(), seen: seenNow(m) } as any) })
    await sync(f, m); await sync(f, e)
    expect(f.doc.members[x.self].expelled).toBeDefined()
    // The founder re-admits (after seeing the expulsion): X is back.
    await admit(f, x.self, 'forgiven')
    await sync(m, f)
    expect(m.doc.members[x.self].expelled).toBeUndefined()
    // The expeller expels X again while the founder, concurrently, admits it once more: expulsion wins.
    await sync(e, f)
    expect((await expel(e, x.self, 'again')).changed).toBe(true)
    await f.change('concurrent re-admission', d => { d.events ??= []; d.events.push({ op: 'admit', peer: x.self, name: 'again', at: new Date().toISOString(), seen: {} } as any) })
    await sync(f, e); await sync(m, f)
    for (const s of [f, m]) expect(s.doc.members[x.self].expelled?.reason).toBe('again')
    // Nobody can expel the founder, not even an expeller.
    await e.change('expel founder', d => { d.events ??= []; d.events.push({ op: 'expel', peer: f.self, reason: 'coup', at: new Date().toISOString(), seen: seenNow(e) } as any) })
    await sync(f, e)
    expect(f.doc.members[f.self].expelled).toBeUndefined()
    expect(f.doc.mesh.founder).toBe(f.self)
  })

  it('refuses, with a clear error and no change, a state written by an older picocloud', async () => {
    const { writeFile, mkdir, readFile } = await import('node:fs/promises')
    const dir = join(t.dir, 'old')
    await mkdir(dir)
    const old = Buffer.from([0, 0, 0, 5, 0, 0, 0, 0, 104, 101, 108, 108, 111])
    await writeFile(join(dir, CHANGE_LOG_FILE), old)
    const { StateStore } = await import('../../crdt/store.ts')
    await expect(StateStore.open({ dir, key: await generateKeyPair('Ed25519') })).rejects.toMatchObject({ code: 'BAD_CONFIG', message: expect.stringMatching(/move the state directory away/) })
    expect(await readFile(join(dir, CHANGE_LOG_FILE))).toEqual(old)
  })

  it('survives a torn write: reload keeps every complete change and cuts the tail', async () => {
    const { stores: [a], keys: [aKey] } = await t.mesh(1)
    for (let i = 0; i < 3; i++) await publishHostRecord(a, record(`r${i}`))
    const count = a.changeCount
    const path = join(a.stateDir, CHANGE_LOG_FILE)
    await a.close()
    await appendFile(path, Buffer.from([0, 0, 1, 0, 1, 2, 3]))
    const size = (await stat(path)).size
    await truncate(path, size)
    const again = await t.reopen(a, aKey)
    expect(again.changeCount).toBe(count)
    expect(again.doc.hosts[again.self].name).toBe('r2')
  })

  it('changes only the fields of its record that moved and keeps the rest (policy, claims, VM reports)', async () => {
    const { stores: [a] } = await t.mesh(1)
    await a.change('claims', d => { d.host!.claims = { ['cd'.repeat(32)]: { at: new Date().toISOString() } } })
    await publishHostRecord(a, record('renamed'))
    expect(a.doc.hosts[a.self].name).toBe('renamed')
    expect(Object.keys(a.doc.hosts[a.self].claims ?? {})).toEqual(['cd'.repeat(32)])
    expect(await publishHostRecord(a, record('renamed'))).toBe(false)
  })
})
