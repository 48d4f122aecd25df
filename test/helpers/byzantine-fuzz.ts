/**
 * The engine of the Byzantine fuzzer (test/adversarial/fuzz.test.ts says what it checks and why):
 * a case is a list of steps (honest traffic, attacks, deliveries), run on in-process StateStores
 * synced with the real sync protocol, then judged against a reference host.
 *
 * A case is plain data (fast-check arbitraries below), so fast-check can shrink a failing one.
 * Every random choice inside a step comes from the step's own `r`, so a case replays the same way
 * (keys, times and hashes differ between runs; no verdict depends on them).
 */
import fc from 'fast-check'
import * as A from '@automerge/automerge'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { StateStore } from '../../crdt/store.ts'
import { SyncError } from '../../crdt/sync.ts'
import { encodeEvidence } from '../../crdt/evidence.ts'
import { peerForActor } from '../../keys/peer-key.ts'
import type { SignedChange } from '../../crdt/signed-changes.ts'
import { admit, expel, foundMesh, publishHostRecord, seenNow, setMeshPolicy } from '../../crdt/membership.ts'
import { scalars, type Seen } from '../../crdt/schema.ts'
import { deriveWorld, hostViews, placementRequests, type World } from '../../crdt/world.ts'
import { assign } from '../../crdt/placement.ts'
import { listVms, vmView, requestView } from '../../node/control/views.ts'
import { readEvent, readHostRecord, readStoredRequest } from '../../crdt/records.ts'
import { Stores, sync, hostRecord } from './stores.ts'
import { forge, craft, badSignature, signedBy, event, pushEvents, peerOf } from './attacker.ts'
import { fakeRequest, storeRequest, judgeRequests, issuer, trusting, RESOURCES, type FakeRequest } from './fake-requests.ts'

// ——— the model of a case ———

export const HONEST_ACTS = ['record', 'claim', 'request', 'admit', 'policy', 'expel', 'sync'] as const
/** Valid changes (they keep their feed's rules; what counts is the fold's business). */
export const VALID_ACTS = ['record', 'malformed', 'pad', 'admit', 'expel', 'policy', 'request', 'tampered', 'reject', 'fork', 'push', 'learn'] as const
/** Changes every honest host must refuse (or hold for ever, never apply). */
export const INVALID_ACTS = ['badSig', 'otherKey', 'rewriteEvents', 'rewriteRequest', 'genesis', 'unknownPart', 'nonLinear', 'oversized', 'noDeps', 'seqJump', 'stranger', 'replay'] as const
/** Acts that hit a defect reported separately (kept out of the default mix so the core check stays meaningful). */
export const REPORTED_ACTS = ['replayRequest'] as const

export type Step =
  | { k: 'honest', who: number, act: typeof HONEST_ACTS[number], r: number }
  | { k: 'byz', who: number, act: typeof VALID_ACTS[number] | typeof INVALID_ACTS[number] | typeof REPORTED_ACTS[number], to: number, r: number }

export interface Case { attackers: number, steps: Step[] }

export function caseArbitrary (opts: { reported?: boolean, minSteps?: number, maxSteps?: number } = {}): fc.Arbitrary<Case> {
  const honest = fc.record({ k: fc.constant('honest' as const), who: fc.nat(2), act: fc.constantFrom(...HONEST_ACTS), r: fc.nat() })
  const byzActs = [...VALID_ACTS, ...INVALID_ACTS, ...(opts.reported === true ? REPORTED_ACTS : [])]
  const byz = fc.record({ k: fc.constant('byz' as const), who: fc.nat(1), act: fc.constantFrom(...byzActs), to: fc.nat(7), r: fc.nat() })
  return fc.record({
    attackers: fc.constantFrom(1, 2),
    steps: fc.array(fc.oneof({ weight: 2, arbitrary: honest }, { weight: 3, arbitrary: byz }), { minLength: opts.minSteps ?? 6, maxLength: opts.maxSteps ?? 24 })
  })
}

/** A small PRNG (mulberry32) for the choices inside one step. */
function rng (seed: number): (n: number) => number {
  let a = seed >>> 0
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296 * n) | 0
  }
}

function shuffle<T> (xs: T[], pick: (n: number) => number): T[] {
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) { const j = pick(i + 1); [out[i], out[j]] = [out[j], out[i]] }
  return out
}

// ——— keys made once per run (generating them is the slow part of a fresh host) ———

export interface Keys { honest: PrivateKey[], attackers: PrivateKey[], stranger: PrivateKey, newcomers: string[] }

