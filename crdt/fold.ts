/**
 * Membership as a deterministic fold over the membership events of all feeds.
 *
 * Nobody's word about membership is read from a merged value: every host computes, from the same
 * set of verified events, who is a member, who may admit and expel, and which of each member's
 * changes stand. The result depends only on that set (not on arrival order), and a revocation that
 * arrives later simply changes the result.
 *
 * Causal order. Every event carries `seen`: for each feed, the sequence number (and hash prefix)
 * of the last change its author held. Event f happened before event e when e's author had seen f
 * (`seen[f.author] >= f.seq`), or f is an earlier event of the same author. A claim to have seen a
 * change that does not exist cannot be made good (the hash must match), so an event that names an
 * unknown change waits, and never counts until that change is there.
 *
 * Rules (docs/byzantine.md says why):
 * - The founder is always a member and holds every right; it cannot be expelled.
 * - The founder's policy events name the expellers and say who may admit (any member, or only the
 *   expellers). A demotion wins over every concurrent act of the demoted host: an act counts only
 *   if it happened before each later policy that takes the right away.
 * - A member's act counts only if one of its admissions happened before it, and the member was not
 *   expelled, at that point of its feed, by an expulsion that did not happen before that admission.
 * - An expulsion of T voids T's changes after what the expeller had seen of T (so changes made
 *   concurrently with it, or "backdated" by leaving things out, lose); T's earlier changes stand. A
 *   re-admission that happened after the expulsion makes T's later changes count again; a
 *   concurrent one does not (revocation wins).
 * - Only the founder and the expellers may expel, and only the founder may expel an expeller.
 *   Re-admitting an expelled host needs an expeller; admitting a new one needs the policy's right.
 * - A feed cut for equivocation (crdt/evidence.ts) ends there: its author is treated as expelled
 *   from the cut on, and cannot be admitted again (it must join with a new peer key).
 */
import type { MembershipEvent, MeshPolicy } from './schema.ts'
import { DEFAULT_POLICY } from './schema.ts'

export interface FoldEvent {
  author: string
  /** Sequence number of the change of the author's feed that wrote it. */
  seq: number
  /** Position in the author's event list (orders events of one change). */
  index: number
  event: MembershipEvent
}

export interface FoldInput {
  founder: string
  /** Every well-formed event of every feed, up to each feed's cut. */
  events: readonly FoldEvent[]
  /** Feeds cut for equivocation: the last sequence number that stands. */
  cuts: ReadonlyMap<string, number>
  /** Whether `peer`'s feed holds a change `seq` whose hash starts with `hash16`. */
  holds: (peer: string, seq: number, hash16: string) => boolean
  /** Events already found to wait for nothing (a cache across folds; filled in here). */
  ready?: WeakSet<FoldEvent>
}

export interface EventVerdict { valid: boolean, reason?: string, waiting?: boolean }

export interface MemberState {
  peer: string
  name: string
  admittedBy: string
  admittedAt: string
  active: boolean
  /** Why it is not active (expelled, or equivocated). */
  expelled?: { by: string, at: string, reason: string }
}

export interface Fold {
  founder: string
  policy: MeshPolicy
  /** Every host ever validly admitted, and the founder. */
  members: Map<string, MemberState>
  /** Does change `seq` of `peer`'s feed stand (written while it was a member)? */
  validSeq: (peer: string, seq: number) => boolean
  /** Per event (`author/seq/index`): valid or not, and why. */
  verdicts: Map<string, EventVerdict>
}

export const eventKey = (e: FoldEvent): string => `${e.author}/${e.seq}/${e.index}`

interface Policy { seq: number, index: number, admit: MeshPolicy['admit'], expellers: readonly string[], e: FoldEvent }

