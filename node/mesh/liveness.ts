/**
 * Liveness of hosts, kept in memory only (liveness in the CRDT would grow its history forever).
 *
 * Every connection to a member carries one long-lived beat stream per direction; each side writes
 * one beat per heartbeat interval and marks the peer heard on every beat it reads. A beat is 16
 * bytes: the 8-byte digest of its sender's heads, which drives anti-entropy
 * (node/mesh/anti-entropy.ts), then the beat's number and the number of the last beat heard from
 * the receiver (big-endian u32 each), which keep the sender's lease (crdt/lease.ts). The connection's
 * noise handshake already authenticated the peer, so a beat needs no signature, and it goes to
 * direct peers only: an idle 10-host mesh spends about 2 kbit/s per host on liveness, where signed
 * gossipsub heartbeats (flooded, forwarded by the mesh, announced by IHAVE) cost about 60 kbit/s.
 * A connection silent for three intervals is aborted: that is how a host that lost power without
 * closing its TCP connections is noticed (libp2p's own connection monitor, which opens a stream
 * per ping, is switched off in node/mesh/p2p.ts).
 */
import { pushable, type Pushable } from 'it-pushable'
import type { Connection } from '@libp2p/interface'
import type { P2PNode } from './p2p.ts'
import type { Logger } from '../log.ts'
import { DIGEST_BYTES } from './anti-entropy.ts'

export const BEAT_PROTOCOL = '/picocloud/beat/2.0.0'
/** Digest, beat number, echo. */
export const BEAT_BYTES = DIGEST_BYTES + 8

/** The lease's part of beats (node/mesh/lease.ts over crdt/lease.ts). */
export interface BeatLease {
  /** Numbers the beat about to go out. */
  sent: () => number
  /** The latest number, for a stream opened between beats. */
  current: () => number
  /** What to echo to a peer: the last beat heard from it, or 0. */
  echoFor: (peer: string) => number
  received: (peer: string, seq: number, echo: number) => void
}

export function encodeBeat (digest: Uint8Array, seq: number, echo: number): Uint8Array {
  const out = new Uint8Array(BEAT_BYTES)
  out.set(digest.subarray(0, DIGEST_BYTES))
  const v = new DataView(out.buffer)
  v.setUint32(DIGEST_BYTES, seq >>> 0)
  v.setUint32(DIGEST_BYTES + 4, echo >>> 0)
  return out
}

export function decodeBeat (frame: Uint8Array): { digest: Uint8Array, seq: number, echo: number } {
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength)
  return { digest: frame.slice(0, DIGEST_BYTES), seq: v.getUint32(DIGEST_BYTES), echo: v.getUint32(DIGEST_BYTES + 4) }
}
/** Intervals of silence after which a peer is down and its connection is dropped. */
export const SILENT_INTERVALS = 3

export class Liveness {
  private readonly seen = new Map<string, number>()
  private readonly intervalMs: number

  constructor (intervalMs: number) {
    this.intervalMs = intervalMs
  }

  heard (peer: string, at = Date.now()): void {
    this.seen.set(peer, at)
  }

  forget (peers: string[]): void {
    for (const p of peers) this.seen.delete(p)
  }

  lastSeen (peer: string): number | undefined {
    return this.seen.get(peer)
  }

  /** Heard within three heartbeat intervals. */
  alive (peer: string, now = Date.now()): boolean {
    const t = this.seen.get(peer)
    return t !== undefined && now - t <= SILENT_INTERVALS * this.intervalMs
  }
}

/**
 * Whether a connection should be dropped as dead: our beats have gone out on it for longer than
 * the silence allowance and nothing was heard from its peer within it. Peers that do not speak the
 * beat protocol (an older daemon) are never judged by it.
 */
export function isSilent (beatingSince: number, lastHeard: number | undefined, intervalMs: number, now: number): boolean {
  const allowance = SILENT_INTERVALS * intervalMs
  return now - beatingSince > allowance && (lastHeard === undefined || now - lastHeard > allowance)
}

export interface BeatsInit {
  p2p: P2PNode
  liveness: Liveness
  intervalMs: number
  /** Only members get beats (the gater admits a joining non-member for a moment). */
  isMember: (peer: string) => boolean
  /** What a beat carries: the digest of our heads. */
  digest: () => Uint8Array
  /** A peer's beat arrived with its digest. */
  onBeat: (peer: string, digest: Uint8Array) => void
  lease: BeatLease
  log: Logger
}

/** What we know of our side of one connection's beats. */
interface Outbound {
  /** When we first tried to beat on this connection: silence is counted from here. */
  since: number
  source?: Pushable<Uint8Array>
  opening?: boolean
  /**
   * The peer did not speak the beat protocol when we last asked (an older daemon, or one still
   * starting): not judged, and asked again after this time.
   */
  unsupportedUntil?: number
}