export async function makeKeys (): Promise<Keys> {
  const gen = async (n: number): Promise<PrivateKey[]> => await Promise.all(Array.from({ length: n }, async () => await generateKeyPair('Ed25519')))
  return { honest: await gen(3), attackers: await gen(2), stranger: (await gen(1))[0], newcomers: (await gen(24)).map(peerOf) }
}

export const USER = issuer(0xbeef)

// ——— one run ———

export interface Outcome {
  /** Violations of convergence, of "nothing throws" and of the reference (fuzz.test.ts, checks a–c). */
  core: string[]
  /** An honest host blamed (penalised) for what an attacker did, or a sync between honest hosts refused as misbehaviour. */
  blame: string[]
  /** A request an honest host received decided by what an attacker stored (its receiving host, its final rejection). */
  requests: string[]
  /** What the case did, for the report. */
  log: string[]
}

interface Attacker {
  key: PrivateKey
  store: StateStore
  /** Every change it signed, with whether it keeps its feed's rules. */
  signed: Map<string, { change: SignedChange, valid: boolean, seq: number }>
  /** Hashes of its changes delivered to some honest host. */
  delivered: Set<string>
}

const hashOf = (c: SignedChange): string => A.decodeChange(c.change).hash

/** `fn` on a feed whose record an earlier act may have made null (or a list, or a number). */
const withHost = (fn: (d: any) => void) => (d: any): void => {
  if (d.host === null || typeof d.host !== 'object' || Array.isArray(d.host)) d.host = {}
  fn(d)
}
const seqOf = (c: SignedChange): number => A.decodeChange(c.change).seq
const ownFeed = (s: StateStore): SignedChange[] => s.feeds.get(s.self)?.changesAfter(0) ?? []

export class Run {
  private readonly t: Stores
  private readonly keys: Keys
  readonly out: Outcome = { core: [], blame: [], requests: [], log: [] }
  honest: StateStore[] = []
  private attackers: Attacker[] = []
  private stranger?: StateStore
  private honestIds = new Set<string>()
  private readonly honestRequests: FakeRequest[] = []
  private readonly allChanges: SignedChange[] = []
  private newcomer = 0
  private clock = Date.now()

  constructor (t: Stores, keys: Keys) {
    this.t = t
    this.keys = keys
  }

  private note (s: string): void { this.out.log.push(s) }
  private name (peer: string | undefined): string {
    const i = this.honest.findIndex(h => h.self === peer)
    if (i >= 0) return `H${i}`
    const j = this.attackers.findIndex(a => a.store.self === peer)
    return j >= 0 ? `M${j}` : peer === undefined ? '?' : peer.slice(-6)
  }

  private nextNewcomer (): string { return this.keys.newcomers[this.newcomer++ % this.keys.newcomers.length] }
  /** A time a little later each call: stamps and `created` that order as the steps do. */
  private now (): Date { this.clock += 1000; return new Date(this.clock) }

  async setup (attackers: number): Promise<void> {
    const open = async (key: PrivateKey): Promise<StateStore> => await this.t.store({ key })
    this.honest = await Promise.all(this.keys.honest.map(open))
    const ms = await Promise.all(this.keys.attackers.slice(0, attackers).map(open))
    this.stranger = await open(this.keys.stranger)
    const [f, ...rest] = this.honest
    await foundMesh(f, { name: 'fuzz', host: hostRecord('H0') })
    for (const s of [...rest, ...ms]) await admit(f, s.self, this.name(s.self))
    for (const s of [...rest, ...ms]) {
      s.joining = ''
      await sync(s, f)
      s.joining = undefined
      await s.change('join', d => { d.host = scalars(hostRecord(s.self.slice(-6))) })
    }
    for (const h of this.honest) {
      await h.change('resources', (d: any) => { d.host.resources = scalars(RESOURCES); d.host.policy = scalars(trusting(USER)) })
    }
    this.attackers = ms.map((store, i) => ({ key: this.keys.attackers[i], store, signed: new Map(), delivered: new Set() }))
    for (const a of this.attackers) for (const c of ownFeed(a.store)) this.sign(a, c, true)
    await this.syncHonest()
    for (const a of this.attackers) { await this.deliver(a, ownFeed(a.store), 7, () => 0); await this.learn(a, 0) }
    this.honestIds = new Set(this.honest.map(h => h.self))
    for (const h of this.honest) {
      h.on('rejected', r => {
        if (r.blame === 'sender' && r.from !== undefined && this.honestIds.has(r.from)) {
          this.out.blame.push(`${this.name(h.self)} blamed ${this.name(r.from)} (honest) for a change of ${this.name(r.author)}: ${r.reason}`)
        }
      })
    }
  }

