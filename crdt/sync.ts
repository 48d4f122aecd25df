/**
 * Sync of signed changes between two hosts over a libp2p stream. Automerge's own sync protocol
 * applies changes with no validation hook, so peers exchange signed changes instead:
 *
 *   initiator → HELLO {mesh, heads}
 *   responder → HELLO {mesh, heads}, CHANGES…, END     (what the initiator lacks)
 *   initiator → CHANGES…, END                          (what the responder lacks)
 *
 * One and a half round trips whatever the gap. Frames are length-prefixed: one type byte, then a
 * body (JSON for HELLO/ERROR, binary for CHANGES).
 */
import { lpStream } from 'it-length-prefixed-stream'
import type { Stream } from '@libp2p/interface'
import { encodeSignedChange, decodeSignedChange, type SignedChange } from './signed-changes.ts'
import type { StateStore, ReceiveResult } from './store.ts'
import type { Logger } from '../node/log.ts'

export const SYNC_PROTOCOL = '/picocloud/sync/1.0.0'

const HELLO = 1
const CHANGES = 2
const END = 3
const ERROR = 4

/** Frames stay well under the stream's limit; a catch-up of many changes spans several. */
const MAX_FRAME = 1024 * 1024
const MAX_HEADS = 1024

export interface Hello { mesh: string, heads: string[] }

export class SyncError extends Error {
  override name = 'SyncError'
  readonly code: string
  constructor (code: string, message: string) {
    super(message)
    this.code = code
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

function* changeFrames (changes: SignedChange[]): Generator<Uint8Array> {
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
    return frame(CHANGES, body)
  }
  for (const c of changes) {
    const enc = encodeSignedChange(c)
    if (size + enc.length + 4 > MAX_FRAME && batch.length > 0) yield flush()
    batch.push(enc); size += enc.length
  }
  if (batch.length > 0) yield flush()
}

function parseChanges (body: Uint8Array): SignedChange[] {
  const out: SignedChange[] = []
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
  let off = 0
  while (off < body.length) {
    if (off + 4 > body.length) throw new SyncError('BAD_FRAME', 'truncated CHANGES frame')
    const len = view.getUint32(off); off += 4
    if (off + len > body.length) throw new SyncError('BAD_FRAME', 'truncated change in CHANGES frame')
    out.push(decodeSignedChange(body.subarray(off, off + len))); off += len
  }
  return out
}

function parseHello (body: Uint8Array): Hello {
  let v: any
  try { v = JSON.parse(new TextDecoder().decode(body)) } catch { throw new SyncError('BAD_FRAME', 'HELLO is not JSON') }
  if (typeof v?.mesh !== 'string' || !Array.isArray(v.heads) || v.heads.length > MAX_HEADS ||
    v.heads.some((h: unknown) => typeof h !== 'string' || !/^[0-9a-f]{64}$/.test(h))) {
    throw new SyncError('BAD_FRAME', 'malformed HELLO')
  }
  return { mesh: v.mesh, heads: v.heads }
}

type Lp = ReturnType<typeof lpStream<Stream>>

async function readFrame (lp: Lp, signal?: AbortSignal): Promise<{ type: number, body: Uint8Array }> {
  const buf = (await lp.read({ signal })).subarray()
  if (buf.length === 0) throw new SyncError('BAD_FRAME', 'empty frame')
  const type = buf[0]
  const body = buf.subarray(1)
  if (type === ERROR) {
    let e: any = {}
    try { e = JSON.parse(new TextDecoder().decode(body)) } catch {}
    throw new SyncError(String(e.code ?? 'REMOTE_ERROR'), String(e.message ?? 'the other host refused to sync'))
  }
  return { type, body }
}

async function sendChanges (lp: Lp, changes: SignedChange[], stats: SyncStats, signal?: AbortSignal): Promise<void> {
  for (const f of changeFrames(changes)) {
    await lp.write(f, { signal })
    stats.bytesSent += f.length
  }
  stats.sent += changes.length
  await lp.write(frame(END, new Uint8Array()), { signal })
}

async function receiveChanges (lp: Lp, store: StateStore, from: string, stats: SyncStats, signal?: AbortSignal): Promise<void> {
  const all: SignedChange[] = []
  for (;;) {
    const { type, body } = await readFrame(lp, signal)
    stats.bytesReceived += body.length + 1
    if (type === END) break
    if (type !== CHANGES) throw new SyncError('BAD_FRAME', `unexpected frame type ${type}`)
    all.push(...parseChanges(body))
  }
  const r = await store.receive(all, from)
  stats.received.applied.push(...r.applied)
  stats.received.duplicates += r.duplicates
  stats.received.rejected.push(...r.rejected)
  stats.received.pending = r.pending
}

const emptyStats = (): SyncStats => ({ sent: 0, received: { applied: [], duplicates: 0, pending: 0, rejected: [] }, bytesSent: 0, bytesReceived: 0 })

/** Runs the initiator side on an open stream. `mesh` is '' when joining. */
export async function syncInitiator (stream: Stream, store: StateStore, remote: string, signal?: AbortSignal): Promise<SyncStats> {
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME + 16 })
  const stats = emptyStats()
  await lp.write(json(HELLO, { mesh: store.meshId ?? '', heads: store.heads() }), { signal })
  const first = await readFrame(lp, signal)
  if (first.type !== HELLO) throw new SyncError('BAD_FRAME', 'expected HELLO')
  const theirs = parseHello(first.body)
  if (store.meshId !== undefined && theirs.mesh !== store.meshId) {
    throw new SyncError('WRONG_MESH', `${remote} is in mesh ${theirs.mesh}, this host in ${store.meshId}`)
  }
  await receiveChanges(lp, store, remote, stats, signal)
  await sendChanges(lp, store.changesSince(theirs.heads), stats, signal)
  await stream.close({ signal })
  return stats
}

/** Runs the responder side; only members reach it (the connection gater saw to that). */
export async function syncResponder (stream: Stream, store: StateStore, remote: string, log: Logger, signal?: AbortSignal): Promise<SyncStats> {
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME + 16 })
  const stats = emptyStats()
  try {
    const first = await readFrame(lp, signal)
    if (first.type !== HELLO) throw new SyncError('BAD_FRAME', 'expected HELLO')
    const theirs = parseHello(first.body)
    if (store.meshId === undefined) {
      await lp.write(json(ERROR, { code: 'NOT_IN_MESH', message: 'this host is not in a mesh yet' }), { signal })
      await stream.close({ signal })
      return stats
    }
    if (theirs.mesh !== '' && theirs.mesh !== store.meshId) {
      await lp.write(json(ERROR, { code: 'WRONG_MESH', message: `this host is in mesh ${store.meshId}, not ${theirs.mesh}` }), { signal })
      await stream.close({ signal })
      return stats
    }
    await lp.write(json(HELLO, { mesh: store.meshId, heads: store.heads() }), { signal })
    await sendChanges(lp, store.changesSince(theirs.heads), stats, signal)
    await receiveChanges(lp, store, remote, stats, signal)
    await stream.close({ signal })
  } catch (err: any) {
    log.debug('sync with peer failed', { peer: remote, error: err.message })
    stream.abort(err)
    throw err
  }
  return stats
}
