/**
 * The replicated state of one host: one feed per author (crdt/feed.ts), each an Automerge
 * document only its author writes, that grow only by signed, verified, checked changes, persisted
 * in a crash-safe change log. What the rest of the daemon reads is `doc`, the validated, folded
 * view (crdt/view.ts).
 *
 * Why feeds and not one shared document: with one document, an author chooses the dependencies
 * of its changes, so a check "against the change's own past" can be fooled by leaving things out,
 * and a concurrent write can win Automerge's conflict resolution by operation count. With one
 * single-writer chain per author, no two authors ever write the same key, the only per-change
 * check is about the author's own chain, and what counts (membership, rights) is a deterministic
 * fold over all feeds (crdt/fold.ts). An equivocating author (two changes with one sequence number)
 * strands nobody else's changes: no feed depends on another. docs/byzantine.md has the reasoning.
 *
 * @example
 * const store = await StateStore.open({ dir, key, log })
 * await store.change('set my name', d => { d.host!.name = 'ninux-1' })
 * const result = await store.receive(signedChangesFromPeer, fromPeerId)
 */
import * as A from '@automerge/automerge'
import { EventEmitter } from 'node:events'
import { join } from 'node:path'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { actorForPeer, peerForActor } from '../keys/peer-key.ts'
import { ChangeLog, ChangeLogError } from './change-log.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { Feed, MAX_CHANGE_BYTES } from './feed.ts'
import { Orphans, type OrphanLimits } from './orphans.ts'
import { ViewCache, type StateView } from './view.ts'
import { meshIdFor } from './mesh-id.ts'
import { makeEvidence, encodeEvidence, openEvidence, type Evidence } from './evidence.ts'
import type { FeedDoc, MeshDoc } from './schema.ts'
import {
  signChangeHash, verifyChange, encodeSignedChange, decodeSignedChange, InvalidChangeError,
  type SignedChange, type VerifiedChange
} from './signed-changes.ts'
import {
  encodeSnapshot, decodeSnapshot, coversPrefix, readSnapshotFile, writeSnapshotFile, removeSnapshotFile,
  type Snapshot
} from './snapshot.ts'
import { silentLogger, type Logger } from '../node/log.ts'

export interface StoreInit {
  dir: string
  key: PrivateKey
  log?: Logger
  /** Limits of the buffer of changes held for a missing predecessor or admission. */
  orphans?: OrphanLimits
  /** Write a snapshot after this many new changes (and at close). @default SNAPSHOT_EVERY */
  snapshotEvery?: number
}

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

export interface StoreEvents {
  /** The state changed (local or remote changes). */
  change: [{ changes: VerifiedChange[], local: boolean }]
  rejected: [Rejection & { from?: string }]
  /** An author was caught signing two changes with one sequence number. */
  equivocation: [Evidence & { from?: string }]
}

/** One entry of a frontier: an author's feed as far as this host holds it. */
export interface FrontierEntry { author: string, seq: number, hash16: string }

export const CHANGE_LOG_FILE = 'changes.log'

/** Log records: a type byte, then the body. */
const RECORD_CHANGE = 1
const RECORD_EVIDENCE = 2

/**
 * A snapshot (crdt/snapshot.ts) is written after this many new changes, and at close. A.save
 * blocks the event loop for a time that grows with the state, so it must be rare; it also bounds
 * what a crash costs: at most this many changes applied on top of the last snapshot.
 */
export const SNAPSHOT_EVERY = 1000

export class StateStore extends EventEmitter<StoreEvents> {
  readonly self: string
  readonly actor: string
  private readonly key: PrivateKey
  private readonly changeLog: ChangeLog
  private readonly log: Logger
  private readonly feedMap = new Map<string, Feed>()
  private founderPeer?: string
  /** Peers named by some admission (or the founder): only their changes are taken. */
  private readonly named = new Set<string>()
  private readonly hashes = new Map<string, { author: string, seq: number }>()
  private readonly orphans: Orphans
  private readonly evidenceMap = new Map<string, Evidence>()
  private readonly view: ViewCache
  /** While joining: the id of the mesh whose genesis may be accepted into an empty state. */
  joining: string | undefined
  private queue: Promise<unknown> = Promise.resolve()
  private readonly dir: string
  private readonly snapshotEvery: number
  private snapshotRecords = 0
  private sinceSnapshot = 0
  private snapshotDue = false
  private snapshots: Promise<void> = Promise.resolve()
  private logBehind = false
  private closing = false
  private writeGate: Promise<void> = Promise.resolve()
  /** Bumped by every change of the state: a cheap key for caches of derived data. */
  version = 0

