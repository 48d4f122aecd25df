/**
 * The state as the daemon reads it: the membership fold (crdt/fold.ts) over all feeds, every
 * record validated (crdt/records.ts), stored requests only from hosts that were members when they
 * stored them. Rebuilt lazily after changes, from caches per feed, so a read between changes costs
 * nothing and a change by one author re-reads only that author's feed.
 */
import type { Feed } from './feed.ts'
import { fold, type Fold, type FoldEvent } from './fold.ts'
import { readEvent, readGenesis, readHostRecord, readStoredRequest, type Read } from './records.ts'
import type { HostRecord, MeshDoc, MeshGenesis, Member, RequestCopy, StoredRequest } from './schema.ts'
import { meshIdFor } from './mesh-id.ts'

export interface ViewSource {
  feeds: ReadonlyMap<string, Feed>
  founder: string | undefined
  /** Bumped whenever any feed changes (the replica's version). */
  version: () => number
}

export interface StateView {
  doc: MeshDoc | undefined
  fold: Fold | undefined
  genesis: MeshGenesis | undefined
  /** Problems found in each author's feed (malformed fields, refused events). */
  problems: Map<string, string[]>
}

export class ViewCache {
  private readonly src: ViewSource
  private built?: { key: number, view: StateView }
  private readonly records = new Map<string, { version: number, read: Read<HostRecord | undefined> }>()
  private readonly events = new Map<string, { epoch: number, version: number, read: number, events: FoldEvent[], problems: string[] }>()
  /** Events whose `seen` names only changes this host holds: that stays so (feeds only grow). */
  private readonly ready = new WeakSet<FoldEvent>()
  private foldCache?: { key: string, seqs: string, waiting: boolean, fold: Fold, genesis: MeshGenesis | undefined }
  /** Stored requests never change: read once per (via, id). */
  private readonly requestCache = new Map<string, Read<StoredRequest | undefined>>()

  constructor (src: ViewSource) {
    this.src = src
  }

  /** The view, rebuilt only when the replica changed since (read on every API call and pass). */
  get (): StateView {
    const key = this.src.version()
    if (this.built?.key === key) return this.built.view
    const view = this.build()
    this.built = { key, view }
    return view
  }

  /**
   * The feed's membership events, read incrementally: they are append-only and immutable (the
   * feed's rules), so only events added since the last read are parsed, unless the feed was
   * rebuilt (its epoch moved).
   */
  private feedEvents (f: Feed): { events: FoldEvent[], problems: string[] } {
    let c = this.events.get(f.author)
    if (c === undefined || c.epoch !== f.epoch) {
      c = { epoch: f.epoch, version: -1, read: 0, events: [], problems: [] }
      this.events.set(f.author, c)
    }
    // The feed has not moved: nothing new to read (and no walk through its document).
    if (c.version === f.version) return c
    c.version = f.version
    const raw = f.doc.events
    if (raw !== undefined && !Array.isArray(raw)) {
      if (c.read === 0) { c.problems.push('events: expected a list'); c.read = -1 }
      return c
    }
    for (let i = Math.max(0, c.read); raw !== undefined && i < raw.length; i++) {
      const r = readEvent(raw[i], `events[${i}]`)
      c.problems.push(...r.problems)
      if (r.value !== undefined) c.events.push({ author: f.author, seq: f.eventSeq[i] ?? 0, index: i, event: r.value })
      c.read = i + 1
    }
    return c
  }

  private record (f: Feed): Read<HostRecord | undefined> {
    const c = this.records.get(f.author)
    if (c?.version === f.version) return c.read
    const read = readHostRecord(f.doc.host)
    this.records.set(f.author, { version: f.version, read })
    return read
  }

