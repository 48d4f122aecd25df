/**
 * The replicated state of one host: an Automerge document that only ever grows by signed,
 * verified, permitted changes, persisted in a crash-safe change log.
 *
 * @example
 * const store = await StateStore.open({ dir, key, log })
 * await store.change('set my name', d => { d.hosts[self].name = 'ninux-1' })
 * const result = await store.receive(signedChangesFromPeer, fromPeerId)
 */
import * as A from '@automerge/automerge'
import { EventEmitter } from 'node:events'
import { join } from 'node:path'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { actorForPeer } from '../keys/peer-key.ts'
import { ChangeLog } from './change-log.ts'
import { checkChange, checkGenesis, type Path } from './permissions.ts'
import { causalView } from './causal-view.ts'
import type { MeshDoc } from './schema.ts'
import {
  signChangeHash, verifyChange, encodeSignedChange, decodeSignedChange, InvalidChangeError,
  type SignedChange, type VerifiedChange
} from './signed-changes.ts'
import {
  encodeSnapshot, decodeSnapshot, coversPrefix, readSnapshotFile, writeSnapshotFile, removeSnapshotFile,
  type IndexEntry
} from './snapshot.ts'
import { silentLogger, type Logger } from '../node/log.ts'

export interface StoreInit {
  dir: string
  key: PrivateKey
  log?: Logger
  /** Changes held while their dependencies are missing. @default 10000 */
  maxPending?: number
  /** Write a snapshot after this many new changes (and at close). @default SNAPSHOT_EVERY */
  snapshotEvery?: number
}

export interface Rejection {
  hash: string
  author?: string
  reason: string
  /** The sender provably misbehaved (bad signature, forbidden write, equivocation). */
  misbehaviour: boolean
}

export interface ReceiveResult {
  applied: VerifiedChange[]
  duplicates: number
  pending: number
  rejected: Rejection[]
}

export interface StoreEvents {
  /** The document changed (local or remote changes). */
  change: [{ changes: VerifiedChange[], local: boolean }]
  rejected: [Rejection & { from?: string }]
}

export const CHANGE_LOG_FILE = 'changes.log'

/**
 * A snapshot (crdt/snapshot.ts) is written after this many new changes, and at close. A.save
 * blocks the event loop for a time that grows with the state: 0.25–0.4 s for the bench's 100
 * hosts / 10,000 requests (22,300 changes, 3 MB saved), so it must be rare: at a few changes a
 * second (a busy mesh's status reports) 1,000 means one every few minutes, well under 1% of the
 * loop. It also bounds what a crash costs: at most 1,000 changes applied on top of the last
 * snapshot (0.6 s on that state, on a loaded 2-core machine).
 */
export const SNAPSHOT_EVERY = 1000

export class StateStore extends EventEmitter<StoreEvents> {
  readonly self: string
  private docState: A.Doc<MeshDoc>
  private readonly key: PrivateKey
  private readonly changeLog: ChangeLog
  private readonly log: Logger
  private readonly signatures = new Map<string, Uint8Array>()
  /** actor:seq → hash, to detect equivocation (same seq, different content). */
  private readonly seqIndex = new Map<string, string>()
  private readonly pending = new Map<string, VerifiedChange>()
  private readonly maxPending: number
  /** Set while joining: the genesis of the mesh we join may be accepted into an empty document. */
  acceptGenesis = false
  private queue: Promise<unknown> = Promise.resolve()
  private readonly actor: string
  private readonly dir: string
  private readonly snapshotEvery: number
  /** Log records covered by the snapshot on disk (0: none). */
  private snapshotRecords = 0
  /** Changes indexed since the last snapshot was taken. */
  private sinceSnapshot = 0
  private snapshotDue = false
  private snapshots: Promise<void> = Promise.resolve()
  /** A received change could not be persisted: the document holds more than the log. */
  private logBehind = false
  private closing = false

  private constructor (init: StoreInit, changeLog: ChangeLog, doc: A.Doc<MeshDoc>) {
    super()
    this.key = init.key
    this.self = peerIdFromPrivateKey(init.key).toString()
    this.actor = A.getActorId(doc)
    this.changeLog = changeLog
    this.docState = doc
    this.log = init.log ?? silentLogger
    this.maxPending = init.maxPending ?? 10_000
    this.dir = init.dir
    this.snapshotEvery = init.snapshotEvery ?? SNAPSHOT_EVERY
  }

