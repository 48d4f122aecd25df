/**
 * Sync of feeds between two hosts over a libp2p stream. Each side says how far it holds every feed
 * (its frontier: author, sequence number, hash prefix) and which equivocation evidence it has; each
 * then sends exactly what the other lacks:
 *
 *   initiator → HELLO {mesh, frontier, evidence}
 *   responder → HELLO {mesh, frontier, evidence}, CHANGES…, EVIDENCE…, END
 *   initiator → CHANGES…, EVIDENCE…, END
 *
 * One and a half round trips whatever the gap, and never more than the gap: a frontier can always
 * be compared (unlike heads, which mean nothing to a host that lacks them). Where the two hashes at
 * one position differ, the sender's change there goes along: it proves the author's equivocation.
 *
 * Every input is bounded. A receiver knows from the sender's HELLO how many changes it can send at
 * most (the gap per feed, plus one fork proof each) and how much evidence: anything more, a change
 * of a feed the sender did not list, or one outside the gap, ends the sync as misbehaviour. Frames
 * are applied as they arrive (no buffering of a whole stream), each read must come within
 * IDLE_MS, and a whole sync within its deadline.
 */
import { lpStream } from 'it-length-prefixed-stream'
import type { Stream } from '@libp2p/interface'
import { encodeSignedChange, decodeSignedChange, type SignedChange } from './signed-changes.ts'
import * as A from '@automerge/automerge'
import { peerForActor } from '../keys/peer-key.ts'
import type { StateStore, ReceiveResult, FrontierEntry } from './store.ts'
import type { Logger } from '../node/log.ts'

export const SYNC_PROTOCOL = '/picocloud/sync/2.0.0'

const HELLO = 1
const CHANGES = 2
const END = 3
const ERROR = 4
const EVIDENCE = 5

/** Frames stay well under the stream's limit; a catch-up of many changes spans several. */
export const MAX_FRAME = 1024 * 1024
const MAX_FRONTIER = 100_000
const MAX_EVIDENCE_IDS = 10_000
/** A read that takes longer than this ends the sync (a peer dribbling bytes holds nothing for long). */
export const IDLE_MS = 20_000
/** The longest a whole sync may take (a catch-up of a large state over a slow link fits). */
export const SYNC_DEADLINE_MS = 5 * 60_000

export interface Hello { mesh: string, frontier: FrontierEntry[], evidence: string[] }

export class SyncError extends Error {
  override name = 'SyncError'
  readonly code: string
  /** The peer broke the protocol (more than it announced, garbage): penalise it. */
  readonly misbehaviour: boolean
  constructor (code: string, message: string, misbehaviour = false) {
    super(message)
    this.code = code
    this.misbehaviour = misbehaviour
  }
}

export interface SyncStats {
  sent: number
  received: ReceiveResult
  bytesSent: number
  bytesReceived: number
}

function frame (type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 1)
  out[0] = type
  out.set(body, 1)
  return out
}

const json = (type: number, v: unknown): Uint8Array => frame(type, new TextEncoder().encode(JSON.stringify(v)))

function * batches (type: number, items: Uint8Array[]): Generator<Uint8Array> {
  let batch: Uint8Array[] = []
  let size = 0
  const flush = (): Uint8Array => {
    const body = new Uint8Array(size + 4 * batch.length)
    const view = new DataView(body.buffer)
    let off = 0
    for (const c of batch) {
      view.setUint32(off, c.length); off += 4
      body.set(c, off); off += c.length
    }
    batch = []; size = 0
    return frame(type, body)
  }
  for (const enc of items) {
    if (size + enc.length + 4 > MAX_FRAME && batch.length > 0) yield flush()
    batch.push(enc); size += enc.length
  }
  if (batch.length > 0) yield flush()
}

