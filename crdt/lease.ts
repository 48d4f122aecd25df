/**
 * Leases and fencing without a quorum service: when a host may run a `--ha restart` VM, when the
 * mesh may take it away from its host, and why the two can never overlap.
 *
 * Two rules, both over a majority of the active members (the host itself included):
 *
 * - **Holding** (local, per host). A host holds its lease while a majority of the members
 *   confirmed, recently, that they hear it: each beat carries a sequence number, and each beat
 *   back echoes the last one heard (node/mesh/liveness.ts). A peer's confirmation is good for
 *   `fenceMs` from when *this host sent* the echoed beat, on this host's clock — network delay
 *   only shortens it. A host whose lease runs out stops its `restart` VMs at once (self-fencing;
 *   a watchdog process does it if the daemon itself is frozen, node/compute/watchdog.ts).
 * - **Loss** (deterministic, from the replicated state). A member declares a peer unreachable in
 *   its own record after hearing nothing from it for `declareMs` on its own clock (6 of the
 *   intervals the peer said it beats at: a host without `restart` VMs beats slowly, and is
 *   declared later), naming the peer's current epoch; from that moment it echoes nothing to that peer, and it never takes the
 *   declaration back. A host is *lost* when a strict majority of the members declared it at its
 *   current epoch. Every host computes the same set of lost hosts from the same state; a lost
 *   host's claims on `restart` VMs no longer count, so the VMs are placed again, elsewhere.
 *
 * Why they never overlap: a loss needs a majority of declarations, a lease a majority of
 * confirmations, and any two majorities share a member X. X confirmed beat s, sent by the holder
 * at time t (holder's clock), so X heard the holder at or after t, and X declares no earlier than
 * `declareMs` after that. The holder's lease through X ended at t + `fenceMs`. With
 * `declareMs` ≥ 2 × `fenceMs` the holder has stopped its copy long before (the gap absorbs clock
 * rate drift, the fence check's period and the time to kill a VM). A holder counts its fence in
 * its fast interval and announces an interval at least that long, so the ratio holds between
 * hosts configured differently too. A declarer never echoes the
 * declared epoch again, so a healed link cannot revive the lease; the lost host must first stop
 * the VMs it held, then start a new epoch, which voids its old claims (`claimCurrent`).
 *
 * What this costs: with two members a loss needs both, so a 2-host mesh never moves a VM; a third
 * host (it may run no VMs: `hypervisor = "none"`) makes failover possible. And a host that hears
 * fewer than half the members stops its `restart` VMs even if it is fine and the others are gone.
 *
 * @example
 * const keeper = new LeaseKeeper({ beatMs: 2000 })
 * const seq = keeper.sent()                  // before each beat goes out
 * keeper.received(peer, itsSeq, itsEcho)     // on each beat read
 * keeper.expiry(members)                     // run `restart` VMs while now < this
 */
import type { MeshDoc, HostRecord } from './schema.ts'
import { isActiveMember } from './schema.ts'

/** Lease times as multiples of the heartbeat interval (see the module comment for the ratio). */
export const FENCE_BEATS = 3
export const DECLARE_BEATS = 6

export interface LeaseTiming {
  /** A confirmation keeps the lease this long after the confirmed beat was sent. */
  fenceMs: number
  /** Silence after which a member declares a peer unreachable. */
  declareMs: number
}

export function leaseTiming (beatMs: number): LeaseTiming {
  return { fenceMs: FENCE_BEATS * beatMs, declareMs: DECLARE_BEATS * beatMs }
}

/** How many *other* members must confirm for a strict majority of `members` (self included). */
export function confirmationsNeeded (members: number): number {
  return Math.floor(members / 2)
}

/**
 * Until when a lease holds: the `need`-th most recent confirmation plus `fenceMs`. Infinity for a
 * mesh of one (nobody else could take anything over); -Infinity when too few ever confirmed.
 */
export function leaseExpiry (confirmedAt: ReadonlyArray<number | undefined>, members: number, fenceMs: number): number {
  const need = confirmationsNeeded(members)
  if (need === 0) return Infinity
  const times = confirmedAt.filter((t): t is number => t !== undefined).sort((a, b) => b - a)
  return times.length < need ? -Infinity : times[need - 1] + fenceMs
}

/** A host's epoch: starts at 0, raised each time it comes back after being lost. */
export function epochOf (rec: HostRecord | undefined): number {
  return rec?.epoch ?? 0
}

/** Whether a claim was made in its host's current epoch (older claims are void). */
export function claimCurrent (rec: HostRecord | undefined, claim: { epoch?: number }): boolean {
  return (claim.epoch ?? 0) === epochOf(rec)
}

/** The members that declared `peer` unreachable at its current epoch. */
export function declarers (doc: Partial<MeshDoc>, peer: string): string[] {
  const epoch = epochOf(doc.hosts?.[peer])
  const out: string[] = []
  for (const [by, rec] of Object.entries(doc.hosts ?? {})) {
    if (by === peer || !isActiveMember(doc, by)) continue
    if (rec.unreachable?.[peer]?.epoch === epoch) out.push(by)
  }
  return out.sort()
}

