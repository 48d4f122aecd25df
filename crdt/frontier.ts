/**
 * How far a host holds each feed (its frontier), what two hosts compare to know they are in sync
 * (the frontier and the evidence they hold), and what one host sends another that lacks part of
 * it. Sync (crdt/sync.ts) and beats (node/mesh/liveness.ts) are built on these.
 */
import type { Feed } from './feed.ts'
import type { Evidence } from './evidence.ts'
import type { SignedChange } from './signed-changes.ts'

/** One entry of a frontier: an author's feed as far as this host holds it. */
export interface FrontierEntry { author: string, seq: number, hash16: string }

/** What these functions read of a store. */
export interface Feeds {
  readonly feeds: ReadonlyMap<string, Feed>
  readonly founder: string | undefined
  evidence: () => Evidence[]
}

/** The last change of every feed, sorted by author. */
export function heads (s: Feeds): string[] {
  return [...s.feeds.values()].filter(f => f.seq > 0).sort((a, b) => cmp(a.author, b.author)).map(f => f.head as string)
}

export function frontier (s: Feeds): FrontierEntry[] {
  const out: FrontierEntry[] = []
  for (const f of s.feeds.values()) if (f.seq > 0) out.push({ author: f.author, seq: f.seq, hash16: (f.head as string).slice(0, 16) })
  return out.sort((a, b) => cmp(a.author, b.author))
}

/** Equal for two hosts exactly when they hold the same feeds as far and the same evidence. */
export function digestInput (s: Feeds): string[] {
  return [...frontier(s).map(e => `${e.author}:${e.seq}:${e.hash16}`), ...s.evidence().map(e => `evidence:${e.id}`).sort()]
}

/**
 * The changes a peer whose frontier is `theirs` lacks: the founder's feed first (a joining host
 * needs the genesis before anything else), then each feed from where the peer is. Where the peer's
 * hash at its position differs from ours, our change at that position goes first: it shows the
 * peer the equivocation. `upTo`: no further than this host announced (a sync peer takes nothing it
 * was not told of; changes applied since the announcement go in the next sync).
 */
export function changesFor (s: Feeds, theirs: ReadonlyMap<string, { seq: number, hash16: string }>, upTo?: ReadonlyMap<string, number>): SignedChange[] {
  const out: SignedChange[] = []
  const feeds = [...s.feeds.values()].sort((a, b) => Number(b.author === s.founder) - Number(a.author === s.founder) || cmp(a.author, b.author))
  for (const f of feeds) {
    const last = upTo === undefined ? f.seq : Math.min(f.seq, upTo.get(f.author) ?? 0)
    const t = theirs.get(f.author)
    const from = Math.max(0, t?.seq ?? 0)
    if (t !== undefined && from > 0 && from <= last && (f.hashAt(from) as string).slice(0, 16) !== t.hash16) {
      const fork = f.changeAt(from)
      if (fork !== undefined) out.push(fork)
    }
    if (from >= last) continue
    out.push(...f.changesAfter(from).slice(0, last - from))
  }
  return out
}

function cmp (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