function parseItems (body: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = []
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
  let off = 0
  while (off < body.length) {
    if (off + 4 > body.length) throw new SyncError('BAD_FRAME', 'truncated frame', true)
    const len = view.getUint32(off); off += 4
    if (off + len > body.length) throw new SyncError('BAD_FRAME', 'truncated item in frame', true)
    out.push(body.subarray(off, off + len)); off += len
  }
  return out
}

function parseHello (body: Uint8Array): Hello {
  let v: any
  try { v = JSON.parse(new TextDecoder().decode(body)) } catch { throw new SyncError('BAD_FRAME', 'HELLO is not JSON', true) }
  const ok = typeof v?.mesh === 'string' && v.mesh.length <= 64 && Array.isArray(v.frontier) && v.frontier.length <= MAX_FRONTIER &&
    Array.isArray(v.evidence) && v.evidence.length <= MAX_EVIDENCE_IDS &&
    v.evidence.every((e: unknown) => typeof e === 'string' && /^[0-9a-f]{64}$/.test(e)) &&
    v.frontier.every((e: unknown) => Array.isArray(e) && e.length === 3 && typeof e[0] === 'string' && e[0].length <= 64 &&
      Number.isSafeInteger(e[1]) && e[1] >= 1 && typeof e[2] === 'string' && /^[0-9a-f]{16}$/.test(e[2]))
  if (!ok) throw new SyncError('BAD_FRAME', 'malformed HELLO', true)
  return { mesh: v.mesh, frontier: v.frontier.map((e: [string, number, string]) => ({ author: e[0], seq: e[1], hash16: e[2] })), evidence: v.evidence }
}

/** Our HELLO, and the frontier it announced (what we may send in this sync, at most). */
function hello (store: StateStore): { bytes: Uint8Array, announced: Map<string, number> } {
  const frontier = store.frontier()
  const bytes = json(HELLO, {
    mesh: store.meshId ?? '',
    frontier: frontier.map(e => [e.author, e.seq, e.hash16]),
    evidence: store.evidence().map(e => e.id)
  })
  return { bytes, announced: new Map(frontier.map(e => [e.author, e.seq])) }
}

type Lp = ReturnType<typeof lpStream<Stream>>

async function readFrame (lp: Lp, signal: AbortSignal): Promise<{ type: number, body: Uint8Array }> {
  const buf = (await lp.read({ signal: AbortSignal.any([signal, AbortSignal.timeout(IDLE_MS)]) })).subarray()
  if (buf.length === 0) throw new SyncError('BAD_FRAME', 'empty frame', true)
  const type = buf[0]
  const body = buf.subarray(1)
  if (type === ERROR) {
    let e: any = {}
    try { e = JSON.parse(new TextDecoder().decode(body)) } catch {}
    throw new SyncError(String(e.code ?? 'REMOTE_ERROR').slice(0, 64), String(e.message ?? 'the other host refused to sync').slice(0, 500))
  }
  return { type, body }
}

/** A write the peer must take within IDLE_MS: a peer that asks for everything and stops reading is cut. */
async function write (lp: Lp, f: Uint8Array, signal: AbortSignal): Promise<void> {
  await lp.write(f, { signal: AbortSignal.any([signal, AbortSignal.timeout(IDLE_MS)]) })
}

async function send (lp: Lp, store: StateStore, theirs: Hello, announced: ReadonlyMap<string, number>, stats: SyncStats, signal: AbortSignal): Promise<void> {
  const changes = store.changesFor(new Map(theirs.frontier.map(e => [e.author, { seq: e.seq, hash16: e.hash16 }])), announced)
  for (const f of batches(CHANGES, changes.map(c => encodeSignedChange(c)))) {
    await write(lp, f, signal)
    stats.bytesSent += f.length
  }
  stats.sent += changes.length
  // Evidence after the changes: a host takes evidence only about hosts it knows to be admitted,
  // and a host that is joining learns the admissions from these very changes.
  const ev = store.evidenceFor(new Set(theirs.evidence))
  for (const f of batches(EVIDENCE, ev)) { await write(lp, f, signal); stats.bytesSent += f.length }
  await write(lp, frame(END, new Uint8Array()), signal)
}