export function fold (input: FoldInput): Fold {
  const { founder, cuts } = input
  const verdicts = new Map<string, EventVerdict>()
  // Events whose `seen` names changes we do not hold (yet) wait: they count for nothing.
  const events: FoldEvent[] = []
  for (const e of input.events) {
    if ((cuts.get(e.author) ?? Infinity) < e.seq) continue
    const missing = input.ready?.has(e) === true ? undefined : unseen(e, input)
    if (missing !== undefined) verdicts.set(eventKey(e), { valid: false, waiting: true, reason: missing })
    else { events.push(e); input.ready?.add(e) }
  }
  events.sort((a, b) => cmp(a.author, b.author) || a.seq - b.seq || a.index - b.index)

  const seenSeq = (e: FoldEvent, peer: string): number => {
    if (peer === e.author) return e.seq - 1
    const n = seenSeqs(e).get(peer)
    if (n === undefined) return 0
    return Math.min(n, cuts.get(peer) ?? Infinity)
  }
  /** f happened before e. */
  const hb = (f: FoldEvent, e: FoldEvent): boolean => f.author === e.author
    ? f.seq < e.seq || (f.seq === e.seq && f.index < e.index)
    : seenSeq(e, f.author) >= f.seq

  const policies: Policy[] = events.filter(e => e.author === founder && e.event.op === 'policy')
    .map(e => { const p = e.event as Extract<MembershipEvent, { op: 'policy' }>; return { seq: e.seq, index: e.index, admit: p.admit, expellers: p.expellers, e } })
  const admissions = new Map<string, FoldEvent[]>()
  const expulsions = new Map<string, FoldEvent[]>()
  for (const e of events) {
    if (e.event.op === 'policy') continue
    const by = e.event.op === 'admit' ? admissions : expulsions
    const list = by.get(e.event.peer) ?? []
    list.push(e)
    by.set(e.event.peer, list)
  }

  /** The founder's latest policy that happened before e (the genesis default if none). */
  const policyAt = (e: FoldEvent): Policy | undefined => {
    let at: Policy | undefined
    for (const p of policies) if (hb(p.e, e)) at = p
    return at
  }
  /** Later policies that e did not happen before: they win over e. */
  const concurrentLater = (e: FoldEvent, after: Policy | undefined): Policy[] =>
    policies.filter(p => (after === undefined || p.seq > after.seq || (p.seq === after.seq && p.index > after.index)) && !hb(e, p.e) && p.e !== e)

  const isExpeller = (x: string, e: FoldEvent): boolean => {
    if (x === founder) return true
    const at = policyAt(e)
    if (at === undefined || !at.expellers.includes(x)) return false
    return concurrentLater(e, at).every(p => p.expellers.includes(x))
  }
  const mayAdmit = (a: string, e: FoldEvent): boolean => {
    if (isExpeller(a, e)) return true
    const at = policyAt(e)
    if ((at?.admit ?? DEFAULT_POLICY.admit) !== 'any-member') return false
    return concurrentLater(e, at).every(p => p.admit === 'any-member' || p.expellers.includes(a))
  }

  const memo = new Map<FoldEvent, EventVerdict>()
  const busy = new Set<FoldEvent>()

  /**
   * Was `t` a member at change `seq` of its feed? With `act`, one of its admissions must have
   * happened before that act (an act needs its author to have known it was admitted).
   */
  const memberAt = (t: string, seq: number, act?: FoldEvent): boolean => {
    if ((cuts.get(t) ?? Infinity) < seq) return false
    if (t === founder) return true
    const xs = (expulsions.get(t) ?? []).filter(x => seenSeq(x, t) < seq && valid(x).valid)
    return (admissions.get(t) ?? []).some(a =>
      seenSeq(a, t) < seq && (act === undefined || hb(a, act)) && valid(a).valid && xs.every(x => hb(x, a)))
  }

  const judge = (e: FoldEvent): EventVerdict => {
    const a = e.author
    const no = (reason: string): EventVerdict => ({ valid: false, reason })
    if (a !== founder && !memberAt(a, e.seq, e)) return no(`${a} was not a member when it wrote this`)
    const ev = e.event
    switch (ev.op) {
      case 'policy':
        return a === founder ? { valid: true } : no('only the founder may change the mesh policy')
      case 'admit': {
        const t = ev.peer
        if (t === founder) return no('the founder needs no admission')
        const expelledBefore = (expulsions.get(t) ?? []).some(x => hb(x, e) && valid(x).valid)
        if (expelledBefore) return isExpeller(a, e) ? { valid: true } : no(`${t} was expelled; only the founder or an expeller may admit it again`)
        return mayAdmit(a, e) ? { valid: true } : no(`${a} may not admit hosts under the mesh policy`)
      }
      case 'expel': {
        const t = ev.peer
        if (t === founder) return no('the founder cannot be expelled')
        if (t === a) return no('a host cannot expel itself')
        if (!isExpeller(a, e)) return no(`${a} may not expel members (needs the founder or an expeller)`)
        if (a !== founder && (policyAt(e)?.expellers.includes(t) ?? false)) return no('only the founder may expel an expeller')
        return { valid: true }
      }
    }
  }

  function valid (e: FoldEvent): EventVerdict {
    const known = memo.get(e)
    if (known !== undefined) return known
    // A cycle (acts whose validity depends on each other) counts as invalid; the evaluation order
    // is fixed (sorted events), so every host breaks it the same way.
    if (busy.has(e)) return { valid: false, reason: 'depends on itself' }
    busy.add(e)
    const v = judge(e)
    busy.delete(e)
    memo.set(e, v)
    return v
  }

  for (const e of events) verdicts.set(eventKey(e), valid(e))

  const members = new Map<string, MemberState>()
  const lastPolicy = policies.at(-1)
  const policy: MeshPolicy = lastPolicy === undefined
    ? { ...DEFAULT_POLICY, expellers: [] }
    : { admit: lastPolicy.admit, expellers: [...new Set(lastPolicy.expellers)].filter(x => x !== founder) }
  members.set(founder, { peer: founder, name: '', admittedBy: founder, admittedAt: '', active: !cuts.has(founder), ...equivocated(founder, cuts) })
  for (const [t, list] of admissions) {
    if (t === founder) continue
    const ok = list.filter(a => valid(a).valid)
    if (ok.length === 0) continue
    // Display fields from the latest admission (by its own stamp, then author and seq: only shown).
    const last = [...ok].sort((x, y) => cmp(x.event.at, y.event.at) || cmp(x.author, y.author) || x.seq - y.seq).at(-1) as FoldEvent
    const active = memberAt(t, Infinity)
    const m: MemberState = { peer: t, name: (last.event as { name: string }).name, admittedBy: last.author, admittedAt: last.event.at, active }
    if (!active) {
      const eq = equivocated(t, cuts)
      if (eq.expelled !== undefined) m.expelled = eq.expelled
      else {
        const x = (expulsions.get(t) ?? []).filter(x => valid(x).valid).sort((p, q) => cmp(p.event.at, q.event.at) || cmp(p.author, q.author)).at(-1)
        m.expelled = x === undefined
          ? { by: '', at: '', reason: 'no standing admission' }
          : { by: x.author, at: x.event.at, reason: (x.event as { reason: string }).reason }
      }
    }
    members.set(t, m)
  }
  return { founder, policy, members, validSeq: (peer, seq) => memberAt(peer, seq), verdicts }
}

