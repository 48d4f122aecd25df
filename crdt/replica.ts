/**
 * The replica: every feed this host holds, and what decides which changes join them. A change
 * joins its author's feed when its author is known (the founder, or named by an admission), it is
 * the next in the feed, and it keeps the feed's rules (crdt/feed.ts); one that comes early is held
 * (crdt/orphans.ts) until it fits; a second change with a sequence number already held is
 * equivocation (crdt/evidence.ts) and cuts the feed. In memory only: what it applies or learns it
 * hands to `hooks`, and the store (crdt/store.ts) makes it durable.
 */
import * as A from '@automerge/automerge'
import { Feed } from './feed.ts'
import { Orphans, type OrphanLimits } from './orphans.ts'
import { makeEvidence, type Evidence } from './evidence.ts'
import { meshIdFor } from './mesh-id.ts'
import type { VerifiedChange } from './signed-changes.ts'

/**
 * Who a refusal is held against: `sender` when the change is invalid in itself (bad signature,
 * oversized, breaks its feed's rules: an honest host would never have passed it on), `author`
 * for equivocation (each fork is valid alone, so whoever relayed one is innocent).
 */
export type Blame = 'sender' | 'author'

export interface Rejection {
  hash: string
  author?: string
  reason: string
  blame: Blame
  /** The sender provably misbehaved (blame = sender). */
  misbehaviour: boolean
}

export interface ReceiveResult {
  applied: VerifiedChange[]
  /** Changes dropped because their author is over its rate (see `receive`); fetched again later. */
  throttled?: string[]
  duplicates: number
  /** Changes held now (for a missing predecessor or admission). */
  pending: number
  rejected: Rejection[]
  evidence: Evidence[]
}

export interface ReplicaHooks {
  /** This host's peer id, and the actor it writes its own feed with. */
  self: string
  actor: string
  /** A change joined its feed (to be made durable, in this order). */
  applied: (v: VerifiedChange) => void
  /** New evidence of equivocation, found here (to be made durable and told). */
  evidence: (e: Evidence, from?: string) => void
  /** A change refused (to be told; `from` is the peer that sent it). */
  refused: (r: Rejection, from?: string) => void
}

export class Replica {
  readonly feeds = new Map<string, Feed>()
  founder?: string
  /** Peers named by some admission (or the founder): only their changes are taken. */
  readonly named = new Set<string>()
  readonly hashes = new Map<string, { author: string, seq: number }>()
  readonly orphans: Orphans
  readonly evidenceMap = new Map<string, Evidence>()
  /** While joining: the id of the mesh whose genesis may be accepted into an empty state. */
  joining: string | undefined
  /** Bumped by every change: a cheap key for caches of derived data. */
  version = 0
  private readonly hooks: ReplicaHooks

  constructor (hooks: ReplicaHooks, limits?: OrphanLimits) {
    this.hooks = hooks
    this.orphans = new Orphans(limits)
  }

  /** Records a change that joined its feed (indexes and the version). */
  index (v: { hash: string, author: string, seq: number }): void {
    this.hashes.set(v.hash, { author: v.author, seq: v.seq })
    this.version++
  }

  /** Applies changes from our own log in order: the contiguous run of each feed, the rest held. */
  replay (author: string, list: VerifiedChange[]): void {
    list.sort((a, b) => a.seq - b.seq)
    let feed = this.feeds.get(author)
    const start = feed?.seq ?? 0
    const run: VerifiedChange[] = []
    for (const v of list) {
      if (v.seq <= start) continue
      if (v.seq === start + run.length + 1) run.push(v)
      else this.orphans.add(v, undefined)
    }
    if (run.length === 0) return
    const actor = author === this.hooks.self ? this.hooks.actor : undefined
    if (feed === undefined) {
      feed = Feed.fromChanges(author, run, actor)
      this.addFeed(feed)
    } else {
      const extended = Feed.fromChanges(author, [...feed.changesAfter(0), ...run], actor)
      extended.cut = feed.cut
      this.addFeed(extended)
    }
  }

  addFeed (feed: Feed): void {
    this.feeds.set(feed.author, feed)
    for (let s = 1; s <= feed.seq; s++) this.hashes.set(feed.hashAt(s) as string, { author: feed.author, seq: s })
    if (this.founder === undefined && feed.seq > 0 && validGenesisIn(feed)) this.founder = feed.author
    this.version++
  }

  ownFeed (): Feed {
    let feed = this.feeds.get(this.hooks.self)
    if (feed === undefined) {
      feed = new Feed(this.hooks.self, this.hooks.actor)
      this.feeds.set(this.hooks.self, feed)
    }
    return feed
  }