  private constructor (init: StoreInit, changeLog: ChangeLog) {
    super()
    this.key = init.key
    this.self = peerIdFromPrivateKey(init.key).toString()
    this.actor = actorForPeer(peerIdFromPrivateKey(init.key))
    this.changeLog = changeLog
    this.log = init.log ?? silentLogger
    this.dir = init.dir
    this.snapshotEvery = init.snapshotEvery ?? SNAPSHOT_EVERY
    this.orphans = new Orphans(init.orphans)
    const store = this // eslint-disable-line @typescript-eslint/no-this-alias
    this.view = new ViewCache({ feeds: this.feedMap, get founder () { return store.founderPeer } })
  }

  /**
   * Loads the state: the latest snapshot, if it is intact and covers a prefix of the change log,
   * plus the log records after it; otherwise the whole log. Records of a feed after a gap (a
   * corrupt record skipped) are held until the missing change is fetched from a peer.
   */
  static async open (init: StoreInit): Promise<StateStore> {
    const log = init.log ?? silentLogger
    let opened
    try {
      opened = await ChangeLog.open(join(init.dir, CHANGE_LOG_FILE), log)
    } catch (err) {
      // An older or foreign log: a clear refusal, never a misreading (and no stack trace).
      if (err instanceof ChangeLogError) throw new PicocloudError(ErrorCode.Config, err.message, 500)
      throw err
    }
    const { log: changeLog, records, ends } = opened
    const store = new StateStore(init, changeLog)
    const snap = await loadSnapshot(init.dir, records, ends, log)
    const evidence: Uint8Array[] = [...(snap?.evidence ?? [])]
    for (const f of snap?.feeds ?? []) {
      const feed = Feed.load(f.author, f.doc, f.signatures, f.author === store.self ? store.actor : undefined)
      if (f.cut !== undefined) feed.cut = f.cut
      store.addFeed(feed)
    }
    store.snapshotRecords = snap?.log.records ?? 0
    // Our own log: every change was verified when first accepted; only the chain is re-checked.
    const byAuthor = new Map<string, VerifiedChange[]>()
    let replayed = 0
    for (let i = store.snapshotRecords; i < records.length; i++) {
      const r = records[i]
      try {
        if (r[0] === RECORD_EVIDENCE) { evidence.push(r.subarray(1)); continue }
        if (r[0] !== RECORD_CHANGE) throw new Error(`unknown record type ${r[0]}`)
        const s = decodeSignedChange(r.subarray(1))
        const d = A.decodeChange(s.change)
        if (d.hash === undefined) continue
        const author = peerForActor(d.actor).toString()
        const list = byAuthor.get(author) ?? []
        list.push({ ...s, hash: d.hash, actor: d.actor, seq: d.seq, deps: d.deps, author })
        byAuthor.set(author, list)
        replayed++
      } catch (err: any) {
        log.warn('skipping an unreadable record of the change log', { record: i, error: err.message })
      }
    }
    for (const [author, list] of byAuthor) store.replay(author, list)
    for (const e of evidence) {
      try { store.cutFor(await openEvidence(e), false) } catch (err: any) { log.warn('ignoring unreadable evidence in the state', { error: err.message }) }
    }
    store.sinceSnapshot = replayed
    store.refreshNamed()
    store.drainOrphans()
    log.info('loaded state', { changes: store.hashes.size, feeds: store.feedMap.size, fromSnapshot: snap === undefined ? 0 : snap.log.records, fromLog: replayed, held: store.orphans.size, bytes: changeLog.bytes })
    if (store.ownFeedIncomplete) log.warn('changes of this host\'s own feed are missing from the log; it will not write until they are fetched back from a peer')
    return store
  }

