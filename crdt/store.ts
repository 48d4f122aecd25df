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
import type { MeshDoc } from './schema.ts'
import {
  signChange, verifyChange, encodeSignedChange, decodeSignedChange, InvalidChangeError,
  type SignedChange, type VerifiedChange
} from './signed-changes.ts'
import { silentLogger, type Logger } from '../node/log.ts'

export interface StoreInit {
  dir: string
  key: PrivateKey
  log?: Logger
  /** Changes held while their dependencies are missing. @default 10000 */
  maxPending?: number
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

  private constructor (init: StoreInit, changeLog: ChangeLog, doc: A.Doc<MeshDoc>) {
    super()
    this.key = init.key
    this.self = peerIdFromPrivateKey(init.key).toString()
    this.actor = A.getActorId(doc)
    this.changeLog = changeLog
    this.docState = doc
    this.log = init.log ?? silentLogger
    this.maxPending = init.maxPending ?? 10_000
  }

  static async open (init: StoreInit): Promise<StateStore> {
    const log = init.log ?? silentLogger
    const actor = actorForPeer(peerIdFromPrivateKey(init.key))
    const { log: changeLog, records } = await ChangeLog.open(join(init.dir, CHANGE_LOG_FILE), log)
    const store = new StateStore(init, changeLog, A.init<MeshDoc>({ actor }))
    // Our own log was verified when each change was first accepted; re-check only the framing.
    const changes: Uint8Array[] = []
    for (const rec of records) {
      const s = decodeSignedChange(rec)
      const d = A.decodeChange(s.change)
      if (d.hash === undefined) continue
      store.signatures.set(d.hash, s.signature)
      store.seqIndex.set(`${d.actor}:${d.seq}`, d.hash)
      changes.push(s.change)
    }
    if (changes.length > 0) [store.docState] = A.applyChanges(store.docState, changes)
    log.info('loaded state', { changes: changes.length, bytes: changeLog.bytes })
    return store
  }

  get doc (): A.Doc<MeshDoc> { return this.docState }
  get inMesh (): boolean { return this.docState.mesh !== undefined }
  get meshId (): string | undefined { return this.docState.mesh?.id }
  heads (): string[] { return A.getHeads(this.docState) }
  get changeCount (): number { return this.signatures.size }
  get pendingCount (): number { return this.pending.size }
  get logBytes (): number { return this.changeLog.bytes }

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
      if (A.getHeads(next).join() === before.join()) return undefined
      const raw = A.getLastLocalChange(next)
      if (raw === undefined) return undefined
      const signed = await signChange(raw, this.key)
      // Our own change: no need to verify our own signature again.
      const d = A.decodeChange(raw)
      const verified: VerifiedChange = { ...signed, hash: d.hash as string, actor: d.actor, seq: d.seq, deps: d.deps, author: this.self }
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
    // The change is applied to a copy first, and the copy becomes the document once the change
    // is judged and persisted. The copy keeps our actor id (a fork would get a random one).
    let applied: A.Doc<MeshDoc>
    try {
      [applied] = A.applyChanges(A.clone(this.docState, { actor: this.actor }), [v.change])
    } catch (err: any) {
      this.reject(result, v, from, `change does not apply: ${err.message}`, true)
      return
    }
    // Judge the change in its own causal context: what it did relative to its dependencies (not
    // the merge with concurrent changes, where a losing write would be invisible), and what its
    // author could write there. When the change was made on exactly our heads, the cheap path
    // gives the same answer.
    const onOurHeads = sameSet(v.deps, headsBefore)
    const paths: Path[] = (onOurHeads
      ? A.diff(applied, headsBefore, A.getHeads(applied))
      : A.diff(applied, v.deps, [v.hash])).map(p => p.path)
    let verdict
    if (v.deps.length === 0) {
      verdict = this.acceptGenesis && !this.inMesh
        ? checkGenesis(v.author, applied, paths)
        : { ok: false, reason: this.inMesh ? 'a second mesh genesis (this host is in another mesh)' : 'genesis from a host we are not joining' }
    } else {
      const before = onOurHeads ? this.docState : A.view(this.docState, v.deps)
      const own = onOurHeads ? applied : A.view(applied, [v.hash])
      verdict = checkChange(v.author, before, own, paths)
    }
    if (!verdict.ok) {
      A.free(applied)
      this.reject(result, v, from, verdict.reason ?? 'not permitted', true)
      return
    }
    // Not awaited: a received change need not be durable before we apply it (after a crash it is
    // simply synced again), and the log keeps the order, so a later local change that depends on
    // it can never be on disk without it. Our own changes are awaited (see `change`).
    this.changeLog.append(encodeSignedChange(v)).catch(err => {
      this.log.error('could not persist a received change; it will be synced again after a restart', { hash: v.hash, error: err.message })
    })
    this.docState = applied
    this.index(v)
    result.applied.push(v)
  }

  private reject (result: ReceiveResult, v: VerifiedChange, from: string | undefined, reason: string, misbehaviour: boolean): void {
    const r: Rejection = { hash: v.hash, author: v.author, reason, misbehaviour }
    result.rejected.push(r)
    this.log.warn('rejected change', { hash: v.hash.slice(0, 12), author: v.author, from, reason })
    this.emit('rejected', { ...r, from })
  }

  private index (v: VerifiedChange): void {
    this.signatures.set(v.hash, v.signature)
    this.seqIndex.set(`${v.actor}:${v.seq}`, v.hash)
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
    await this.queue
    await this.changeLog.close()
  }
}

function sameSet (a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false
  const s = new Set(a)
  return b.every(x => s.has(x))
}