  private sign (a: Attacker, c: SignedChange, valid: boolean): SignedChange {
    a.signed.set(hashOf(c), { change: c, valid, seq: seqOf(c) })
    this.allChanges.push(c)
    return c
  }

  /** Gives `changes` to the honest hosts in `mask`, in an order and batching of `pick`'s choosing. */
  private async deliver (a: Attacker | undefined, changes: SignedChange[], mask: number, pick: (n: number) => number): Promise<void> {
    const targets = shuffle(this.honest.filter((_, i) => (mask & (1 << i)) !== 0), pick)
    for (const h of targets) {
      const order = shuffle(changes, pick)
      if (pick(2) === 0) await h.receive(order, a?.store.self)
      else for (const c of order) await h.receive([c], a?.store.self)
      if (a !== undefined) for (const c of changes) a.delivered.add(hashOf(c))
    }
  }

  /** The attacker takes in the honest hosts' changes (never its own, nor evidence about itself). */
  private async learn (a: Attacker, from: number): Promise<void> {
    const h = this.honest[from % this.honest.length]
    const theirs = new Map(a.store.frontier().map(e => [e.author, { seq: e.seq, hash16: e.hash16 }]))
    const mine = new Set(this.attackers.map(x => x.store.self))
    const changes = h.changesFor(theirs).filter(c => !mine.has(peerOfChange(c)))
    await a.store.receive(changes)
  }

  async syncPair (a: StateStore, b: StateStore): Promise<number> {
    try {
      const r = await sync(a, b)
      return r.a.received.applied.length + r.b.received.applied.length
    } catch (err: any) {
      this.out.blame.push(`sync ${this.name(a.self)} → ${this.name(b.self)} (both honest) failed${err instanceof SyncError && err.misbehaviour ? ' as misbehaviour' : ''}: ${err.message}`)
      return 0
    }
  }

  /** Honest hosts sync with each other until nothing moves (bounded). */
  async syncHonest (): Promise<void> {
    for (let round = 0; round < 8; round++) {
      let moved = 0
      for (const a of this.honest) for (const b of this.honest) if (a !== b) moved += await this.syncPair(a, b)
      const digests = new Set(this.honest.map(h => [...h.digestInput()].sort().join()))
      if (moved === 0 && digests.size === 1) return
    }
  }

  async step (s: Step): Promise<void> {
    const pick = rng(s.r)
    try {
      if (s.k === 'honest') await this.honestStep(s, pick)
      else await this.byzStep(s, pick)
    } catch (err: any) {
      // A refusal by the local API (not allowed, already expelled…) is an honest host doing its job.
      if (err?.status === undefined && err?.code === undefined) throw err
      this.note(`  (refused locally: ${err.message})`)
    }
  }

  private async honestStep (s: Extract<Step, { k: 'honest' }>, pick: (n: number) => number): Promise<void> {
    const h = this.honest[s.who]
    const f = this.honest[0]
    this.note(`H${s.who} ${s.act}`)
    switch (s.act) {
      case 'record':
        await publishHostRecord(h, { name: `h${s.who}-${pick(1000)}`, addresses: [], wgPublicKey: '', version: 't' })
        return
      case 'claim': {
        const vm = this.honestRequests[pick(this.honestRequests.length + 1)]
        if (vm === undefined) return
        const at = this.now().toISOString()
        await h.change('claim', (d: any) => { d.host.claims ??= {}; d.host.vms ??= {}; d.host.claims[vm.id] = scalars({ at }); d.host.vms[vm.id] = scalars({ status: 'placed', since: at }) })
        return
      }
      case 'request': {
        const r = fakeRequest(f.meshId as string, USER, 'vm.create', { name: `vm${this.honestRequests.length}`, image: 'tiny', type: 'small' }, { now: this.now().getTime() })
        this.honestRequests.push(r)
        await h.change('request', storeRequest(r, this.now()))
        return
      }
      case 'admit':
        await admit(h, this.nextNewcomer(), 'newcomer', this.now())
        return
      case 'policy':
        await setMeshPolicy(f, { admit: f.doc.mesh.policy.admit === 'any-member' ? 'expellers' : 'any-member' }, this.now())
        return
      case 'expel': {
        const a = this.attackers[pick(this.attackers.length)]
        await expel(f, a.store.self, 'fuzz', this.now())
        return
      }
      case 'sync': {
        const other = this.honest[(s.who + 1 + pick(2)) % 3]
        await this.syncPair(h, other)
      }
    }
  }