  /**
   * `held`: the change was held and is offered again now. A refusal is then held against the peer
   * that sent it back then (in the event), never against the peer of the current exchange.
   */
  offer (v: VerifiedChange, from: string | undefined, result: ReceiveResult, held = false): void {
    const feed = this.feeds.get(v.author)
    if (feed?.cut !== undefined && v.seq > feed.cut) { result.duplicates++; return }
    if (feed !== undefined && v.seq <= feed.seq) {
      const ours = feed.hashAt(v.seq)
      if (ours === v.hash) { result.duplicates++; return }
      const held = feed.changeAt(v.seq)
      const e = held === undefined ? undefined : makeEvidence({ ...held, hash: ours as string, actor: v.actor, seq: v.seq, deps: [], author: v.author }, v)
      if (e !== undefined && this.cutFor(e)) { this.hooks.evidence(e, from); result.evidence.push(e) }
      return
    }
    const twin = this.orphans.has(v.author, v.seq)
    if (twin !== undefined) {
      if (twin.hash === v.hash) { result.duplicates++; return }
      const e = makeEvidence(twin, v)
      if (e !== undefined && this.cutFor(e)) { this.hooks.evidence(e, from); result.evidence.push(e) }
      return
    }
    if (feed === undefined && !this.named.has(v.author) && !this.mayBeGenesis(v)) { this.orphans.add(v, from); return }
    if (v.seq !== (feed?.seq ?? 0) + 1) { this.orphans.add(v, from); return }
    this.applyNext(v, from, result, held)
  }

  /** While joining: the first change of the feed that founded the mesh we join. */
  private mayBeGenesis (v: VerifiedChange): boolean {
    return this.joining !== undefined && this.founder === undefined && v.seq === 1
  }

  private applyNext (v: VerifiedChange, from: string | undefined, result: ReceiveResult, held: boolean): void {
    const existing = this.feeds.get(v.author)
    const feed = existing ?? new Feed(v.author, v.author === this.hooks.self ? this.hooks.actor : undefined)
    const eventsBefore = feed.eventSeq.length
    const verdict = feed.apply(v)
    if (!verdict.ok) {
      const r: Rejection = { hash: v.hash, author: v.author, reason: verdict.reason, blame: 'sender', misbehaviour: true }
      if (!held) result.rejected.push(r)
      this.hooks.refused(r, from)
      return
    }
    if (existing === undefined) {
      if (!this.named.has(v.author)) {
        // Only a genesis makes an unknown author's feed welcome, and only the one we join.
        const ok = validGenesisIn(feed) && (this.joining === '' || String(feed.doc.mesh?.id) === this.joining)
        if (!ok) { this.orphans.add(v, from); return }
        this.founder = v.author
        this.named.add(v.author)
      }
      this.feeds.set(v.author, feed)
    }
    this.index(v)
    this.hooks.applied(v)
    if (feed.eventSeq.length !== eventsBefore) this.refreshNamed()
    result.applied.push(v)
  }

  /** Applies held changes that have become applicable, until none is. */
  drainOrphans (result?: ReceiveResult): void {
    const r = result ?? { applied: [], duplicates: 0, pending: 0, rejected: [], evidence: [] }
    let progress = true
    while (progress) {
      progress = false
      for (const author of this.orphans.authors()) {
        const feed = this.feeds.get(author)
        if (feed === undefined && !this.named.has(author) && this.joining === undefined) continue
        const next = this.orphans.take(author, (feed?.seq ?? 0) + 1)
        if (next === undefined) continue
        const before = r.applied.length
        this.offer(next.v, next.from, r, true)
        if (r.applied.length > before) progress = true
      }
    }
  }

  /**
   * Acts on evidence: cuts the author's feed before the equivocation and keeps the proof. Returns
   * false when it was known already.
   */
  cutFor (e: Evidence): boolean {
    if (this.evidenceMap.has(e.id)) return false
    this.evidenceMap.set(e.id, e)
    const feed = this.feeds.get(e.author) ?? new Feed(e.author)
    if (!this.feeds.has(e.author)) this.feeds.set(e.author, feed)
    const keep = e.seq - 1
    if (feed.cut === undefined || keep < feed.cut) {
      for (let s = keep + 1; s <= feed.seq; s++) this.hashes.delete(feed.hashAt(s) as string)
      feed.cutAt(keep)
    }
    this.orphans.dropAuthor(e.author, keep)
    this.version++
    return true
  }
  /** Peers named by any admission, valid or not: whose feeds this host takes (bounded by the admitters). */
  refreshNamed (): void {
    if (this.founder !== undefined) this.named.add(this.founder)
    for (const f of this.feeds.values()) {
      const events = f.doc.events
      if (!Array.isArray(events)) continue
      for (const e of events) {
        const peer = (e as { peer?: unknown } | null)?.peer
        if (typeof peer === 'string' || peer instanceof A.ImmutableString) this.named.add(String(peer))
      }
    }
  }

}

/** The feed's first change founded a mesh: its genesis names the author and derives the id. */
export function validGenesisIn (feed: Feed): boolean {
  const m = feed.doc.mesh as unknown as Record<string, unknown> | undefined
  if (m === undefined || m === null) return false
  const founder = String(m.founder)
  return founder === feed.author && String(m.id) === meshIdFor(founder, String(m.nonce))
}