  /**
   * Loads the state: the latest snapshot, if it is intact and covers a prefix of the change log,
   * plus the log records after it; otherwise the whole log (never fails for want of a snapshot).
   */
  static async open (init: StoreInit): Promise<StateStore> {
    const log = init.log ?? silentLogger
    const actor = actorForPeer(peerIdFromPrivateKey(init.key))
    const { log: changeLog, records, ends } = await ChangeLog.open(join(init.dir, CHANGE_LOG_FILE), log)
    const snap = await loadSnapshot(init.dir, records, ends, actor, log)
    const store = new StateStore(init, changeLog, snap?.doc ?? A.init<MeshDoc>({ actor }))
    for (const e of snap?.entries ?? []) store.indexEntry(e.hash, e.signature, e.actor, e.seq)
    store.snapshotRecords = snap?.records ?? 0
    // Our own log was verified when each change was first accepted; re-check only the framing.
    const changes: Uint8Array[] = []
    for (let i = store.snapshotRecords; i < records.length; i++) {
      const s = decodeSignedChange(records[i])
      const d = A.decodeChange(s.change)
      if (d.hash === undefined) continue
      store.indexEntry(d.hash, s.signature, d.actor, d.seq)
      changes.push(s.change)
    }
    if (changes.length > 0) [store.docState] = A.applyChanges(store.docState, changes)
    store.sinceSnapshot = changes.length
    log.info('loaded state', { changes: store.signatures.size, fromSnapshot: snap?.entries.length ?? 0, fromLog: changes.length, bytes: changeLog.bytes })
    return store
  }

  get doc (): A.Doc<MeshDoc> { return this.docState }
  get inMesh (): boolean { return this.docState.mesh !== undefined }
  get meshId (): string | undefined { return this.docState.mesh?.id }
  heads (): string[] { return A.getHeads(this.docState) }
  get changeCount (): number { return this.signatures.size }
  get pendingCount (): number { return this.pending.size }
  get logBytes (): number { return this.changeLog.bytes }
  /** The directory holding the state (log, snapshot), where caches of derived data may be kept too. */
  get stateDir (): string { return this.dir }

  has (hash: string): boolean { return this.signatures.has(hash) }

