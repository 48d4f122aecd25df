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
import { actorForPeer } from '../keys/peer-key.ts'
import { ChangeLog, ChangeLogError } from './change-log.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { Feed, MAX_CHANGE_BYTES } from './feed.ts'
import type { OrphanLimits } from './orphans.ts'
import { Replica, validGenesisIn } from './replica.ts'
import { ViewCache, type StateView } from './view.ts'
import { encodeEvidence, openEvidence, type Evidence } from './evidence.ts'
import type { FeedDoc, MeshDoc } from './schema.ts'
import {
  signChangeHash, verifyChange, encodeSignedChange, InvalidChangeError,
  type SignedChange, type VerifiedChange
} from './signed-changes.ts'
import {
  encodeSnapshot, decodeSnapshot, coversPrefix, readSnapshotFile, writeSnapshotFile, removeSnapshotFile, snapshotOf,
  type Snapshot
} from './snapshot.ts'
import { RECORD_CHANGE, RECORD_EVIDENCE, record, readLogRecords } from './log-records.ts'
import { changesFor, digestInput, frontier, heads, type FrontierEntry } from './frontier.ts'
export { logRecordOf } from './log-records.ts'
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

export type { Blame, Rejection, ReceiveResult } from './replica.ts'
import type { Rejection, ReceiveResult } from './replica.ts'

export interface StoreEvents {
  /** The state changed (local or remote changes). */
  change: [{ changes: VerifiedChange[], local: boolean }]
  rejected: [Rejection & { from?: string }]
  /** An author was caught signing two changes with one sequence number. */
  equivocation: [Evidence & { from?: string }]
}

export type { FrontierEntry } from './frontier.ts'