/** Active members a strict majority of the active members declared unreachable at their current epoch. */
export function lostHosts (doc: Partial<MeshDoc>): Map<string, { since: string, by: string[] }> {
  const members = Object.keys(doc.members ?? {}).filter(p => isActiveMember(doc, p))
  const out = new Map<string, { since: string, by: string[] }>()
  for (const peer of members) {
    const by = declarers(doc, peer)
    if (by.length * 2 <= members.length) continue
    // The latest of the declarations that made the majority is when it was lost.
    const times = by.map(p => doc.hosts?.[p]?.unreachable?.[peer]?.since ?? '').sort()
    out.set(peer, { since: times[Math.floor(members.length / 2)] ?? times[times.length - 1], by })
  }
  return out
}

export interface LeaseKeeperInit {
  /** This host's beat interval while it needs its lease (`lease_interval`). */
  beatMs: number
  /**
   * The interval assumed for a peer that has not said its own (the idle `heartbeat_interval`).
   * @default beatMs
   */
  idleBeatMs?: number
  /** Other times than `leaseTiming(beatMs)` (the simulator shows what breaks with them). */
  timing?: LeaseTiming
  /** Monotonic milliseconds. @default performance.now() + performance.timeOrigin */
  now?: () => number
}

/** Beats remembered for their send time: an echo of an older one is ignored (it confirms nothing new). */
const REMEMBERED_BEATS = 256

/**
 * One host's side of the lease: numbers its beats, remembers when each went out, what each peer
 * echoed and when it was last heard, and which peers it has declared. Pure bookkeeping over an
 * injected clock, so the daemon and the simulator (test/unit/lease-sim.test.ts) run the same code.
 */
export class LeaseKeeper {
  readonly timing: LeaseTiming
  private readonly now: () => number
  private readonly started: number
  private readonly beatMs: number
  private readonly idleBeatMs: number
  /** peer → the beat interval it announced last: its silence is judged by it. */
  private readonly peerBeatMs = new Map<string, number>()
  private seq = 0
  private readonly sentAt = new Map<number, number>()
  private readonly lastSeq = new Map<string, number>()
  private readonly heardAt = new Map<string, number>()
  private readonly confirmed = new Map<string, number>()
  /** peer → epoch declared: nothing is echoed to that epoch of the peer again. */
  private readonly declared = new Map<string, number>()
  /** peer → the newest epoch seen of it, and when: a new epoch restarts the silence count. */
  private readonly epochs = new Map<string, { epoch: number, at: number }>()

  constructor (init: LeaseKeeperInit) {
    this.timing = init.timing ?? leaseTiming(init.beatMs)
    this.beatMs = init.beatMs
    this.idleBeatMs = init.idleBeatMs ?? init.beatMs
    this.now = init.now ?? (() => performance.timeOrigin + performance.now())
    this.started = this.now()
  }

  /** A beat is about to go out: its sequence number (the same to every peer). */
  sent (): number {
    this.seq++
    this.sentAt.set(this.seq, this.now())
    if (this.sentAt.size > REMEMBERED_BEATS) this.sentAt.delete(this.seq - REMEMBERED_BEATS)
    return this.seq
  }

  /** The latest beat number, without sending a new one (for a stream opened between beats). */
  current (): number {
    return this.seq === 0 ? this.sent() : this.seq
  }

  /** What to echo to `peer` at `epoch`: the last beat heard from it, or 0 once it is declared. */
  echoFor (peer: string, epoch: number): number {
    const d = this.declared.get(peer)
    if (d !== undefined && d >= epoch) return 0
    return this.lastSeq.get(peer) ?? 0
  }

  /** A beat from `peer`: numbered `seq`, echoing our beat `echo` (0: none), sent every `intervalMs`. */
  received (peer: string, seq: number, echo: number, intervalMs?: number): void {
    const now = this.now()
    this.heardAt.set(peer, now)
    if (intervalMs !== undefined) this.peerBeatMs.set(peer, intervalMs)
    if (seq > 0) this.lastSeq.set(peer, seq)
    const at = this.sentAt.get(echo)
    if (echo > 0 && at !== undefined && at > (this.confirmed.get(peer) ?? -Infinity)) this.confirmed.set(peer, at)
  }

  /** A peer restarted (a new connection): its beat numbers start again. */
  reset (peer: string): void {
    this.lastSeq.delete(peer)
  }

  /** Until when this host holds its lease, given the active members (itself included). */
  expiry (members: readonly string[], self: string): number {
    const others = members.filter(p => p !== self)
    return leaseExpiry(others.map(p => this.confirmed.get(p)), members.length, this.timing.fenceMs)
  }

  holds (members: readonly string[], self: string): boolean {
    return this.now() < this.expiry(members, self)
  }

