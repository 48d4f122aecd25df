/**
 * Per-author rate limits on what arrives by gossip: a token bucket of bytes per author. A member
 * that floods (even with valid changes to its own record) is cut at the first honest host, which
 * forwards only what it accepted; its excess is dropped (a later sync may bring it, within the
 * same limit) and counted against the author, never against the host that relayed it.
 */
export interface RateLimitInit {
  /** Sustained bytes per second per author. @default 64 KiB */
  bytesPerSecond?: number
  /** Burst allowance per author. @default 4 MiB */
  burstBytes?: number
  now?: () => number
}

export class AuthorRateLimit {
  private readonly rate: number
  private readonly burst: number
  private readonly now: () => number
  private readonly buckets = new Map<string, { tokens: number, at: number }>()

  constructor (init: RateLimitInit = {}) {
    this.rate = init.bytesPerSecond ?? 64 * 1024
    this.burst = init.burstBytes ?? 4 * 2 ** 20
    this.now = init.now ?? Date.now
  }

  /** Takes `bytes` from the author's bucket; false when it has not that many. */
  take (author: string, bytes: number): boolean {
    const now = this.now()
    const b = this.buckets.get(author) ?? { tokens: this.burst, at: now }
    b.tokens = Math.min(this.burst, b.tokens + (now - b.at) / 1000 * this.rate)
    b.at = now
    this.buckets.set(author, b)
    if (this.buckets.size > 10_000) this.prune()
    if (b.tokens < bytes) return false
    b.tokens -= bytes
    return true
  }

  /** Forgets authors whose buckets are full again (they cost nothing to recreate). */
  private prune (): void {
    const now = this.now()
    for (const [a, b] of this.buckets) if (b.tokens + (now - b.at) / 1000 * this.rate >= this.burst) this.buckets.delete(a)
  }
}