  private build (): StateView {
    const problems = new Map<string, string[]>()
    const note = (author: string, list: string[]): void => {
      if (list.length === 0) return
      problems.set(author, [...(problems.get(author) ?? []), ...list])
    }
    const founder = this.src.founder
    const founderFeed = founder === undefined ? undefined : this.src.feeds.get(founder)
    if (founder === undefined || founderFeed === undefined) return { doc: undefined, fold: undefined, genesis: undefined, problems }

    // The fold depends on the events and the cuts; on how far each feed goes only while some event
    // waits for a change not held yet. So it is computed again only when one of those moved.
    const allEvents: FoldEvent[] = []
    let eventsKey = founder
    let seqsKey = ''
    const cuts = new Map<string, number>()
    for (const [author, f] of this.src.feeds) {
      const e = this.feedEvents(f)
      note(author, e.problems)
      allEvents.push(...e.events)
      eventsKey += `|${author}:${f.epoch}:${e.events.length}:${f.cut ?? ''}`
      seqsKey += `|${f.seq}`
      if (f.cut !== undefined) cuts.set(author, f.cut)
    }
    const stale = this.foldCache === undefined || this.foldCache.key !== eventsKey || (this.foldCache.waiting && this.foldCache.seqs !== seqsKey)
    if (stale) {
      const g = readGenesis(founderFeed.doc.mesh)
      note(founder, g.problems)
      const genesis = g.value !== undefined && g.value.founder === founder && g.value.id === meshIdFor(founder, g.value.nonce) ? g.value : undefined
      const feeds = this.src.feeds
      const f = fold({
        founder,
        events: allEvents,
        cuts,
        holds: (peer, seq, h16) => feeds.get(peer)?.hashAt(seq)?.startsWith(h16) === true,
        ready: this.ready
      })
      const waiting = [...f.verdicts.values()].some(v => v.waiting === true)
      this.foldCache = { key: eventsKey, seqs: seqsKey, waiting, fold: f, genesis }
    }
    const { fold: folded, genesis } = this.foldCache as NonNullable<typeof this.foldCache>
    for (const [k, v] of folded.verdicts) {
      if (!v.valid && v.waiting !== true) note(k.slice(0, k.indexOf('/')), [`membership event ${k.slice(k.indexOf('/') + 1)} does not count: ${v.reason ?? ''}`])
    }
    if (genesis === undefined) return { doc: undefined, fold: folded, genesis: undefined, problems }

    const members: Record<string, Member> = {}
    const hosts: Record<string, HostRecord> = {}
    for (const [peer, m] of folded.members) {
      const f = this.src.feeds.get(peer)
      const rec = f === undefined ? undefined : this.record(f)
      if (rec !== undefined) note(peer, rec.problems)
      const name = m.name !== '' ? m.name : rec?.value?.name ?? ''
      const member: Member = { name, admittedBy: m.admittedBy, admittedAt: m.admittedAt === '' ? genesis.created : m.admittedAt }
      if (m.expelled !== undefined) member.expelled = { ...m.expelled }
      define(members, peer, member)
      if (m.active && rec?.value !== undefined) define(hosts, peer, rec.value)
    }

    const requests = new Map<string, RequestCopy[]>()
    for (const [via, f] of this.src.feeds) {
      if (!folded.members.has(via) || f.requestSeq.size === 0) continue
      for (const [id, seq] of f.requestSeq) {
        if (!folded.validSeq(via, seq)) continue
        const key = `${via}/${id}`
        let read = this.requestCache.get(key)
        if (read === undefined) {
          read = readStoredRequest(f.doc.requests?.[id], `requests.${id}`)
          this.requestCache.set(key, read)
        }
        if (read.value === undefined) { note(via, read.problems); continue }
        const copies = requests.get(id) ?? []
        copies.push({ ...read.value, via, seq })
        requests.set(id, copies)
      }
    }
    // One order for the copies of a request everywhere: earliest stamp, then host.
    for (const copies of requests.values()) if (copies.length > 1) copies.sort((a, b) => cmp(a.at, b.at) || cmp(a.via, b.via))

    const doc: MeshDoc = {
      mesh: { ...genesis, policy: { admit: folded.policy.admit, expellers: [...folded.policy.expellers] } },
      members,
      hosts,
      requests
    }
    return { doc, fold: folded, genesis, problems }
  }
}

function define<T> (o: Record<string, T>, k: string, v: T): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true })
}

function cmp (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