  private async byzStep (s: Extract<Step, { k: 'byz' }>, pick: (n: number) => number): Promise<void> {
    const a = this.attackers[s.who % this.attackers.length]
    const ms = a.store
    const feed = ownFeed(ms)
    const f = this.honest[0]
    const tag = `M${s.who % this.attackers.length} ${s.act} → ${[0, 1, 2].filter(i => (s.to & (1 << i)) !== 0).map(i => `H${i}`).join(',') || 'nobody'}`
    this.note(tag)
    const append = async (fn: (d: any) => void): Promise<void> => {
      const c = await ms.change(s.act, (d: any) => { if (d.host === null || typeof d.host !== 'object' || Array.isArray(d.host)) d.host = {}; fn(d) })
      if (c === undefined) return
      this.sign(a, c, true)
      await this.deliver(a, [c], s.to, pick)
    }
    const invalid = async (c: SignedChange): Promise<void> => {
      this.sign(a, c, false)
      await this.deliver(a, [c], s.to, pick)
    }
    const seen = (): Seen => {
      const v = seenNow(ms)
      const how = pick(3)
      if (how === 1) delete v[f.self]
      if (how === 2) return {}
      return v
    }
    const someRequest = (): FakeRequest | undefined => this.honestRequests[pick(this.honestRequests.length + 1)]
    switch (s.act) {
      case 'record':
        return await append(d => {
          d.host.name = scalars(`m-${pick(1000)}`)
          d.host.resources = scalars({ arch: ['x86_64'], vcpus: pick(64), memMiB: pick(65536), diskGiB: pick(1000), labels: { zone: 'roof' } })
          d.host.policy = scalars(trusting(USER))
          const r = someRequest()
          if (r !== undefined) { d.host.claims ??= {}; d.host.claims[r.id] = scalars({ at: this.now().toISOString() }) }
        })
      case 'malformed': {
        const kinds: Array<(d: any) => void> = [
          d => { d.host.rejections = { [someRequest()?.id ?? 'a'.repeat(64)]: null } },
          d => { d.host.resources = { arch: 5, vcpus: 'many', memMiB: -1, diskGiB: null, labels: { 'bad key!': '\u0000' } } },
          d => { if (d.host.addresses !== undefined) delete d.host.addresses; else d.host.addresses = 'none' },
          d => { d.host.name = scalars('\u001b[31mroot\u001b[0m\n\u202eevil') },
          d => { d.host.claims = {}; for (let i = 0; i < 10_001; i++) d.host.claims[`k${i}`] = 1 },
          d => { d.host.vms = { [someRequest()?.id ?? 'b'.repeat(64)]: { status: 'bogus', since: 'never' } } },
          d => { d.host.policy = { version: -1, entries: 'everyone' } },
          d => { d.host.keys = { NOTAFINGERPRINT: 1, ['F'.repeat(40)]: scalars('x'.repeat(70_000)) } },
          d => { d.host.wgPort = 'x'; d.host.nets = { [('c'.repeat(64))]: { vni: -1 } }; d.host.images = { x: { size: 'big' } } },
          d => { d.host.updated = 'yesterday'; d.host.addresses = [1, null, { a: 1 }] },
          d => { d.host = null },
          d => { d.host.resources = scalars({ arch: ['x86_64'], vcpus: 1e9, memMiB: 2 ** 40, diskGiB: 2 ** 40, labels: {} }); d.host.policy = scalars({ version: 1, entries: [{ fingerprint: USER }] }) }
        ]
        return await append(kinds[pick(kinds.length)])
      }
      case 'pad':
        return await append(d => { d.host.pad = {}; for (let i = 0; i < 2000; i++) d.host.pad[`k${i}`] = i })
      case 'admit': {
        const who = pick(4) === 0 ? ms.self : this.nextNewcomer()
        return await append(pushEvents(event({ op: 'admit', peer: who, name: 'by-attacker' }, seen(), this.now())))
      }
      case 'expel': {
        const target = this.honest[pick(3)].self
        return await append(pushEvents(event({ op: 'expel', peer: target, reason: 'attack' }, seen(), this.now())))
      }
      case 'policy':
        return await append(pushEvents(event({ op: 'policy', admit: 'any-member', expellers: [ms.self] }, seen(), this.now())))
      case 'request': {
        const r = fakeRequest(f.meshId as string, USER, 'vm.create', { name: `m${pick(1000)}`, image: 'tiny', type: 'small' }, { now: this.now().getTime() })
        return await append(storeRequest(r, this.now()))
      }
      case 'tampered': {
        const r = someRequest()
        if (r === undefined || ms.feeds.get(ms.self)?.requestSeq.has(r.id) === true) return
        const variants: FakeRequest[] = [
          { ...r, signature: 'broken' },
          { ...r, payload: r.payload.replace('"small"', '"large"') },
          { ...r, signature: `ok:${issuer(1)}` }
        ]
        return await append(storeRequest(variants[pick(variants.length)], new Date(this.clock - 30 * 60_000), r.id))
      }
      case 'reject': {
        const r = someRequest()
        if (r === undefined) return
        return await append(d => { d.host.rejections ??= {}; d.host.rejections[r.id] = scalars({ at: this.now().toISOString(), reason: 'attacker says no' }) })
      }
      case 'replayRequest': {
        const r = someRequest()
        if (r === undefined || ms.feeds.get(ms.self)?.requestSeq.has(r.id) === true) return
        return await append(d => {
          storeRequest(r, new Date(JSON.parse(r.payload).created))(d)
          d.host.rejections ??= {}
          d.host.rejections[r.id] = scalars({ at: this.now().toISOString(), reason: 'attacker says no' })
        })
      }
      case 'fork': {
        const fork = forge(a.key, feed, withHost(d => { d.host.name = scalars(`fork-${pick(1000)}`) }))
        this.sign(a, fork, true)
        await this.deliver(a, [fork], s.to, pick)
        const main = await ms.change('main', withHost(d => { d.host.name = scalars(`main-${pick(1000)}`) }))
        if (main === undefined) return
        this.sign(a, main, true)
        await this.deliver(a, [main], pick(8), pick)
        return
      }
      case 'push':
        return await this.deliver(a, feed, s.to, pick)
      case 'learn':
        return await this.learn(a, pick(3))
      case 'badSig':
        return await invalid(badSignature(forge(a.key, feed, withHost(d => { d.host.name = scalars('bad-sig') }))))
      case 'otherKey':
        return await invalid(signedBy(forge(a.key, feed, withHost(d => { d.host.name = scalars('other-key') })), this.keys.stranger))
      case 'rewriteEvents':
        if (!Array.isArray(ms.feeds.get(ms.self)?.doc.events) || (ms.feeds.get(ms.self)?.doc.events?.length ?? 0) === 0) return
        return await invalid(forge(a.key, feed, pick(2) === 0 ? d => { d.events = [] } : d => { d.events[0].op = scalars(`rewritten-${pick(1e6)}`) }))
      case 'rewriteRequest': {
        const ids = Object.keys(ms.feeds.get(ms.self)?.doc.requests ?? {})
        if (ids.length === 0) return
        const id = ids[pick(ids.length)]
        return await invalid(forge(a.key, feed, pick(2) === 0 ? d => { d.requests[id].signature = scalars('rewritten') } : d => { delete d.requests[id] }))
      }
      case 'genesis':
        return await invalid(forge(a.key, feed, withHost(d => { d.mesh = scalars({ format: 2, id: '0'.repeat(32), nonce: '0'.repeat(32), name: 'mine', founder: ms.self, created: this.now().toISOString() }) })))
      case 'unknownPart':
        return await invalid(forge(a.key, feed, withHost(d => { d.hosts = { [f.self]: { name: 'owned' } } })))
      case 'nonLinear':
        return await invalid(forge(a.key, feed, withHost(d => { d.host.name = scalars('non-linear') }), { extraDeps: ownFeed(this.honest[pick(3)]) }))
      case 'oversized':
        return await invalid(forge(a.key, feed, withHost(d => { d.host.name = scalars('x'.repeat(270 * 1024)) })))
      case 'noDeps':
        return await invalid(craft(a.key, forge(a.key, feed, withHost(d => { d.host.name = scalars('no-deps') })), d => { d.deps = [] }))
      case 'seqJump':
        return await invalid(craft(a.key, forge(a.key, feed, withHost(d => { d.host.name = scalars('seq-jump') })), d => { d.seq += 2 + pick(3) }))
      case 'stranger': {
        const st = this.stranger as StateStore
        const c = await st.change('stranger', pick(2) === 0 ? (d: any) => { d.host = scalars(hostRecord('stranger')) } : (d: any) => { d.events = [scalars(event({ op: 'admit', peer: st.self }, {}, this.now()))] })
        if (c !== undefined) { this.allChanges.push(c); await this.deliver(undefined, ownFeed(st), s.to, pick) }
        return
      }
      case 'replay': {
        const c = this.allChanges[pick(this.allChanges.length)]
        if (c !== undefined) await this.deliver(a, [c], s.to, pick)
      }
    }
  }