  /**
   * How long `peer` must be silent to be declared: `declareMs`, scaled by the interval it beats at
   * (idle hosts beat slowly; the safety argument holds for any interval at least as long as the
   * one the peer's own fence counts in, since a longer wait only declares later).
   */
  declareMsFor (peer: string): number {
    return this.timing.declareMs * (this.peerBeatMs.get(peer) ?? this.idleBeatMs) / this.beatMs
  }

  /**
   * Peers silent for their declare time (counted from this keeper's start for a peer never heard) and
   * not yet declared at `epochOf(peer)`: to be declared now. They are marked declared here, before
   * the declaration is written, so that nothing is echoed to them from this moment.
   */
  declare (others: readonly string[], epochOf: (peer: string) => number): Array<{ peer: string, epoch: number }> {
    const now = this.now()
    const out: Array<{ peer: string, epoch: number }> = []
    for (const peer of others) {
      const epoch = epochOf(peer)
      // A host back with a new epoch gets a whole declare time to be heard (its connections may
      // take a while): declared again at once, it would be lost again before it could answer.
      const seen = this.epochs.get(peer)
      if (seen === undefined || seen.epoch < epoch) this.epochs.set(peer, { epoch, at: seen === undefined ? this.started : now })
      const d = this.declared.get(peer)
      if (d !== undefined && d >= epoch) continue
      const last = Math.max(this.heardAt.get(peer) ?? -Infinity, this.started, this.epochs.get(peer)?.at ?? -Infinity)
      if (now - last < this.declareMsFor(peer)) continue
      this.declared.set(peer, epoch)
      out.push({ peer, epoch })
    }
    return out
  }

  /** Declarations this host already made (read back from its record after a restart). */
  remember (peer: string, epoch: number): void {
    if ((this.declared.get(peer) ?? -1) < epoch) this.declared.set(peer, epoch)
  }

  lastHeard (peer: string): number | undefined {
    return this.heardAt.get(peer)
  }
}

/*
 * Endorsements: who runs a `restart` VM. Claims alone are not enough: two hosts with different
 * views (one has heard of a loss or a new epoch the other has not) may each see only their own
 * claim. So each member endorses one claim per VM in its record, and a host runs the VM only while
 * a strict majority endorses its claim at its current epoch. A member moves its endorsement only
 * when the endorsed claim is void: withdrawn (its host stops the VM first), made in an older epoch,
 * or its host lost — and a lost host has fenced by then (see above). Two hosts can therefore never
 * both hold a majority for the same VM.
 */

/** `peer@epoch`, as endorsements name a claim. */
export function claimRef (peer: string, epoch: number): string {
  return `${peer}@${epoch}`
}

export function parseClaimRef (ref: string): { peer: string, epoch: number } | undefined {
  const at = ref.lastIndexOf('@')
  if (at <= 0) return undefined
  const epoch = Number(ref.slice(at + 1))
  return Number.isInteger(epoch) ? { peer: ref.slice(0, at), epoch } : undefined
}

/** Whether `peer` holds a claim on `vm` that counts: made in its current epoch, and it is not lost. */
export function claimStands (doc: Partial<MeshDoc>, lost: ReadonlyMap<string, unknown> | ReadonlySet<string>, vm: string, peer: string): boolean {
  const rec = doc.hosts?.[peer]
  const claim = rec?.claims?.[vm]
  return claim !== undefined && isActiveMember(doc, peer) && !lost.has(peer) && claimCurrent(rec, claim)
}

/**
 * What a member should endorse for `vm`: its present endorsement while that claim stands, else
 * the claim that wins placement (`winner`) if it stands, else nothing (undefined).
 */
export function endorsement (doc: Partial<MeshDoc>, lost: ReadonlyMap<string, unknown> | ReadonlySet<string>, vm: string, self: string, winner: string | null): string | undefined {
  const cur = doc.hosts?.[self]?.endorse?.[vm]
  const c = cur === undefined ? undefined : parseClaimRef(cur)
  if (c !== undefined && c.epoch === epochOf(doc.hosts?.[c.peer]) && claimStands(doc, lost, vm, c.peer)) return cur
  if (winner === null || !claimStands(doc, lost, vm, winner)) return undefined
  return claimRef(winner, epochOf(doc.hosts?.[winner]))
}

/** The members endorsing `peer`'s claim on `vm` at its current epoch. */
export function endorsers (doc: Partial<MeshDoc>, vm: string, peer: string): string[] {
  const ref = claimRef(peer, epochOf(doc.hosts?.[peer]))
  return Object.keys(doc.hosts ?? {}).filter(p => isActiveMember(doc, p) && doc.hosts?.[p]?.endorse?.[vm] === ref).sort()
}

/** Whether a strict majority of the active members endorse `peer`'s claim on `vm`. */
export function endorsedByMajority (doc: Partial<MeshDoc>, vm: string, peer: string): boolean {
  const members = Object.keys(doc.members ?? {}).filter(p => isActiveMember(doc, p)).length
  return endorsers(doc, vm, peer).length * 2 > members
}