/** What the sender announced it may send us: per feed, the sequence numbers we lack, and fork proofs. */
class Allowance {
  private readonly gap = new Map<string, { from: number, to: number, fork: boolean }>()
  private evidence: number

  /**
   * `announced`: the frontier our HELLO told them, what they send from (not our frontier now: a
   * concurrent sync may have brought us further since, and that is no fault of theirs).
   */
  constructor (store: StateStore, theirs: Hello, announced: ReadonlyMap<string, number>) {
    for (const t of theirs.frontier) {
      // They may send the changes we lack, and their change at our position (a fork proof). Not
      // capped at a cut we hold: they may not know of it yet, and changes past it are ignored here.
      this.gap.set(t.author, { from: Math.max(1, announced.get(t.author) ?? 1), to: t.seq, fork: true })
    }
    const known = new Set(store.evidence().map(e => e.id))
    // What they listed, plus one per feed: they may catch an equivocation in what we send them.
    this.evidence = theirs.evidence.filter(id => !known.has(id)).length + theirs.frontier.length + 1
  }

  /** Whether a change (author, seq) is within what was announced (the count is bounded apart). */
  take (author: string, seq: number): boolean {
    const g = this.gap.get(author)
    if (g === undefined || seq < g.from || seq > g.to) return false
    return true
  }

  takeEvidence (): boolean {
    return this.evidence-- > 0
  }
}

/**
 * What a sync may take of the peer's own feed: its changes count against its rate
 * (`SyncOptions.budget`), as on gossip; changes of other authors it passes on were taken by it
 * under the same limit, so they are not throttled again.
 */
export interface SyncOptions { budget?: (author: string, bytes: number) => boolean }

async function receive (lp: Lp, store: StateStore, from: string, theirs: Hello, announced: ReadonlyMap<string, number>, stats: SyncStats, signal: AbortSignal, opts: SyncOptions = {}): Promise<void> {
  const budget = opts.budget === undefined ? undefined : (author: string, bytes: number): boolean => author !== from || (opts.budget as NonNullable<SyncOptions['budget']>)(author, bytes)
  const allow = new Allowance(store, theirs, announced)
  let count = 0
  const limit = theirs.frontier.reduce((n, t) => n + Math.max(0, t.seq - (announced.get(t.author) ?? 0)) + 1, 0)
  for (;;) {
    const { type, body } = await readFrame(lp, signal)
    stats.bytesReceived += body.length + 1
    if (type === END) break
    if (type === EVIDENCE) {
      const items = parseItems(body)
      for (const _ of items) if (!allow.takeEvidence()) throw new SyncError('TOO_MUCH', `${from} sent more evidence than it announced`, true)
      const r = await store.receiveEvidence(items, from)
      if (r.rejected > 0) throw new SyncError('BAD_EVIDENCE', `${from} sent evidence that proves nothing`, true)
      continue
    }
    if (type !== CHANGES) throw new SyncError('BAD_FRAME', `unexpected frame type ${type}`, true)
    const changes: SignedChange[] = []
    for (const item of parseItems(body)) {
      let s: SignedChange
      let meta: { actor: string, seq: number }
      try {
        s = decodeSignedChange(item)
        meta = A.decodeChange(s.change)
      } catch (err: any) {
        throw new SyncError('BAD_FRAME', `undecodable change: ${err.message}`, true)
      }
      if (++count > limit) throw new SyncError('TOO_MUCH', `${from} sent more changes than it announced`, true)
      const author = authorOf(meta.actor)
      if (author === undefined || !allow.take(author, meta.seq)) {
        throw new SyncError('UNANNOUNCED', `${from} sent change ${meta.seq} of a feed outside what it announced`, true)
      }
      changes.push(s)
    }
    const r = await store.receive(changes, from, budget)
    stats.received.applied.push(...r.applied)
    stats.received.duplicates += r.duplicates
    stats.received.rejected.push(...r.rejected)
    stats.received.evidence.push(...r.evidence)
    if (r.throttled !== undefined) (stats.received.throttled ??= []).push(...r.throttled)
    stats.received.pending = r.pending
    if (r.rejected.some(x => x.blame === 'sender')) throw new SyncError('INVALID', `${from} sent an invalid change: ${r.rejected.find(x => x.blame === 'sender')?.reason ?? ''}`, true)
  }
}

