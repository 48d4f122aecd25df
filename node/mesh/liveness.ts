/**
 * Liveness of hosts, kept in memory only (liveness in the CRDT would grow its history forever).
 *
 * Every connection to a member carries one long-lived beat stream per direction. A beat is 20
 * bytes: the 8-byte digest of its sender's heads, which drives anti-entropy
 * (node/mesh/anti-entropy.ts), then big-endian u32s: the beat's number, the number of the last beat
 * heard from the receiver (these two keep the sender's lease, crdt/lease.ts), and the sender's beat
 * interval in milliseconds, by which the receiver judges its silence.
 *
 * Two rates. A host beats every `heartbeat_interval` (10 s) while it holds no `--ha restart` VM,
 * and every `lease_interval` (2 s) while it does; a peer that beats more slowly answers each fast
 * beat at once, so that the holder's lease is renewed at its own rate and idle hosts pay nothing
 * for it. An idle 10-host mesh spends about 4 kbit/s per host on liveness (signed gossipsub
 * heartbeats, flooded, forwarded and announced by IHAVE, cost about 60). The connection's noise
 * handshake already authenticated the peer, so a beat needs no signature, and it goes to direct
 * peers only. A connection silent for three of its peer's intervals is aborted: that is how a host
 * that lost power without closing its TCP connections is noticed (libp2p's own connection
 * monitor, which opens a stream per ping, is switched off in node/mesh/p2p.ts).
 */
import { pushable, type Pushable } from 'it-pushable'
import type { Connection } from '@libp2p/interface'
import type { P2PNode } from './p2p.ts'
import type { Logger } from '../log.ts'
import { DIGEST_BYTES } from './anti-entropy.ts'

export const BEAT_PROTOCOL = '/picocloud/beat/3.0.0'
/** Digest, beat number, echo, interval. */
export const BEAT_BYTES = DIGEST_BYTES + 12
/** Bounds on the interval a peer announces (a hostile value only changes how that peer is judged). */
export const MIN_BEAT_MS = 50
export const MAX_BEAT_MS = 3_600_000

/** The lease's part of beats (node/mesh/lease.ts over crdt/lease.ts). */
export interface BeatLease {
  /** Numbers the beat about to go out. */
  sent: () => number
  /** The latest number, for a stream opened between beats. */
  current: () => number
  /** What to echo to a peer: the last beat heard from it, or 0. */
  echoFor: (peer: string) => number
  /** A beat from `peer`, which beats every `intervalMs`. */
  received: (peer: string, seq: number, echo: number, intervalMs: number) => void
}

export interface Beat {
  digest: Uint8Array
  seq: number
  echo: number
  /** The sender's beat interval, clamped to [MIN_BEAT_MS, MAX_BEAT_MS]. */
  intervalMs: number
}

export function encodeBeat (b: Beat): Uint8Array {
  const out = new Uint8Array(BEAT_BYTES)
  out.set(b.digest.subarray(0, DIGEST_BYTES))
  const v = new DataView(out.buffer)
  v.setUint32(DIGEST_BYTES, b.seq >>> 0)
  v.setUint32(DIGEST_BYTES + 4, b.echo >>> 0)
  v.setUint32(DIGEST_BYTES + 8, Math.round(b.intervalMs) >>> 0)
  return out
}

export function decodeBeat (frame: Uint8Array): Beat {
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength)
  const intervalMs = Math.min(MAX_BEAT_MS, Math.max(MIN_BEAT_MS, v.getUint32(DIGEST_BYTES + 8)))
  return { digest: frame.slice(0, DIGEST_BYTES), seq: v.getUint32(DIGEST_BYTES), echo: v.getUint32(DIGEST_BYTES + 4), intervalMs }
}
/** Intervals of silence after which a peer is down and its connection is dropped. */
export const SILENT_INTERVALS = 3

export class Liveness {
  private readonly seen = new Map<string, number>()
  private readonly intervals = new Map<string, number>()
  private readonly intervalMs: number

  /** `intervalMs`: a peer's interval until it announced its own (ours, at the idle rate). */
  constructor (intervalMs: number) {
    this.intervalMs = intervalMs
  }

  heard (peer: string, at = Date.now(), intervalMs?: number): void {
    this.seen.set(peer, at)
    if (intervalMs !== undefined) this.intervals.set(peer, intervalMs)
  }

  forget (peers: string[]): void {
    for (const p of peers) {
      this.seen.delete(p)
      this.intervals.delete(p)
    }
  }

  lastSeen (peer: string): number | undefined {
    return this.seen.get(peer)
  }

  /** The interval `peer` said it beats at (ours until it said). */
  intervalOf (peer: string): number {
    return this.intervals.get(peer) ?? this.intervalMs
  }

