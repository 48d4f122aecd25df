/**
 * Anti-entropy driven by beats: every beat (node/mesh/liveness.ts) carries a short digest of its
 * sender's heads, so a host notices within one beat interval that a directly connected peer's
 * state differs from its own, and syncs with exactly that peer. An idle mesh in sync sends no
 * sync traffic at all; a change lost by gossip is found at the next beat instead of by a random
 * periodic sync.
 */
import { createHash } from 'node:crypto'

export const DIGEST_BYTES = 8

/** The first 8 bytes of sha256 over the sorted heads: equal states have equal digests. */
export function headsDigest (heads: string[]): Uint8Array {
  const h = createHash('sha256')
  for (const head of [...heads].sort()) h.update(head)
  return new Uint8Array(h.digest().subarray(0, DIGEST_BYTES))
}

export function sameDigest (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

export interface DivergenceInit {
  /** Our current digest. */
  ours: () => Uint8Array
  /** Syncs with the peer (both ways). */
  sync: (peer: string) => void
  /**
   * How long a difference may last before we sync: changes in flight on gossip usually close it
   * within milliseconds, so a digest that still differs after this is a real divergence.
   */
  graceMs: number
  /**
   * Judge each peer's digest at most this often: beats come every heartbeat (2 s, for the lease),
   * and while changes keep coming every digest differs for a moment, so judging every beat would
   * sync with every peer all the time. @default 0
   */
  minIntervalMs?: number
}

/** Decides, from the digests peers report, with whom to sync and when. */
export class DivergenceWatch {
  private readonly init: DivergenceInit
  private readonly reported = new Map<string, Uint8Array>()
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly judged = new Map<string, number>()

  constructor (init: DivergenceInit) {
    this.init = init
  }

  /** A peer told us its digest. */
  report (peer: string, digest: Uint8Array): void {
    this.reported.set(peer, digest)
    if (sameDigest(digest, this.init.ours()) || this.timers.has(peer)) return
    const now = Date.now()
    if (now - (this.judged.get(peer) ?? -Infinity) < (this.init.minIntervalMs ?? 0)) return
    this.judged.set(peer, now)
    const t = setTimeout(() => {
      this.timers.delete(peer)
      const last = this.reported.get(peer)
      if (last !== undefined && !sameDigest(last, this.init.ours())) this.init.sync(peer)
    }, this.init.graceMs)
    t.unref()
    this.timers.set(peer, t)
  }

  forget (peer: string): void {
    this.reported.delete(peer)
    this.judged.delete(peer)
    clearTimeout(this.timers.get(peer))
    this.timers.delete(peer)
  }

  stop (): void {
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
  }
}