  /** Applies changes from our own log in order: the contiguous run of each feed, the rest held. */
  private replay (author: string, list: VerifiedChange[]): void {
    list.sort((a, b) => a.seq - b.seq)
    let feed = this.feedMap.get(author)
    const start = feed?.seq ?? 0
    const run: VerifiedChange[] = []
    for (const v of list) {
      if (v.seq <= start) continue
      if (v.seq === start + run.length + 1) run.push(v)
      else this.orphans.add(v, undefined)
    }
    if (run.length === 0) return
    const actor = author === this.self ? this.actor : undefined
    if (feed === undefined) {
      feed = Feed.fromChanges(author, run, actor)
      this.addFeed(feed)
    } else {
      const extended = Feed.fromChanges(author, [...feed.changesAfter(0), ...run], actor)
      extended.cut = feed.cut
      this.addFeed(extended)
    }
  }

  private addFeed (feed: Feed): void {
    this.feedMap.set(feed.author, feed)
    for (let s = 1; s <= feed.seq; s++) this.hashes.set(feed.hashAt(s) as string, { author: feed.author, seq: s })
    if (this.founderPeer === undefined && feed.seq > 0 && validGenesisIn(feed)) this.founderPeer = feed.author
    this.version++
  }

  /** The validated, folded state (crdt/view.ts). Empty until this host is in a mesh. */
  get doc (): MeshDoc {
    return this.view.get().doc ?? EMPTY
  }

  /** The whole view: the doc, the membership fold, problems found per author. */
  state (): StateView { return this.view.get() }

  get inMesh (): boolean { return this.view.get().doc !== undefined }
  get meshId (): string | undefined { return this.view.get().genesis?.id }
  get founder (): string | undefined { return this.founderPeer }
  get feeds (): ReadonlyMap<string, Feed> { return this.feedMap }
  get changeCount (): number { return this.hashes.size }
  get pendingCount (): number { return this.orphans.size }
  get pendingBytes (): number { return this.orphans.bytes }
  get logBytes (): number { return this.changeLog.bytes }
  get stateDir (): string { return this.dir }
  /** Our own feed has a gap (a lost record): writing now could reuse a sequence number. */
  get ownFeedIncomplete (): boolean { return this.orphans.authors().includes(this.self) }

  has (hash: string): boolean { return this.hashes.has(hash) }

  /** The last change of every feed, sorted by author (for status). */
  heads (): string[] {
    return [...this.feedMap.values()].filter(f => f.seq > 0).sort((a, b) => cmp(a.author, b.author)).map(f => f.head as string)
  }

  /** How far this host holds each feed. */
  frontier (): FrontierEntry[] {
    const out: FrontierEntry[] = []
    for (const f of this.feedMap.values()) if (f.seq > 0) out.push({ author: f.author, seq: f.seq, hash16: (f.head as string).slice(0, 16) })
    return out.sort((a, b) => cmp(a.author, b.author))
  }

  /** What two hosts compare to know whether they hold the same state: frontier and evidence. */
  digestInput (): string[] {
    return [...this.frontier().map(e => `${e.author}:${e.seq}:${e.hash16}`), ...[...this.evidenceMap.keys()].map(k => `evidence:${k}`)]
  }

  /** Evidence of equivocation held here. */
  evidence (): Evidence[] { return [...this.evidenceMap.values()] }

  /**
   * Local changes wait for `gate` (they are not refused): a host that has just started waits to
   * hear its own feed back from a peer, so that a lost log tail can never make it reuse a sequence
   * number (node/node.ts decides how long).
   */
  holdWritesUntil (gate: Promise<void>): void {
    this.writeGate = gate
  }