  /** Heard within three of its beat intervals. */
  alive (peer: string, now = Date.now()): boolean {
    const t = this.seen.get(peer)
    return t !== undefined && now - t <= SILENT_INTERVALS * this.intervalOf(peer)
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
  /** The idle rate (`heartbeat_interval`). */
  intervalMs: number
  /** The rate while `needsLease()` (`lease_interval`, at most `intervalMs`). */
  leaseMs: number
  /** Whether this host runs or is given `--ha restart` VMs now. */
  needsLease: () => boolean
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
  /** When the next idle-rate beat is due on it. */
  due: number
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
  private fast = false

  constructor (init: BeatsInit) {
    this.init = init
  }

  /** The interval this host beats at now. */
  currentMs (): number {
    return this.fast ? this.init.leaseMs : this.init.intervalMs
  }

  /** Reads peers' beats; registered when the node starts, before it beats itself. */
  async listen (): Promise<void> {
    const { p2p, liveness, onBeat, lease, isMember } = this.init
    await p2p.handle(BEAT_PROTOCOL, ({ stream, connection }) => {
      const peer = connection.remotePeer.toString()
      liveness.heard(peer)
      void (async () => {
        // Beats may arrive split or joined by the transport: cut them back into frames.
        let buf: Uint8Array = new Uint8Array(0)
        for await (const chunk of stream.source) {
          buf = concat(buf, chunk.subarray())
          if (buf.length < BEAT_BYTES) {
            liveness.heard(peer)
            continue
          }
          const end = buf.length - (buf.length % BEAT_BYTES)
          let last: Beat | undefined
          for (let at = 0; at < end; at += BEAT_BYTES) {
            last = decodeBeat(buf.subarray(at, at + BEAT_BYTES))
            lease.received(peer, last.seq, last.echo, last.intervalMs)
          }
          buf = buf.slice(end)
          if (last === undefined) continue
          liveness.heard(peer, Date.now(), last.intervalMs)
          onBeat(peer, last.digest)
          // A peer beating faster than we do keeps a lease: our echo must not wait for our next beat.
          if (last.intervalMs < this.currentMs() && isMember(peer)) this.answer(connection)
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

  /**
   * Ticks at the lease rate ± 10% (so that hosts started together do not beat in lockstep); a
   * tick beats on the connections whose idle-rate beat is due, or on all while the lease is needed.
   */
  private schedule (): void {
    const ms = this.init.leaseMs * (0.9 + Math.random() * 0.2)
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

  /**
   * One tick: beats where due (everywhere with `all`, or while the lease is needed), and drops
   * connections whose peer went silent.
   */
  beat (now = Date.now(), all = false): void {
    const { p2p, liveness, intervalMs, isMember, log, lease } = this.init
    const wasFast = this.fast
    this.fast = this.init.needsLease()
    // Back to the idle rate: say so at once, or peers would judge our silence by the fast rate.
    if (wasFast && !this.fast) all = true
    const interval = this.currentMs()
    let seq: number | undefined
    let digest: Uint8Array | undefined
    // After a stall of our own (the process was stopped, or its event loop blocked), silence is
    // ours, not the peers': their beats are still unread in the sockets. Judge nobody this time.
    const stalled = this.lastTick > 0 && now - this.lastTick > 2 * this.init.leaseMs
    if (!all) this.lastTick = now
    for (const conn of p2p.getConnections()) {
      if (conn.status !== 'open') continue
      const peer = conn.remotePeer.toString()
      if (!isMember(peer)) continue
      let out = this.out.get(conn)
      if (out === undefined) {
        out = { since: now, due: now }
        this.out.set(conn, out)
      }
      if (out.unsupportedUntil !== undefined) {
        if (now < out.unsupportedUntil) continue
        out.unsupportedUntil = undefined
        out.since = now
      }
      // A frozen peer never even lets our stream open: it is judged all the same.
      if (!stalled && isSilent(out.since, liveness.lastSeen(peer), liveness.intervalOf(peer), now)) {
        log.info('dropping a silent connection', { peer, silentMs: now - Math.max(out.since, liveness.lastSeen(peer) ?? 0) })
        conn.abort(new Error(`no beat from ${peer} for ${SILENT_INTERVALS} intervals`))
        continue
      }
      // Due within half a tick counts as due: otherwise a beat could slip a whole tick late (with
      // equal rates, every other tick), slower than the interval it announces.
      if (!all && !this.fast && now + this.init.leaseMs / 2 < out.due) continue
      out.due = now + intervalMs * (0.9 + Math.random() * 0.2)
      seq ??= lease.sent()
      digest ??= this.init.digest()
      if (out.source !== undefined) out.source.push(encodeBeat({ digest, seq, echo: lease.echoFor(peer), intervalMs: interval }))
      else if (out.opening !== true) void this.open(conn, out)
    }
  }

  /** Beats on every connection now (this host just came to need its lease). */
  beatNow (): void {
    this.beat(Date.now(), true)
  }

  /** An extra beat to one peer, echoing its latest: renews that peer's lease at its rate. */
  private answer (conn: Connection): void {
    const source = this.out.get(conn)?.source
    if (source === undefined) return
    const peer = conn.remotePeer.toString()
    source.push(encodeBeat({ digest: this.init.digest(), seq: this.init.lease.current(), echo: this.init.lease.echoFor(peer), intervalMs: this.currentMs() }))
  }

  private async open (conn: Connection, out: Outbound): Promise<void> {
    out.opening = true
    try {
      const stream = await conn.newStream(BEAT_PROTOCOL, { signal: AbortSignal.timeout(SILENT_INTERVALS * this.init.leaseMs) })
      const source = pushable<Uint8Array>()
      const peer = conn.remotePeer.toString()
      source.push(encodeBeat({ digest: this.init.digest(), seq: this.init.lease.current(), echo: this.init.lease.echoFor(peer), intervalMs: this.currentMs() }))
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
      out.due = 0
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