  /** Runs one state mutation at a time, so local and remote changes never interleave. */
  private async serial<T> (fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn)
    this.queue = next.catch(() => {})
    return await next
  }

  /**
   * Makes a local change, signs it, and persists it before it can be sent anywhere (a host that
   * restarted without it would reuse its sequence number: equivocation). Returns undefined when
   * `fn` changed nothing.
   */
  async change (message: string, fn: (d: MeshDoc) => void): Promise<SignedChange | undefined> {
    return await this.serial(async () => {
      const before = A.getHeads(this.docState)
      const next = A.change(this.docState, { message, time: Math.floor(Date.now() / 1000) }, fn)
      if (next === this.docState) return undefined
      // The change's metadata (hash, seq, deps) without decoding its operations.
      const [meta] = A.getChangesMetaSince(next, before)
      const raw = A.getLastLocalChange(next)
      if (meta === undefined || raw === undefined) return undefined
      const signed = signChangeHash(raw, meta.hash, this.key)
      // Our own change: no need to verify our own signature again.
      const verified: VerifiedChange = { ...signed, hash: meta.hash, actor: meta.actor, seq: meta.seq, deps: meta.deps, author: this.self }
      await this.changeLog.append(encodeSignedChange(signed))
      this.docState = next
      this.index(verified)
      this.emit('change', { changes: [verified], local: true })
      return signed
    })
  }

  /** Verifies and applies changes from a peer; holds those whose dependencies are missing. */
  async receive (changes: SignedChange[], from?: string): Promise<ReceiveResult> {
    const result: ReceiveResult = { applied: [], duplicates: 0, pending: 0, rejected: [] }
    const verified: VerifiedChange[] = []
    for (const s of changes) {
      try {
        verified.push(await verifyChange(s))
      } catch (err: any) {
        const r: Rejection = { hash: '?', reason: err.message, misbehaviour: err instanceof InvalidChangeError }
        result.rejected.push(r)
        this.emit('rejected', { ...r, from })
      }
    }
    await this.serial(async () => {
      for (const v of verified) await this.offer(v, from, result)
      result.pending = this.pending.size
    })
    if (result.applied.length > 0) this.emit('change', { changes: result.applied, local: false })
    return result
  }

  private async offer (v: VerifiedChange, from: string | undefined, result: ReceiveResult): Promise<void> {
    if (this.signatures.has(v.hash) || this.pending.has(v.hash)) { result.duplicates++; return }
    const seqKey = `${v.actor}:${v.seq}`
    const other = this.seqIndex.get(seqKey)
    if (other !== undefined && other !== v.hash) {
      this.reject(result, v, from, `equivocation: ${v.author} signed two different changes with sequence number ${v.seq}`, true)
      return
    }
    if (!A.hasHeads(this.docState, v.deps)) {
      if (this.pending.size >= this.maxPending) {
        this.log.warn('pending change buffer full; dropping a change with missing dependencies', { hash: v.hash, from })
        return
      }
      this.pending.set(v.hash, v)
      return
    }
    await this.applyVerified(v, from, result)
    // Applying one change may release held ones.
    let progress = true
    while (progress && this.pending.size > 0) {
      progress = false
      for (const [hash, p] of this.pending) {
        if (A.hasHeads(this.docState, p.deps)) {
          this.pending.delete(hash)
          await this.applyVerified(p, from, result)
          progress = true
        }
      }
    }
  }

  private async applyVerified (v: VerifiedChange, from: string | undefined, result: ReceiveResult): Promise<void> {
    const headsBefore = A.getHeads(this.docState)
    // Applied in place (a copy first would cost a copy of the whole document per change); the
    // previous document object stays readable as the state before the change, and a rejected
    // change is rolled back from it (rare: only misbehaving peers pay for that copy).
    const previous = this.docState
    let applied: A.Doc<MeshDoc>
    try {
      [applied] = A.applyChanges(previous, [v.change])
    } catch (err: any) {
      this.rollBack(previous, headsBefore)
      this.reject(result, v, from, `change does not apply: ${err.message}`, true)
      return
    }
    // Judge the change in its own causal context: what it did relative to its dependencies (not
    // the merge with concurrent changes, where a losing write would be invisible), and what its
    // author could write there. When the change's causal past is exactly our document, the cheap
    // path gives the same answer: its deps are all in our document (offer() checked) and include
    // every one of our heads. (Automerge lists the author's own previous change among the deps
    // even when a later head covers it, so deps are often a strict superset of our heads.)
    const onOurHeads = coversHeads(v.deps, headsBefore)
    const paths: Path[] = (onOurHeads
      ? A.diff(applied, headsBefore, A.getHeads(applied))
      : A.diff(applied, v.deps, [v.hash])).map(p => p.path)
    let verdict
    if (v.deps.length === 0) {
      verdict = this.acceptGenesis && !this.inMesh
        ? checkGenesis(v.author, applied, paths)
        : { ok: false, reason: this.inMesh ? 'a second mesh genesis (this host is in another mesh)' : 'genesis from a host we are not joining' }
    } else {
      const requestIds = paths.filter(p => p[0] === 'requests' && p.length > 1).map(p => String(p[1]))
      const before = onOurHeads ? previous : causalView(previous, v.deps, requestIds)
      const own = onOurHeads ? applied : causalView(applied, [v.hash], requestIds)
      verdict = checkChange(v.author, before, own, paths)
    }
    if (!verdict.ok) {
      this.rollBack(applied, headsBefore)
      this.reject(result, v, from, verdict.reason ?? 'not permitted', true)
      return
    }
    // Not awaited: a received change need not be durable before we apply it (after a crash it is
    // simply synced again), and the log keeps the order, so a later local change that depends on
    // it can never be on disk without it. Our own changes are awaited (see `change`).
    this.changeLog.append(encodeSignedChange(v)).catch(err => {
      this.logBehind = true
      this.log.error('could not persist a received change; it will be synced again after a restart', { hash: v.hash, error: err.message })
    })
    this.docState = applied
    this.index(v)
    result.applied.push(v)
  }

  /** The document as it was at `heads`, on a fresh copy that keeps our actor id. */
  private rollBack (doc: A.Doc<MeshDoc>, heads: A.Heads): void {
    this.docState = A.clone(A.view(doc, heads), { actor: this.actor })
  }

  private reject (result: ReceiveResult, v: VerifiedChange, from: string | undefined, reason: string, misbehaviour: boolean): void {
    const r: Rejection = { hash: v.hash, author: v.author, reason, misbehaviour }
    result.rejected.push(r)
    this.log.warn('rejected change', { hash: v.hash.slice(0, 12), author: v.author, from, reason })
    this.emit('rejected', { ...r, from })
  }

  private index (v: VerifiedChange): void {
    this.indexEntry(v.hash, v.signature, v.actor, v.seq)
    if (++this.sinceSnapshot >= this.snapshotEvery) this.scheduleSnapshot()
  }

  private indexEntry (hash: string, signature: Uint8Array, actor: string, seq: number): void {
    this.signatures.set(hash, signature)
    this.seqIndex.set(`${actor}:${seq}`, hash)
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
   * Writes a snapshot of the state as it is now (crdt/snapshot.ts), unless the one on disk is
   * already current. Taken between two mutations, once every record is durable, so it covers
   * exactly a prefix of the log.
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
      const entries: IndexEntry[] = []
      for (const [key, hash] of this.seqIndex) {
        const at = key.lastIndexOf(':')
        entries.push({ hash, signature: this.signatures.get(hash) as Uint8Array, actor: key.slice(0, at), seq: Number(key.slice(at + 1)) })
      }
      return { pos, bytes: encodeSnapshot({ log: pos, heads: A.getHeads(this.docState), doc: A.save(this.docState), entries }) }
    })
    if (taken === undefined) return
    await writeSnapshotFile(this.dir, taken.bytes)
    this.snapshotRecords = taken.pos.records
    this.log.debug('wrote a snapshot of the state', { records: taken.pos.records, bytes: taken.bytes.length })
  }

  /** Signed changes a peer with `theirHeads` lacks. Heads we don't know are ignored. */
  changesSince (theirHeads: string[]): SignedChange[] {
    const known = theirHeads.filter(h => this.signatures.has(h))
    return A.getChangesSince(this.docState, known).map(change => {
      const { hash } = A.decodeChange(change)
      return { change, signature: this.signatures.get(hash as string) as Uint8Array }
    })
  }

  /** History of the document, oldest first (the audit log). */
  history (): Array<{ hash: string, author: string, time: number, message: string | null, seq: number }> {
    return A.getHistory(this.docState).map(state => {
      const c = state.change
      return { hash: c.hash as string, author: c.actor, time: c.time, message: c.message, seq: c.seq }
    })
  }

  async close (): Promise<void> {
    this.closing = true
    await this.queue
    await this.snapshot().catch(err => this.log.warn('could not write a snapshot of the state at close', { error: err.message }))
    await this.changeLog.close()
  }
}