  // ——— the checks ———

  async check (): Promise<void> {
    const core = (s: string): void => { this.out.core.push(s) }
    const [h0] = this.honest
    // (a) convergence.
    // What beats compare (node/mesh/anti-entropy.ts sorts it): frontier and evidence.
    const digests = this.honest.map(h => [...h.digestInput()].sort().join())
    if (new Set(digests).size !== 1) core(`frontiers differ: ${this.honest.map((h, i) => `H${i}: ${h.frontier().map(e => `${this.name(e.author)}@${e.seq}`).join(' ')} evidence ${h.evidence().map(e => `${this.name(e.author)}@${e.seq}:${e.id.slice(0, 6)}`).join(',')}`).join(' | ')}`)
    const views = this.honest.map(h => viewJson(h))
    for (let i = 1; i < views.length; i++) if (views[i] !== views[0]) core(`views of H0 and H${i} differ`)
    // (b) nothing throws reading the state.
    const worlds: string[] = []
    for (const [i, h] of this.honest.entries()) {
      try {
        worlds.push(worldJson(await readEverything(h)))
      } catch (err: any) {
        core(`reading the state of H${i} threw: ${err.stack ?? err.message}`)
      }
    }
    for (let i = 1; i < worlds.length; i++) if (worlds[i] !== worlds[0]) core(`worlds of H0 and H${i} differ`)

    // (c) the reference: only the honest changes, the attackers' changes that keep the rules, and
    // the evidence of their equivocations, each checked against what the attackers really signed.
    for (const h of this.honest) {
      for (const g of this.honest) {
        const feed = h.feeds.get(g.self)
        if (feed?.cut !== undefined) core(`H${this.honest.indexOf(h)} cut honest ${this.name(g.self)}'s feed`)
        if (feed?.seq !== g.feeds.get(g.self)?.seq) core(`H${this.honest.indexOf(h)} holds ${feed?.seq ?? 0} changes of ${this.name(g.self)}, which wrote ${g.feeds.get(g.self)?.seq ?? 0}`)
      }
      if (h.feeds.has(this.stranger?.self as string)) core(`H${this.honest.indexOf(h)} took the feed of a host nobody admitted`)
    }
    const applied: SignedChange[] = []
    for (const a of this.attackers) {
      const feed = h0.feeds.get(a.store.self)
      for (const c of feed?.changesAfter(0) ?? []) {
        const g = a.signed.get(hashOf(c))
        if (g === undefined) core(`H0 applied a change of ${this.name(a.store.self)} nobody signed`)
        else if (!g.valid) core(`H0 applied change ${g.seq} of ${this.name(a.store.self)}, which breaks its feed's rules`)
        applied.push(c)
      }
      // Liveness: the attacker's own chain, as far as it reached honest hosts without a gap, stands
      // (up to an equivocation cut).
      const chain = ownFeed(a.store)
      let reach = 0
      while (reach < chain.length && a.delivered.has(hashOf(chain[reach]))) reach++
      const cut = feed?.cut ?? Infinity
      const want = Math.min(reach, cut)
      const have = feed?.seq ?? 0
      if (have < want || chain.slice(0, want).some((c, i) => feed?.hashAt(i + 1) !== hashOf(c))) {
        core(`${this.name(a.store.self)}'s chain reached honest hosts up to ${reach} (cut ${String(cut)}), H0 holds ${have}`)
      }
    }
    for (const e of h0.evidence()) {
      const a = this.attackers.find(x => x.store.self === e.author)
      if (a === undefined) { core(`evidence against ${this.name(e.author)}, not an attacker`); continue }
      for (const c of e.changes) if (!a.signed.has(c.hash)) core(`evidence against ${this.name(e.author)} holds a change it never signed`)
    }
    const ref = await this.t.store()
    ref.joining = ''
    await ref.receive([...ownFeed(h0), ...this.honest.slice(1).flatMap(ownFeed), ...applied])
    ref.joining = undefined
    const ev = await ref.receiveEvidence(h0.evidence().map(e => encodeEvidence(e)))
    if (ev.rejected > 0) core('the reference refused evidence H0 holds')
    if (viewJson(ref) !== views[0]) core(`the honest hosts' view differs from the reference's: ${diff(JSON.parse(views[0]), JSON.parse(viewJson(ref)))}`)
    try {
      const w = worldJson(await readEverything(ref))
      if (w !== worlds[0]) core(`the honest hosts' world differs from the reference's: ${diff(JSON.parse(worlds[0] ?? '{}'), JSON.parse(w))}`)
    } catch (err: any) {
      core(`reading the reference threw: ${err.message}`)
    }
    // Independent of the fold: honest hosts stay active members, the founder's expulsions stand,
    // newcomers admitted by an expelled attacker only after its expulsion are not members.
    const doc = h0.doc
    for (const h of this.honest) if (doc.members[h.self]?.expelled !== undefined) core(`honest ${this.name(h.self)} is not an active member: ${JSON.stringify(doc.members[h.self])}`)
    for (const a of this.attackers) {
      const cut = h0.feeds.get(a.store.self)?.cut
      const expelledBy = founderExpulsionSeen(h0, a.store.self)
      if ((cut !== undefined || expelledBy !== undefined) && doc.members[a.store.self]?.expelled === undefined) core(`${this.name(a.store.self)} was expelled (or equivocated) but is active`)
      if (expelledBy !== undefined) {
        for (const [peer, m] of Object.entries(doc.members)) {
          const admissions = allAdmissions(h0, peer)
          if (admissions.length > 0 && admissions.every(x => x.author === a.store.self && x.seq > expelledBy) && m.expelled === undefined) {
            core(`${peer.slice(-6)} counts as admitted, only by ${this.name(a.store.self)} after its expulsion`)
          }
        }
      }
    }
    for (const r of this.honestRequests) {
      const copies = doc.requests.get(r.id)
      if (copies === undefined || !copies.some(c => this.honestIds.has(c.via))) continue
      const w = JSON.parse(worlds[0] ?? '{}')
      const outcome = new Map<string, any>(w.requests ?? []).get(r.id)
      // Which host a user handed a request to is the hosts' word (a member can store a copy stamped
      // earlier): what must hold is that the honest host is among those that received it, so that
      // nothing that needs the receiving hosts (a final rejection) is decided without it.
      const vias: string[] = outcome?.vias ?? (outcome === undefined ? [] : [outcome.via])
      if (outcome !== undefined && !vias.some(v => this.honestIds.has(v))) this.out.requests.push(`request ${r.id.slice(0, 8)} stored by an honest host is decided by ${vias.map(v => this.name(v)).join(', ')}'s copies (${String(outcome.status)})`)
    }
  }
}

