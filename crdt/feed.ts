/**
 * One author's feed: the Automerge document only that author writes (crdt/schema.ts), with the
 * index of its signed changes by sequence number.
 *
 * A feed is a chain. Change n must depend on change n-1 of the same feed and on nothing else, so
 * that "the feed at n" is the same document on every host and an author can never make two of
 * its own changes concurrent (which would let Automerge's conflict resolution, by operation count,
 * decide between them). Within the chain the author writes its record freely; membership events
 * and stored requests are append-only and immutable. Each check needs only the feed itself, never
 * anything the author chose to include or leave out, so every honest host reaches the same verdict.
 */
import * as A from '@automerge/automerge'
import type { FeedDoc } from './schema.ts'
import type { SignedChange, VerifiedChange } from './signed-changes.ts'

/** Largest change accepted (encoded): the same limit for gossip and sync. */
export const MAX_CHANGE_BYTES = 256 * 1024
/** Largest host record (JSON) a feed may hold. */
export const MAX_HOST_RECORD_BYTES = 1024 * 1024

const TOP_LEVEL = new Set(['mesh', 'host', 'events', 'requests'])

export type ApplyVerdict = { ok: true } | { ok: false, reason: string }

export class Feed {
  readonly author: string
  doc: A.Doc<FeedDoc>
  private hashes: string[] = []
  private sigs: Uint8Array[] = []
  private startOps: number[] = []
  /** Request id → sequence number of the change that stored it. */
  readonly requestSeq = new Map<string, number>()
  /** Sequence number of the change that wrote each membership event (by index). */
  eventSeq: number[] = []
  /** Cut for equivocation: changes after this sequence number are gone and refused. */
  cut?: number
  /** Bumped by every change, for caches of what is read from the feed. */
  version = 0
  /**
   * Bumped when the feed is rebuilt rather than extended (loaded, or cut for equivocation): a
   * cache of its append-only parts (events) must then be read anew.
   */
  epoch = 0

  /** `actor` only for the host's own feed (the actor it writes with). */
  constructor (author: string, actor?: string, doc?: A.Doc<FeedDoc>) {
    this.author = author
    this.doc = doc ?? A.init<FeedDoc>(actor === undefined ? undefined : { actor })
  }

  get seq (): number { return this.hashes.length }
  hashAt (seq: number): string | undefined { return this.hashes[seq - 1] }
  signatureAt (seq: number): Uint8Array | undefined { return this.sigs[seq - 1] }
  get head (): string | undefined { return this.hashes.at(-1) }

  /** The signed change at `seq`. */
  changeAt (seq: number): SignedChange | undefined {
    const hash = this.hashAt(seq)
    if (hash === undefined) return undefined
    const change = A.getBackend(this.doc).getChangeByHash(hash)
    return change === null ? undefined : { change, signature: this.sigs[seq - 1] }
  }

  /** Signed changes after `seq`, oldest first. */
  changesAfter (seq: number): SignedChange[] {
    if (seq >= this.seq) return []
    const changes = seq <= 0 ? A.getAllChanges(this.doc) : A.getChangesSince(this.doc, [this.hashAt(seq) as string])
    return changes.map((change, i) => ({ change, signature: this.sigs[seq + i] }))
  }

  /**
   * Checks and applies the next change of this feed (`v.seq === this.seq + 1`, signature already
   * verified). On refusal nothing changes.
   */
  apply (v: VerifiedChange): ApplyVerdict {
    if (v.seq !== this.seq + 1) return { ok: false, reason: `change ${v.seq} of ${v.author} does not follow ${this.seq}` }
    if (this.cut !== undefined && v.seq > this.cut) return { ok: false, reason: `the feed of ${v.author} was cut at ${this.cut} for equivocation` }
    const prev = this.head
    const deps = v.deps
    if (prev === undefined ? deps.length !== 0 : deps.length !== 1 || deps[0] !== prev) {
      return { ok: false, reason: `change ${v.seq} of ${v.author} must depend on its previous change only` }
    }
    if (v.change.length > MAX_CHANGE_BYTES) return { ok: false, reason: `change ${v.seq} of ${v.author} is ${v.change.length} bytes (at most ${MAX_CHANGE_BYTES})` }
    const before = this.doc
    let after: A.Doc<FeedDoc>
    // The feed is a chain and this change follows its head: the patches of applying it are
    // exactly what it did (no second diff needed).
    let patches: A.Patch[] = []
    try {
      [after] = A.applyChanges(before, [v.change], { patchCallback: p => { patches = p } })
    } catch (err: any) {
      this.rollBack(before, prev)
      return { ok: false, reason: `change does not apply: ${err.message}` }
    }
    const problem = checkPatches(before, after, patches, v.seq)
    if (problem !== undefined) {
      this.rollBack(after, prev)
      return { ok: false, reason: `change ${v.seq} of ${v.author}: ${problem}` }
    }
    this.doc = after
    this.record(v.hash, v.signature, v.seq, patches)
    return { ok: true }
  }

  /** Records a change the host made itself (trusted: no checks). */
  appendOwn (hash: string, signature: Uint8Array, seq: number, startOp: number, next: A.Doc<FeedDoc>): void {
    const prev = this.head
    this.doc = next
    this.startOps.push(startOp)
    this.record(hash, signature, seq, A.diff(next, prev === undefined ? [] : [prev], [hash]), true)
  }