  /** Runs one state mutation at a time, so local and remote changes never interleave. */
  private async serial<T> (fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn)
    this.queue = next.catch(() => {})
    return await next
  }

  /**
   * Makes a change to this host's own feed, signs it, and persists it before it can be sent
   * anywhere (a host that restarted without it would reuse its sequence number: equivocation).
   * Returns undefined when `fn` changed nothing.
   */
  async change (message: string, fn: (d: FeedDoc) => void): Promise<SignedChange | undefined> {
    await this.writeGate
    return await this.serial(async () => {
      const feed = this.ownFeed()
      if (feed.cut !== undefined) throw new Error('this host\'s own feed was cut for equivocation: it cannot write; join again with a new peer key')
      if (this.ownFeedIncomplete) throw new Error('changes of this host\'s own feed are missing; waiting to fetch them back from a peer before writing')
      const before = feed.head
      const next = A.change(feed.doc, { message, time: Math.floor(Date.now() / 1000) }, fn)
      if (next === feed.doc) return undefined
      const [meta] = A.getChangesMetaSince(next, before === undefined ? [] : [before])
      const raw = A.getLastLocalChange(next)
      if (meta === undefined || raw === undefined) return undefined
      const signed = signChangeHash(raw, meta.hash, this.key)
      await this.changeLog.append(record(RECORD_CHANGE, encodeSignedChange(signed)))
      feed.appendOwn(meta.hash, signed.signature, meta.seq, meta.startOp, next, raw.length)
      if (this.founderPeer === undefined && meta.seq === 1 && validGenesisIn(feed)) this.founderPeer = this.self
      const verified: VerifiedChange = { ...signed, hash: meta.hash, actor: meta.actor, seq: meta.seq, deps: meta.deps, author: this.self }
      this.indexed(verified)
      this.refreshNamed()
      this.emit('change', { changes: [verified], local: true })
      return signed
    })
  }

  private ownFeed (): Feed {
    let feed = this.feedMap.get(this.self)
    if (feed === undefined) {
      feed = new Feed(this.self, this.actor)
      this.feedMap.set(this.self, feed)
    }
    return feed
  }

  /**
   * Verifies and applies changes from a peer; holds those that cannot be applied yet. `budget`,
   * when given, is asked for each new change (author, bytes); a change it refuses is dropped and
   * its author listed in `throttled` (a later sync brings it again).
   */
  async receive (changes: SignedChange[], from?: string, budget?: (author: string, bytes: number) => boolean): Promise<ReceiveResult> {
    const result: ReceiveResult = { applied: [], duplicates: 0, pending: 0, rejected: [], evidence: [] }
    const verified: VerifiedChange[] = []
    for (const s of changes) {
      if (s.change.length > MAX_CHANGE_BYTES) {
        this.refuse(result, { hash: '?', reason: `change of ${s.change.length} bytes (at most ${MAX_CHANGE_BYTES})`, blame: 'sender', misbehaviour: true }, from)
        continue
      }
      try {
        const v = await verifyChange(s)
        if (budget !== undefined && !this.hashes.has(v.hash) && !budget(v.author, s.change.length)) {
          (result.throttled ??= []).push(v.author)
          continue
        }
        verified.push(v)
      } catch (err: any) {
        this.refuse(result, { hash: '?', reason: err.message, blame: 'sender', misbehaviour: err instanceof InvalidChangeError }, from)
      }
    }
    await this.serial(async () => {
      for (const v of verified) this.offer(v, from, result)
      this.drainOrphans(result)
      result.pending = this.orphans.size
    })
    if (result.applied.length > 0) this.emit('change', { changes: result.applied, local: false })
    return result
  }

  /** Evidence from a peer (sync): checked, then acted on like evidence found here. */
  async receiveEvidence (items: Uint8Array[], from?: string): Promise<{ accepted: number, rejected: number }> {
    let accepted = 0
    let rejected = 0
    for (const bytes of items) {
      let e: Evidence
      try {
        e = await openEvidence(bytes)
      } catch (err: any) {
        rejected++
        this.emit('rejected', { hash: '?', reason: `invalid evidence: ${err.message}`, blame: 'sender', misbehaviour: true, from })
        continue
      }
      if (this.evidenceMap.has(e.id)) continue
      // Evidence about a key nobody admitted proves nothing anyone cares about: it would only
      // grow the state (a feed and a log record each), so it is not taken.
      if (!this.named.has(e.author)) continue
      await this.serial(async () => { this.cutFor(e, true, from) })
      accepted++
    }
    return { accepted, rejected }
  }

  /**
   * `held`: the change was held and is offered again now. A refusal is then held against the peer
   * that sent it back then (in the event), never against the peer of the current exchange.
   */
  private offer (v: VerifiedChange, from: string | undefined, result: ReceiveResult, held = false): void {
    const feed = this.feedMap.get(v.author)
    if (feed?.cut !== undefined && v.seq > feed.cut) { result.duplicates++; return }
    if (feed !== undefined && v.seq <= feed.seq) {
      const ours = feed.hashAt(v.seq)
      if (ours === v.hash) { result.duplicates++; return }
      const held = feed.changeAt(v.seq)
      const e = held === undefined ? undefined : makeEvidence({ ...held, hash: ours as string, actor: v.actor, seq: v.seq, deps: [], author: v.author }, v)
      if (e !== undefined) { this.cutFor(e, true, from); result.evidence.push(e) }
      return
    }
    const twin = this.orphans.has(v.author, v.seq)
    if (twin !== undefined) {
      if (twin.hash === v.hash) { result.duplicates++; return }
      const e = makeEvidence(twin, v)
      if (e !== undefined) { this.cutFor(e, true, from); result.evidence.push(e) }
      return
    }
    if (feed === undefined && !this.named.has(v.author) && !this.mayBeGenesis(v)) { this.orphans.add(v, from); return }
    if (v.seq !== (feed?.seq ?? 0) + 1) { this.orphans.add(v, from); return }
    this.applyNext(v, from, result, held)
  }

  /** While joining: the first change of the feed that founded the mesh we join. */
  private mayBeGenesis (v: VerifiedChange): boolean {
    return this.joining !== undefined && this.founderPeer === undefined && v.seq === 1
  }

  private applyNext (v: VerifiedChange, from: string | undefined, result: ReceiveResult, held: boolean): void {
    const existing = this.feedMap.get(v.author)
    const feed = existing ?? new Feed(v.author, v.author === this.self ? this.actor : undefined)
    const eventsBefore = feed.eventSeq.length
    const verdict = feed.apply(v)
    if (!verdict.ok) {
      const r: Rejection = { hash: v.hash, author: v.author, reason: verdict.reason, blame: 'sender', misbehaviour: true }
      if (held) this.refuse({ ...result, rejected: [] }, r, from)
      else this.refuse(result, r, from)
      return
    }
    if (existing === undefined) {
      if (!this.named.has(v.author)) {
        // Only a genesis makes an unknown author's feed welcome, and only the one we join.
        const ok = validGenesisIn(feed) && (this.joining === '' || String(feed.doc.mesh?.id) === this.joining)
        if (!ok) { this.orphans.add(v, from); return }
        this.founderPeer = v.author
        this.named.add(v.author)
      }
      this.feedMap.set(v.author, feed)
    }
    // Not awaited: a received change need not be durable before we apply it (after a crash it is
    // simply synced again), and the log keeps the order.
    this.changeLog.append(record(RECORD_CHANGE, encodeSignedChange(v))).catch(err => {
      this.logBehind = true
      this.log.error('could not persist a received change; it will be synced again after a restart', { hash: v.hash, error: err.message })
    })
    this.indexed(v)
    if (feed.eventSeq.length !== eventsBefore) this.refreshNamed()
    result.applied.push(v)
  }

  /** Applies held changes that have become applicable, until none is. */
  private drainOrphans (result?: ReceiveResult): void {
    const r = result ?? { applied: [], duplicates: 0, pending: 0, rejected: [], evidence: [] }
    let progress = true
    while (progress) {
      progress = false
      for (const author of this.orphans.authors()) {
        const feed = this.feedMap.get(author)
        if (feed === undefined && !this.named.has(author) && this.joining === undefined) continue
        const next = this.orphans.take(author, (feed?.seq ?? 0) + 1)
        if (next === undefined) continue
        const before = r.applied.length
        this.offer(next.v, next.from, r, true)
        if (r.applied.length > before) progress = true
      }
    }
  }

  /** Acts on evidence: cuts the author's feed before the equivocation, keeps and logs the proof. */
  private cutFor (e: Evidence, persist: boolean, from?: string): void {
    if (this.evidenceMap.has(e.id)) return
    this.evidenceMap.set(e.id, e)
    const feed = this.feedMap.get(e.author) ?? new Feed(e.author)
    if (!this.feedMap.has(e.author)) this.feedMap.set(e.author, feed)
    const keep = e.seq - 1
    if (feed.cut === undefined || keep < feed.cut) {
      for (let s = keep + 1; s <= feed.seq; s++) this.hashes.delete(feed.hashAt(s) as string)
      feed.cutAt(keep)
    }
    this.orphans.dropAuthor(e.author, keep)
    this.version++
    if (persist) {
      this.changeLog.append(record(RECORD_EVIDENCE, encodeEvidence(e))).catch(err => {
        this.log.error('could not persist evidence of equivocation', { author: e.author, error: err.message })
      })
      this.log.warn('equivocation: an author signed two different changes with one sequence number; its feed ends before it', { author: e.author, seq: e.seq, from })
      if (e.author === this.self) this.log.error('this host\'s own feed was cut for equivocation (was its state restored from an old copy?): it is out of the mesh; join again with a new peer key')
      this.emit('equivocation', { ...e, from })
      this.emit('change', { changes: [], local: false })
    }
  }

  private refuse (result: ReceiveResult, r: Rejection, from: string | undefined): void {
    result.rejected.push(r)
    this.log.warn('rejected change', { hash: r.hash.slice(0, 12), author: r.author, from, reason: r.reason })
    this.emit('rejected', { ...r, from })
  }

  private indexed (v: VerifiedChange): void {
    this.hashes.set(v.hash, { author: v.author, seq: v.seq })
    this.version++
    if (++this.sinceSnapshot >= this.snapshotEvery) this.scheduleSnapshot()
  }

  /** Peers named by any admission, valid or not: whose feeds this host takes (bounded by the admitters). */
  private refreshNamed (): void {
    if (this.founderPeer !== undefined) this.named.add(this.founderPeer)
    for (const f of this.feedMap.values()) {
      const events = f.doc.events
      if (!Array.isArray(events)) continue
      for (const e of events) {
        const peer = (e as { peer?: unknown } | null)?.peer
        if (typeof peer === 'string' || peer instanceof A.ImmutableString) this.named.add(String(peer))
      }
    }
  }

  /** Off the path of the change that triggered it: after the current work, one at a time. */
  private scheduleSnapshot (): void {
    if (this.snapshotDue || this.closing) return
    this.snapshotDue = true
    setImmediate(() => {
      if (this.closing) { this.snapshotDue = false; return }
      this.snapshot().catch(err => this.log.warn('could not write a snapshot of the state', { error: err.message }))
        .finally(() => { this.snapshotDue = false })
    })
  }

  /**
   * Writes a snapshot of the state as it is now, unless the one on disk is already current. Taken
   * between two mutations, once every record is durable, so it covers exactly a prefix of the log.
   */
  async snapshot (): Promise<void> {
    const next = this.snapshots.then(async () => await this.writeSnapshot())
    this.snapshots = next.catch(() => {})
    await next
  }

  private async writeSnapshot (): Promise<void> {
    const taken = await this.serial(async () => {
      await this.changeLog.idle()
      this.sinceSnapshot = 0
      if (this.logBehind || this.changeLog.records === this.snapshotRecords) return undefined
      const pos = { bytes: this.changeLog.bytes, records: this.changeLog.records, lastChecksum: this.changeLog.lastChecksum }
      const snap: Snapshot = {
        log: pos,
        feeds: [...this.feedMap.values()].filter(f => f.seq > 0 || f.cut !== undefined).map(f => ({
          author: f.author,
          doc: A.save(f.doc),
          signatures: Array.from({ length: f.seq }, (_, i) => f.signatureAt(i + 1) as Uint8Array),
          ...(f.cut === undefined ? {} : { cut: f.cut })
        })),
        evidence: [...this.evidenceMap.values()].map(e => encodeEvidence(e))
      }
      return { pos, bytes: encodeSnapshot(snap) }
    })
    if (taken === undefined) return
    await writeSnapshotFile(this.dir, taken.bytes)
    this.snapshotRecords = taken.pos.records
    this.log.debug('wrote a snapshot of the state', { records: taken.pos.records, bytes: taken.bytes.length })
  }

  /**
   * The changes (and the evidence) a peer whose frontier is `theirs` lacks: the founder's feed
   * first (a joining host needs the genesis before anything else), then each feed from where the
   * peer is. Where the peer's hash at its position differs from ours, our change at that position
   * goes first: it shows the peer the equivocation.
   */
  changesFor (theirs: ReadonlyMap<string, { seq: number, hash16: string }>, upTo?: ReadonlyMap<string, number>): SignedChange[] {
    const out: SignedChange[] = []
    const feeds = [...this.feedMap.values()].sort((a, b) => Number(b.author === this.founderPeer) - Number(a.author === this.founderPeer) || cmp(a.author, b.author))
    for (const f of feeds) {
      // `upTo`: no further than this host announced (a sync peer takes nothing it was not told of;
      // changes applied since the announcement go in the next sync).
      const last = upTo === undefined ? f.seq : Math.min(f.seq, upTo.get(f.author) ?? 0)
      const t = theirs.get(f.author)
      const from = Math.max(0, t?.seq ?? 0)
      if (t !== undefined && from > 0 && from <= last && (f.hashAt(from) as string).slice(0, 16) !== t.hash16) {
        const fork = f.changeAt(from)
        if (fork !== undefined) out.push(fork)
      }
      if (from >= last) continue
      out.push(...f.changesAfter(from).slice(0, last - from))
    }
    return out
  }

  /** Encoded evidence the peer does not list. */
  evidenceFor (theirs: ReadonlySet<string>): Uint8Array[] {
    return [...this.evidenceMap.values()].filter(e => !theirs.has(e.id)).map(e => encodeEvidence(e))
  }

  /** History of every feed, oldest first (the audit log). */
  history (): Array<{ hash: string, author: string, time: number, message: string | null, seq: number }> {
    const out: Array<{ hash: string, author: string, time: number, message: string | null, seq: number }> = []
    for (const f of this.feedMap.values()) {
      for (const m of A.getChangesMetaSince(f.doc, [])) out.push({ hash: m.hash, author: f.author, time: m.time, message: m.message, seq: m.seq })
    }
    return out.sort((a, b) => a.time - b.time || cmp(a.author, b.author) || a.seq - b.seq)
  }

  async close (): Promise<void> {
    this.closing = true
    await this.queue
    await this.snapshot().catch(err => this.log.warn('could not write a snapshot of the state at close', { error: err.message }))
    await this.changeLog.close()
  }
}