/**
 * The snapshot of a state dir, loaded, if it is intact and covers a prefix of this log. Any other
 * snapshot is removed (so that it can never match a log that has changed since) and the caller
 * replays the whole log.
 */
async function loadSnapshot (dir: string, records: Uint8Array[], ends: number[], actor: string, log: Logger):
Promise<{ doc: A.Doc<MeshDoc>, entries: IndexEntry[], records: number } | undefined> {
  let reason: string
  try {
    const bytes = await readSnapshotFile(dir)
    if (bytes === undefined) {
      if (records.length > 0) log.warn('no snapshot of the state; replaying the whole change log', { records: records.length })
      return undefined
    }
    const snap = decodeSnapshot(bytes)
    if (coversPrefix(snap.log, records, ends)) {
      const doc = A.load<MeshDoc>(snap.doc, { actor })
      if (sameSet(A.getHeads(doc), snap.heads)) return { doc, entries: snap.entries, records: snap.log.records }
      A.free(doc)
      reason = 'its document does not have the heads it names'
    } else {
      reason = `it does not match the change log (snapshot: ${snap.log.records} records, ${snap.log.bytes} bytes; log: ${records.length} records, ${ends.at(-1) ?? 0} bytes)`
    }
  } catch (err: any) {
    reason = err.message
  }
  log.warn('ignoring the snapshot of the state; replaying the whole change log', { reason })
  await removeSnapshotFile(dir).catch(err => log.warn('could not remove the snapshot', { error: err.message }))
  return undefined
}

function sameSet (a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false
  const s = new Set(a)
  return b.every(x => s.has(x))
}

/** Every one of `heads` is among `deps`. */
function coversHeads (deps: string[], heads: string[]): boolean {
  return heads.every(h => deps.includes(h))
}
