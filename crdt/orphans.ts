/**
 * Changes held until they can be applied: the previous change of their feed is missing, or their
 * author is not named by any admission yet. Bounded by bytes in all, bytes per author and age, so
 * that neither junk nor a flood from one author can take the memory or push out another author's
 * changes: when full, the author holding the most bytes loses its newest changes first (the ones
 * furthest from being applied). A dropped change is simply fetched again by a later sync.
 */
import type { VerifiedChange } from './signed-changes.ts'

export interface OrphanLimits {
  /** @default 64 MiB */
  maxBytes?: number
  /** @default 16 MiB */
  maxBytesPerAuthor?: number
  /** @default 10 minutes */
  maxAgeMs?: number
}

interface Held { v: VerifiedChange, from: string | undefined, bytes: number, at: number }

export class Orphans {
  private readonly byAuthor = new Map<string, Map<number, Held>>()
  private readonly bytesOf = new Map<string, number>()
  private total = 0
  private count = 0
  readonly maxBytes: number
  readonly maxBytesPerAuthor: number
  readonly maxAgeMs: number
  /** Changes dropped for want of room or age, since start (shown in status). */
  dropped = 0

  private readonly now: () => number

  constructor (limits: OrphanLimits = {}, now: () => number = Date.now) {
    this.now = now
    this.maxBytes = limits.maxBytes ?? 64 * 2 ** 20
    this.maxBytesPerAuthor = limits.maxBytesPerAuthor ?? 16 * 2 ** 20
    this.maxAgeMs = limits.maxAgeMs ?? 10 * 60_000
  }

  get size (): number { return this.count }
  get bytes (): number { return this.total }

  has (author: string, seq: number): VerifiedChange | undefined {
    return this.byAuthor.get(author)?.get(seq)?.v
  }

  /** Holds a change (with the peer it came from); false when it has no room (too big for its author's share). */
  add (v: VerifiedChange, from?: string): boolean {
    this.expire()
    const bytes = v.change.length + v.signature.length
    if (bytes > this.maxBytesPerAuthor) { this.dropped++; return false }
    let held = this.byAuthor.get(v.author)
    if (held?.has(v.seq) === true) return true
    // Room within the author's own share first, then in all; newest changes go first.
    while ((this.bytesOf.get(v.author) ?? 0) + bytes > this.maxBytesPerAuthor) {
      if (!this.dropNewer(v.author, v.seq)) { this.dropped++; return false }
    }
    while (this.total + bytes > this.maxBytes) {
      const biggest = this.biggestAuthor()
      const freed = biggest === undefined ? false : biggest === v.author ? this.dropNewer(biggest, v.seq) : this.dropNewer(biggest)
      if (!freed) { this.dropped++; return false }
    }
    if (held === undefined) this.byAuthor.set(v.author, held = new Map())
    held.set(v.seq, { v, from, bytes, at: this.now() })
    this.bytesOf.set(v.author, (this.bytesOf.get(v.author) ?? 0) + bytes)
    this.total += bytes
    this.count++
    return true
  }

  /** Removes and returns the held change `seq` of `author`, with the peer it came from. */
  take (author: string, seq: number): { v: VerifiedChange, from: string | undefined } | undefined {
    const held = this.byAuthor.get(author)
    const h = held?.get(seq)
    if (h === undefined || held === undefined) return undefined
    this.remove(author, held, seq, h)
    return { v: h.v, from: h.from }
  }

  /** Authors with held changes. */
  authors (): string[] { return [...this.byAuthor.keys()] }

  /** Drops every held change of `author` after `seq` (a cut feed), or all of them. */
  dropAuthor (author: string, after = 0): void {
    const held = this.byAuthor.get(author)
    if (held === undefined) return
    for (const [seq, h] of [...held]) if (seq > after) this.remove(author, held, seq, h)
  }

  /** Drops changes held longer than the age limit. */
  expire (): void {
    const limit = this.now() - this.maxAgeMs
    for (const [author, held] of [...this.byAuthor]) {
      for (const [seq, h] of [...held]) {
        if (h.at < limit) { this.remove(author, held, seq, h); this.dropped++ }
      }
    }
  }

  private biggestAuthor (): string | undefined {
    let best: string | undefined
    let most = -1
    for (const [a, b] of this.bytesOf) if (b > most) { most = b; best = a }
    return best
  }

  /**
   * Drops the newest held change of `author`; with `than`, only if it is newer than that sequence
   * number (else the incoming change, furthest from being applied, is the one to give up).
   */
  private dropNewer (author: string, than = -Infinity): boolean {
    const held = this.byAuthor.get(author)
    if (held === undefined || held.size === 0) return false
    let newest = -1
    for (const s of held.keys()) if (s > newest) newest = s
    if (newest < than) return false
    const h = held.get(newest) as Held
    this.remove(author, held, newest, h)
    this.dropped++
    return true
  }

  private remove (author: string, held: Map<number, Held>, seq: number, h: Held): void {
    held.delete(seq)
    if (held.size === 0) this.byAuthor.delete(author)
    const left = (this.bytesOf.get(author) ?? 0) - h.bytes
    if (left <= 0) this.bytesOf.delete(author)
    else this.bytesOf.set(author, left)
    this.total -= h.bytes
    this.count--
  }
}