const actors = new Map<string, string | undefined>()
function authorOf (actor: string): string | undefined {
  let a = actors.get(actor)
  if (a === undefined && !actors.has(actor)) {
    try { a = peerForActorString(actor) } catch { a = undefined }
    if (actors.size > 10_000) actors.clear()
    actors.set(actor, a)
  }
  return a
}

const emptyStats = (): SyncStats => ({ sent: 0, received: { applied: [], duplicates: 0, pending: 0, rejected: [], evidence: [] }, bytesSent: 0, bytesReceived: 0 })

function deadline (signal?: AbortSignal): AbortSignal {
  const t = AbortSignal.timeout(SYNC_DEADLINE_MS)
  return signal === undefined ? t : AbortSignal.any([signal, t])
}

/** Runs the initiator side on an open stream. */
export async function syncInitiator (stream: Stream, store: StateStore, remote: string, signal?: AbortSignal, opts: SyncOptions = {}): Promise<SyncStats> {
  const sig = deadline(signal)
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME + 16 })
  const stats = emptyStats()
  const mine = hello(store)
  await write(lp, mine.bytes, sig)
  const first = await readFrame(lp, sig)
  if (first.type !== HELLO) throw new SyncError('BAD_FRAME', 'expected HELLO', true)
  const theirs = parseHello(first.body)
  if (store.meshId !== undefined && theirs.mesh !== store.meshId) {
    throw new SyncError('WRONG_MESH', `${remote} is in mesh ${theirs.mesh}, this host in ${store.meshId}`)
  }
  if (store.meshId === undefined && store.joining !== undefined) store.joining = theirs.mesh
  await receive(lp, store, remote, theirs, mine.announced, stats, sig, opts)
  await send(lp, store, theirs, mine.announced, stats, sig)
  await stream.close({ signal: sig })
  return stats
}

/** Runs the responder side; only members reach it (the connection gater saw to that). */
export async function syncResponder (stream: Stream, store: StateStore, remote: string, log: Logger, signal?: AbortSignal, opts: SyncOptions = {}): Promise<SyncStats> {
  const sig = deadline(signal)
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME + 16 })
  const stats = emptyStats()
  try {
    const first = await readFrame(lp, sig)
    if (first.type !== HELLO) throw new SyncError('BAD_FRAME', 'expected HELLO', true)
    const theirs = parseHello(first.body)
    if (store.meshId === undefined) {
      await lp.write(json(ERROR, { code: 'NOT_IN_MESH', message: 'this host is not in a mesh yet' }), { signal: sig })
      await stream.close({ signal: sig })
      return stats
    }
    if (theirs.mesh !== '' && theirs.mesh !== store.meshId) {
      await lp.write(json(ERROR, { code: 'WRONG_MESH', message: `this host is in mesh ${store.meshId}, not ${theirs.mesh}` }), { signal: sig })
      await stream.close({ signal: sig })
      return stats
    }
    const mine = hello(store)
    await write(lp, mine.bytes, sig)
    await send(lp, store, theirs, mine.announced, stats, sig)
    await receive(lp, store, remote, theirs, mine.announced, stats, sig, opts)
    await stream.close({ signal: sig })
  } catch (err: any) {
    log.debug('sync with peer failed', { peer: remote, error: err.message })
    stream.abort(err)
    throw err
  }
  return stats
}

function peerForActorString (actor: string): string {
  return peerForActor(actor).toString()
}