function peerOfChange (c: SignedChange): string {
  return peerForActor(A.decodeChange(c.change).actor).toString()
}

/** The sequence number of `peer`'s feed that the founder's (valid) expulsion of it had seen. */
function founderExpulsionSeen (s: StateStore, peer: string): number | undefined {
  const founder = s.founder as string
  const fold = s.state().fold
  const events = s.feeds.get(founder)?.doc.events ?? []
  let out: number | undefined
  events.forEach((e: any, i: number) => {
    if (String(e?.op) !== 'expel' || String(e?.peer) !== peer) return
    const key = `${founder}/${s.feeds.get(founder)?.eventSeq[i] ?? 0}/${i}`
    if (fold?.verdicts.get(key)?.valid !== true) return
    const seen = readEvent(e, `events[${i}]`).value?.seen[peer] ?? '0:'
    const n = Number(seen.slice(0, seen.indexOf(':')))
    out = out === undefined ? n : Math.max(out, n)
  })
  return out
}

/** Every admission event of `peer` in any feed: author and sequence number. */
function allAdmissions (s: StateStore, peer: string): Array<{ author: string, seq: number }> {
  const out: Array<{ author: string, seq: number }> = []
  for (const f of s.feeds.values()) {
    const events = f.doc.events
    if (!Array.isArray(events)) continue
    events.forEach((e: any, i: number) => { if (String(e?.op) === 'admit' && String(e?.peer) === peer) out.push({ author: f.author, seq: f.eventSeq[i] ?? 0 }) })
  }
  return out
}