const EMPTY: MeshDoc = { mesh: undefined as unknown as MeshDoc['mesh'], members: {}, hosts: {}, requests: new Map() }

/** A change as the change log holds it (for tools that write a log directly, e.g. the bench). */
export function logRecordOf (s: SignedChange): Uint8Array {
  return record(RECORD_CHANGE, encodeSignedChange(s))
}

function record (type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 1)
  out[0] = type
  out.set(body, 1)
  return out
}

/** The feed's first change founded a mesh: its genesis names the author and derives the id. */
function validGenesisIn (feed: Feed): boolean {
  const m = feed.doc.mesh as unknown as Record<string, unknown> | undefined
  if (m === undefined || m === null) return false
  const founder = String(m.founder)
  return founder === feed.author && String(m.id) === meshIdFor(founder, String(m.nonce))
}

/**
 * The snapshot of a state dir, loaded, if it is intact and covers a prefix of this log. Any other
 * snapshot is removed (so that it can never match a log that has changed since) and the caller
 * replays the whole log.
 */
async function loadSnapshot (dir: string, records: Uint8Array[], ends: number[], log: Logger): Promise<Snapshot | undefined> {
  let reason: string
  try {
    const bytes = await readSnapshotFile(dir)
    if (bytes === undefined) {
      if (records.length > 0) log.warn('no snapshot of the state; replaying the whole change log', { records: records.length })
      return undefined
    }
    const snap = decodeSnapshot(bytes)
    if (coversPrefix(snap.log, records, ends)) return snap
    reason = `it does not match the change log (snapshot: ${snap.log.records} records, ${snap.log.bytes} bytes; log: ${records.length} records, ${ends.at(-1) ?? 0} bytes)`
  } catch (err: any) {
    reason = err.message
  }
  log.warn('ignoring the snapshot of the state; replaying the whole change log', { reason })
  await removeSnapshotFile(dir).catch(err => log.warn('could not remove the snapshot', { error: err.message }))
  return undefined
}

function cmp (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