/** The beat streams of one host: sending on every member connection, reading what peers send. */
export class Beats {
  private readonly init: BeatsInit
  private readonly out = new WeakMap<Connection, Outbound>()
  private timer?: NodeJS.Timeout
  private lastTick = 0

  constructor (init: BeatsInit) {
    this.init = init
  }

  /** Reads peers' beats; registered when the node starts, before it beats itself. */
  async listen (): Promise<void> {
    const { p2p, liveness, onBeat, lease } = this.init
    await p2p.handle(BEAT_PROTOCOL, ({ stream, connection }) => {
      const peer = connection.remotePeer.toString()
      liveness.heard(peer)
      void (async () => {
        // Beats may arrive split or joined by the transport: cut them back into frames.
        let buf: Uint8Array = new Uint8Array(0)
        for await (const chunk of stream.source) {
          liveness.heard(peer)
          buf = concat(buf, chunk.subarray())
          if (buf.length < BEAT_BYTES) continue
          const end = buf.length - (buf.length % BEAT_BYTES)
          for (let at = 0; at < end; at += BEAT_BYTES) {
            const b = decodeBeat(buf.subarray(at, at + BEAT_BYTES))
            lease.received(peer, b.seq, b.echo)
            if (at + BEAT_BYTES === end) onBeat(peer, b.digest)
          }
          buf = buf.slice(end)
        }
      })().catch(() => {})
    }, { maxInboundStreams: 2, maxOutboundStreams: 2 })
  }

  /** Starts beating (once in a mesh). */
  start (): void {
    if (this.timer === undefined) this.schedule()
  }

  stop (): void {
    clearTimeout(this.timer)
    this.timer = undefined
  }

  /** Beats at the interval ± 10%, so that hosts started together do not beat in lockstep. */
  private schedule (): void {
    const ms = this.init.intervalMs * (0.9 + Math.random() * 0.2)
    this.timer = setTimeout(() => {
      try {
        this.beat()
      } catch (err: any) {
        this.init.log.warn('beat failed', { error: err.message })
      }
      if (this.timer !== undefined) this.schedule()
    }, ms)
    this.timer.unref()
  }

  /** One beat on every member connection; drops connections whose peer went silent. */
  beat (now = Date.now()): void {
    const { p2p, liveness, intervalMs, isMember, log, lease } = this.init
    const digest = this.init.digest()
    const seq = lease.sent()
    // After a stall of our own (the process was stopped, or its event loop blocked), silence is
    // ours, not the peers': their beats are still unread in the sockets. Judge nobody this time.
    const stalled = this.lastTick > 0 && now - this.lastTick > 2 * intervalMs
    this.lastTick = now
    for (const conn of p2p.getConnections()) {
      if (conn.status !== 'open') continue
      const peer = conn.remotePeer.toString()
      if (!isMember(peer)) continue
      let out = this.out.get(conn)
      if (out === undefined) {
        out = { since: now }
        this.out.set(conn, out)
      }
      if (out.unsupportedUntil !== undefined) {
        if (now < out.unsupportedUntil) continue
        out.unsupportedUntil = undefined
        out.since = now
      }
      // A frozen peer never even lets our stream open: it is judged all the same.
      if (!stalled && isSilent(out.since, liveness.lastSeen(peer), intervalMs, now)) {
        log.info('dropping a silent connection', { peer, silentMs: now - Math.max(out.since, liveness.lastSeen(peer) ?? 0) })
        conn.abort(new Error(`no beat from ${peer} for ${SILENT_INTERVALS} intervals`))
        continue
      }
      if (out.source !== undefined) out.source.push(encodeBeat(digest, seq, lease.echoFor(peer)))
      else if (out.opening !== true) void this.open(conn, out)
    }
  }

  private async open (conn: Connection, out: Outbound): Promise<void> {
    out.opening = true
    try {
      const stream = await conn.newStream(BEAT_PROTOCOL, { signal: AbortSignal.timeout(SILENT_INTERVALS * this.init.intervalMs) })
      const source = pushable<Uint8Array>()
      const peer = conn.remotePeer.toString()
      source.push(encodeBeat(this.init.digest(), this.init.lease.current(), this.init.lease.echoFor(peer)))
      out.source = source
      out.opening = false
      await stream.sink(source)
    } catch (err: any) {
      this.init.log.debug('beat stream ended', { peer: conn.remotePeer.toString(), error: err.message })
      if (err?.name === 'UnsupportedProtocolError') out.unsupportedUntil = Date.now() + 10 * this.init.intervalMs
    } finally {
      // Opened again at the next beat, if the connection is still there.
      out.source = undefined
      out.opening = false
    }
  }
}

function concat (a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}