/** The view as JSON, maps as sorted entries. */
export function viewJson (s: StateStore): string {
  const d = s.doc
  return JSON.stringify({ mesh: d.mesh, members: sortKeys(d.members), hosts: sortKeys(d.hosts), requests: [...d.requests].sort((a, b) => a[0] < b[0] ? -1 : 1) })
}

function sortKeys<T> (o: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(o ?? {}).sort((a, b) => a[0] < b[0] ? -1 : 1))
}

/** Everything the API and the scheduler read, computed once: throws if any of it does. */
export async function readEverything (s: StateStore): Promise<World> {
  const doc = s.doc
  const world = deriveWorld(doc, await judgeRequests(doc))
  listVms(doc, world, { all: true })
  for (const vm of world.vms.values()) vmView(doc, vm)
  for (const r of world.requests.values()) requestView(doc, r)
  const hosts = hostViews(doc, () => true)
  assign(placementRequests(world.vms.values()), hosts)
  // What the view hands out is well-formed: reading it again finds nothing wrong.
  for (const [peer, rec] of Object.entries(doc.hosts)) {
    // (`updated` is '' when the record's own was missing or malformed.)
    const again = readHostRecord(rec.updated === '' ? { ...rec, updated: undefined } : rec)
    if (again.problems.length > 0) throw new Error(`the view's record of ${peer} is malformed: ${again.problems.slice(0, 3).join('; ')}`)
  }
  for (const [id, copies] of doc.requests) {
    for (const c of copies) {
      const again = readStoredRequest(c, `requests.${id}`)
      if (again.problems.length > 0) throw new Error(`the view's copy of ${id} by ${c.via} is malformed: ${again.problems.join('; ')}`)
    }
  }
  JSON.stringify(doc)
  return world
}