export const CHANGE_LOG_FILE = 'changes.log'

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
  private readonly replica: Replica
  private readonly view: ViewCache
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

  private constructor (init: StoreInit, changeLog: ChangeLog) {
    super()
    this.key = init.key
    this.self = peerIdFromPrivateKey(init.key).toString()
    this.actor = actorForPeer(peerIdFromPrivateKey(init.key))
    this.changeLog = changeLog
    this.log = init.log ?? silentLogger
    this.dir = init.dir
    this.snapshotEvery = init.snapshotEvery ?? SNAPSHOT_EVERY
    this.replica = new Replica({
      self: this.self,
      actor: this.actor,
      applied: v => { this.persistApplied(v) },
      evidence: (e, from) => { this.persistEvidence(e, from) },
      refused: (r, from) => { this.refused(r, from) }
    }, init.orphans)
    const replica = this.replica
    this.view = new ViewCache({ feeds: replica.feeds, get founder () { return replica.founder }, version: () => replica.version })
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
      store.replica.addFeed(feed)
    }
    store.snapshotRecords = snap?.log.records ?? 0
    // Our own log: every change was verified when first accepted; only the chain is re-checked.
    const { byAuthor, evidence: logged, replayed } = readLogRecords(records, store.snapshotRecords, log)
    evidence.push(...logged)
    for (const [author, list] of byAuthor) store.replica.replay(author, list)
    for (const e of evidence) {
      try { store.replica.cutFor(await openEvidence(e)) } catch (err: any) { log.warn('ignoring unreadable evidence in the state', { error: err.message }) }
    }
    store.sinceSnapshot = replayed
    store.replica.refreshNamed()
    store.replica.drainOrphans()
    log.info('loaded state', { changes: store.changeCount, feeds: store.feeds.size, fromSnapshot: snap === undefined ? 0 : snap.log.records, fromLog: replayed, held: store.pendingCount, bytes: changeLog.bytes })
    if (store.ownFeedIncomplete) log.warn('changes of this host\'s own feed are missing from the log; it will not write until they are fetched back from a peer')
    return store
  }

  /** The validated, folded state (crdt/view.ts). Empty until this host is in a mesh. */
  get doc (): MeshDoc {
    return this.view.get().doc ?? EMPTY
  }

  /** The whole view: the doc, the membership fold, problems found per author. */
  state (): StateView { return this.view.get() }

  get inMesh (): boolean { return this.view.get().doc !== undefined }
  get meshId (): string | undefined { return this.view.get().genesis?.id }
  get founder (): string | undefined { return this.replica.founder }
  get feeds (): ReadonlyMap<string, Feed> { return this.replica.feeds }
  get changeCount (): number { return this.replica.hashes.size }
  get pendingCount (): number { return this.replica.orphans.size }
  get pendingBytes (): number { return this.replica.orphans.bytes }
  /** Bumped by every change of the state: a cheap key for caches of derived data. */
  get version (): number { return this.replica.version }
  /** While joining: the id of the mesh whose genesis may be accepted into an empty state ('' any). */
  get joining (): string | undefined { return this.replica.joining }
  set joining (id: string | undefined) { this.replica.joining = id }
  get logBytes (): number { return this.changeLog.bytes }
  get stateDir (): string { return this.dir }
  /** Our own feed has a gap (a lost record): writing now could reuse a sequence number. */
  get ownFeedIncomplete (): boolean { return this.replica.orphans.authors().includes(this.self) }

  has (hash: string): boolean { return this.replica.hashes.has(hash) }

  /** The last change of every feed, sorted by author (for status). */
  heads (): string[] { return heads(this) }

  /** How far this host holds each feed. */
  frontier (): FrontierEntry[] { return frontier(this) }

  /** What two hosts compare to know whether they hold the same state: frontier and evidence. */
  digestInput (): string[] { return digestInput(this) }

  /** Evidence of equivocation held here. */
  evidence (): Evidence[] { return [...this.replica.evidenceMap.values()] }

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
      const feed = this.replica.ownFeed()
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
      feed.appendOwn(meta.hash, signed.signature, meta.seq, meta.startOp, next)
      if (this.replica.founder === undefined && meta.seq === 1 && validGenesisIn(feed)) this.replica.founder = this.self
      const verified: VerifiedChange = { ...signed, hash: meta.hash, actor: meta.actor, seq: meta.seq, deps: meta.deps, author: this.self }
      this.replica.index(verified)
      this.counted()
      this.replica.refreshNamed()
      this.emit('change', { changes: [verified], local: true })
      return signed
    })
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
        if (budget !== undefined && !this.replica.hashes.has(v.hash) && !budget(v.author, s.change.length)) {
          (result.throttled ??= []).push(v.author)
          continue
        }
        verified.push(v)
      } catch (err: any) {
        this.refuse(result, { hash: '?', reason: err.message, blame: 'sender', misbehaviour: err instanceof InvalidChangeError }, from)
      }
    }
    await this.serial(async () => {
      for (const v of verified) this.replica.offer(v, from, result)
      this.replica.drainOrphans(result)
      result.pending = this.replica.orphans.size
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
      if (this.replica.evidenceMap.has(e.id)) continue
      // Evidence about a key nobody admitted proves nothing anyone cares about: it would only
      // grow the state (a feed and a log record each), so it is not taken.
      if (!this.replica.named.has(e.author)) continue
      await this.serial(async () => { if (this.replica.cutFor(e)) this.persistEvidence(e, from) })
      accepted++
    }
    return { accepted, rejected }
  }

  private refuse (result: ReceiveResult, r: Rejection, from: string | undefined): void {
    result.rejected.push(r)
    this.refused(r, from)
  }

  /** A change joined the state: counted towards the next snapshot. */
  private counted (): void {
    if (++this.sinceSnapshot >= this.snapshotEvery) this.scheduleSnapshot()
  }

  /**
   * A received change that joined its feed. Not awaited: it need not be durable before it is
   * applied (after a crash it is simply synced again), and the log keeps the order.
   */
  private persistApplied (v: VerifiedChange): void {
    this.changeLog.append(record(RECORD_CHANGE, encodeSignedChange(v))).catch(err => {
      this.logBehind = true
      this.log.error('could not persist a received change; it will be synced again after a restart', { hash: v.hash, error: err.message })
    })
    this.counted()
  }

  /** New evidence: kept in the log, logged, told (the author is out of the mesh from its cut). */
  private persistEvidence (e: Evidence, from?: string): void {
    this.changeLog.append(record(RECORD_EVIDENCE, encodeEvidence(e))).catch(err => {
      this.log.error('could not persist evidence of equivocation', { author: e.author, error: err.message })
    })
    this.log.warn('equivocation: an author signed two different changes with one sequence number; its feed ends before it', { author: e.author, seq: e.seq, from })
    if (e.author === this.self) this.log.error('this host\'s own feed was cut for equivocation (was its state restored from an old copy?): it is out of the mesh; join again with a new peer key')
    this.emit('equivocation', { ...e, from })
    this.emit('change', { changes: [], local: false })
  }

  private refused (r: Rejection, from: string | undefined): void {
    this.log.warn('rejected change', { hash: r.hash.slice(0, 12), author: r.author, from, reason: r.reason })
    this.emit('rejected', { ...r, from })
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
      return { pos, bytes: encodeSnapshot(snapshotOf(pos, this.replica.feeds.values(), this.replica.evidenceMap.values())) }
    })
    if (taken === undefined) return
    await writeSnapshotFile(this.dir, taken.bytes)
    this.snapshotRecords = taken.pos.records
    this.log.debug('wrote a snapshot of the state', { records: taken.pos.records, bytes: taken.bytes.length })
  }

  /** The changes a peer whose frontier is `theirs` lacks (crdt/frontier.ts). */
  changesFor (theirs: ReadonlyMap<string, { seq: number, hash16: string }>, upTo?: ReadonlyMap<string, number>): SignedChange[] {
    return changesFor(this, theirs, upTo)
  }

  /** Encoded evidence the peer does not list. */
  evidenceFor (theirs: ReadonlySet<string>): Uint8Array[] {
    return this.evidence().filter(e => !theirs.has(e.id)).map(e => encodeEvidence(e))
  }

  /** History of every feed, oldest first (the audit log). */
  history (): Array<{ hash: string, author: string, time: number, message: string | null, seq: number }> {
    const out: Array<{ hash: string, author: string, time: number, message: string | null, seq: number }> = []
    for (const f of this.replica.feeds.values()) {
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