/** An event's `seen`, parsed once: events are immutable, and a fold asks it again and again. */
const parsedSeen = new WeakMap<FoldEvent, Map<string, number>>()
function seenSeqs (e: FoldEvent): Map<string, number> {
  let m = parsedSeen.get(e)
  if (m === undefined) {
    m = new Map()
    for (const [peer, s] of Object.entries(e.event.seen)) m.set(peer, Number(s.slice(0, s.indexOf(':'))))
    parsedSeen.set(e, m)
  }
  return m
}

function equivocated (peer: string, cuts: ReadonlyMap<string, number>): { expelled?: MemberState['expelled'] } {
  const cut = cuts.get(peer)
  return cut === undefined ? {} : { expelled: { by: '', at: '', reason: `equivocated: signed two different changes with sequence number ${cut + 1}` } }
}

/** The first entry of e's `seen` that names a change we do not hold, or undefined. */
function unseen (e: FoldEvent, input: FoldInput): string | undefined {
  for (const [peer, s] of Object.entries(e.event.seen)) {
    if (peer === e.author) continue
    const at = s.indexOf(':')
    const seq = Number(s.slice(0, at))
    if ((input.cuts.get(peer) ?? Infinity) < seq) continue
    if (!input.holds(peer, seq, s.slice(at + 1))) return `waits for change ${seq} of ${peer}`
  }
  return undefined
}

function cmp (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