export function worldJson (w: World): string {
  const entries = <T>(m: Map<string, T>): Array<[string, T]> => [...m].sort((a, b) => a[0] < b[0] ? -1 : 1)
  return JSON.stringify({ vms: entries(w.vms), nets: entries(w.nets), images: entries(w.images), requests: entries(w.requests), revoked: [...w.revoked].sort(), hosts: w.hosts, decisions: entries(w.decisions) })
}

/** The first paths where two JSON values differ (for the report). */
export function diff (a: unknown, b: unknown, path = '$', out: string[] = []): string {
  if (out.length >= 5) return out.join('; ')
  if (JSON.stringify(a) === JSON.stringify(b)) return out.join('; ')
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') {
    out.push(`${path}: ${JSON.stringify(a)?.slice(0, 120)} vs ${JSON.stringify(b)?.slice(0, 120)}`)
    return out.join('; ')
  }
  const keys = new Set([...Object.keys(a), ...Object.keys(b)])
  for (const k of keys) diff((a as any)[k], (b as any)[k], `${path}.${k.slice(0, 12)}`, out)
  return out.join('; ')
}

/** Runs one case from scratch; the stores are removed after. */
export async function runCase (c: Case, keys: Keys, base: string): Promise<Outcome> {
  const t = new Stores()
  await t.setup(base)
  const run = new Run(t, keys)
  try {
    await run.setup(c.attackers)
    for (const s of c.steps) await run.step(s)
    await run.syncHonest()
    await run.check()
  } finally {
    await t.teardown()
  }
  return run.out
}

// ——— settings and reports shared by the fuzz tests ———

export interface FuzzSettings { seed: number, runs: number, path?: string }

/** PICOCLOUD_FUZZ_SEED (a number, or `random`), PICOCLOUD_FUZZ_RUNS, PICOCLOUD_FUZZ_PATH; else the defaults. */
export function fuzzSettings (defaultSeed: number, defaultRuns: number): FuzzSettings {
  const env = process.env.PICOCLOUD_FUZZ_SEED
  const seed = env === 'random' ? Math.floor(Math.random() * 2 ** 31) : env !== undefined && env !== '' ? Number(env) : defaultSeed
  const runs = Number(process.env.PICOCLOUD_FUZZ_RUNS ?? defaultRuns)
  const path = process.env.PICOCLOUD_FUZZ_PATH
  return { seed, runs, ...(path !== undefined && path !== '' ? { path } : {}) }
}

export interface Found { c: Case, out: Outcome }

/** How many cases showed each kind of violation (variable parts cut), and the first case in full. */
export function report (seed: number, what: keyof Outcome, found: Found[]): string {
  const f = found[0]
  if (f === undefined) return ''
  const kinds = new Map<string, number>()
  for (const x of found) {
    for (const m of new Set(x.out[what].map(m => m.replace(/12D3KooW\w+/g, '<peer>').replace(/\b(H|M)\d\b/g, '$1').replace(/\d+/g, 'N')))) kinds.set(m, (kinds.get(m) ?? 0) + 1)
  }
  return `${found.length} case(s) (seed ${seed}):\n${[...kinds].map(([m, n]) => `  ${n} × ${m}`).join('\n')}\n` +
    `the first case:\n${f.out[what].slice(0, 5).join('\n')}\nsteps:\n${f.out.log.join('\n')}\ncase: ${JSON.stringify(f.c)}`
}