  private record (hash: string, signature: Uint8Array, seq: number, patches: A.Patch[], startKnown = false): void {
    this.hashes.push(hash)
    this.sigs.push(signature)
    if (!startKnown) {
      const [meta] = A.getChangesMetaSince(this.doc, this.hashes.length > 1 ? [this.hashes[this.hashes.length - 2]] : [])
      this.startOps.push(meta?.startOp ?? 0)
    }
    for (const p of patches) {
      const [top, key] = p.path
      if (top === 'requests' && typeof key === 'string' && p.path.length === 2 && p.action === 'put' && !this.requestSeq.has(key)) this.requestSeq.set(key, seq)
      if (top === 'events' && typeof key === 'number' && p.path.length === 2 && p.action === 'insert') {
        for (let i = 0; i < p.values.length; i++) this.eventSeq[key + i] = seq
      }
    }
    this.version++
  }

  private rollBack (doc: A.Doc<FeedDoc>, head: string | undefined): void {
    this.doc = A.clone(A.view(doc, head === undefined ? [] : [head]))
  }

  /** Cuts the feed after `seq` (equivocation at seq + 1): rebuilt from its first changes. */
  cutAt (seq: number): void {
    const keep = this.changesAfter(0).slice(0, Math.max(0, seq))
    const feed = Feed.fromChanges(this.author, keep)
    this.doc = feed.doc
    this.hashes = feed.hashes
    this.sigs = feed.sigs
    this.startOps = feed.startOps
    this.eventSeq = feed.eventSeq
    this.requestSeq.clear()
    for (const [k, s] of feed.requestSeq) this.requestSeq.set(k, s)
    this.cut = Math.min(this.cut ?? Infinity, seq)
    this.version++
    this.epoch++
  }

  /** A feed from its own changes, in order, already verified (a host's log, or a cut). */
  static fromChanges (author: string, changes: SignedChange[], actor?: string): Feed {
    const feed = new Feed(author, actor)
    if (changes.length === 0) return feed
    ;[feed.doc] = A.applyChanges(feed.doc, changes.map(c => c.change))
    feed.index(changes.map(c => c.signature))
    return feed
  }

  /** A feed loaded from `A.save` bytes plus its signatures by sequence number (a snapshot). */
  static load (author: string, saved: Uint8Array, signatures: Uint8Array[], actor?: string): Feed {
    const feed = new Feed(author, undefined, A.load<FeedDoc>(saved, actor === undefined ? undefined : { actor }))
    feed.index(signatures)
    if (feed.seq !== signatures.length) throw new Error(`feed of ${author} holds ${feed.seq} changes, its index ${signatures.length}`)
    return feed
  }

  /** Rebuilds the indexes from the document itself (after loading or cutting). */
  private index (signatures: Uint8Array[]): void {
    const metas = A.getChangesMetaSince(this.doc, [])
    this.hashes = metas.map(m => m.hash)
    this.startOps = metas.map(m => m.startOp)
    this.sigs = signatures.slice(0, metas.length)
    this.requestSeq.clear()
    for (const id of Object.keys(this.doc.requests ?? {})) {
      const seq = this.seqOfObject(A.getObjectId(this.doc.requests as object, id))
      if (seq !== undefined) this.requestSeq.set(id, seq)
    }
    const events = this.doc.events
    this.eventSeq = []
    if (Array.isArray(events)) {
      for (let i = 0; i < events.length; i++) this.eventSeq[i] = this.seqOfObject(A.getObjectId(events, i)) ?? 0
    }
    this.version++
    this.epoch++
  }

  /** The sequence number of the change whose operation made object `objId` (`counter@actor`). */
  private seqOfObject (objId: string | null): number | undefined {
    if (objId === null) return undefined
    const counter = Number(objId.slice(0, objId.indexOf('@')))
    let lo = 0
    let hi = this.startOps.length - 1
    let found: number | undefined
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if (this.startOps[mid] <= counter) { found = mid; lo = mid + 1 } else hi = mid - 1
    }
    return found === undefined ? undefined : found + 1
  }
}

/**
 * What a change may do, judged on the feed before and after it: touch only the known parts; the
 * genesis (`mesh`) only in the first change; append membership events and requests, never change
 * or remove one; keep the host record within its size.
 */
function checkPatches (before: A.Doc<FeedDoc>, after: A.Doc<FeedDoc>, patches: A.Patch[], seq: number): string | undefined {
  const eventsBefore = Array.isArray(before.events) ? before.events.length : undefined
  let hostTouched = false
  for (const p of patches) {
    const [top, key] = p.path
    if (typeof top !== 'string' || !TOP_LEVEL.has(top)) return `writes an unknown part of the state (${String(top)})`
    switch (top) {
      case 'mesh':
        if (seq !== 1) return 'the mesh genesis can be written only in a feed\'s first change'
        break
      case 'host':
        hostTouched = true
        break
      case 'events':
        if (p.path.length === 1) {
          if (eventsBefore !== undefined) return 'replaces or removes the membership events'
        } else if (typeof key !== 'number' || (eventsBefore !== undefined && key < eventsBefore) || p.action === 'del') {
          return 'changes or removes a membership event (they are append-only)'
        }
        break
      case 'requests':
        if (p.path.length === 1) {
          if (before.requests !== undefined) return 'replaces or removes the stored requests'
        } else if (p.action === 'del' && p.path.length === 2) {
          return `removes stored request ${String(key)} (requests are immutable)`
        } else if (before.requests !== undefined && Object.hasOwn(before.requests, String(key))) {
          return `changes stored request ${String(key)} (requests are immutable)`
        }
        break
    }
  }
  if (hostTouched && after.host !== undefined) {
    const size = JSON.stringify(after.host).length
    if (size > MAX_HOST_RECORD_BYTES) return `makes the host record ${size} bytes (at most ${MAX_HOST_RECORD_BYTES})`
  }
  return undefined
}
