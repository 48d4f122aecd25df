/**
 * This host's lease (crdt/lease.ts) in the running daemon: numbers and echoes beats, declares
 * peers it has not heard for the declare time in its own record, and tells the compute subsystem
 * until when it may run `--ha restart` VMs.
 *
 * @example
 * const lease = new Lease({ store, beatMs: 2000, log, emit })
 * beats use `lease.beats`; every beat interval `await lease.tick()`; compute reads `lease.expiry()`
 */
import { LeaseKeeper, epochOf } from '../../crdt/lease.ts'
import { isActiveMember, scalars } from '../../crdt/schema.ts'
import type { StateStore } from '../../crdt/store.ts'
import type { BeatLease } from './liveness.ts'
import type { Logger } from '../log.ts'

export interface LeaseInit {
  store: StateStore
  /** Beat interval while this host needs its lease (`lease_interval`). */
  beatMs: number
  /** Beat interval otherwise (`heartbeat_interval`): assumed for peers not heard yet. */
  idleBeatMs?: number
  log: Logger
  emit: (type: string, data?: Record<string, unknown>) => void
  /** Monotonic milliseconds (tests). */
  now?: () => number
}

export class Lease {
  readonly keeper: LeaseKeeper
  readonly beats: BeatLease
  private readonly init: LeaseInit
  private writing = false

  constructor (init: LeaseInit) {
    this.init = init
    this.keeper = new LeaseKeeper({ beatMs: init.beatMs, ...(init.idleBeatMs === undefined ? {} : { idleBeatMs: init.idleBeatMs }), ...(init.now === undefined ? {} : { now: init.now }) })
    this.beats = {
      sent: () => this.keeper.sent(),
      current: () => this.keeper.current(),
      echoFor: peer => { this.rememberOwn(); return this.keeper.echoFor(peer, epochOf(this.init.store.doc.hosts?.[peer])) },
      received: (peer, seq, echo, intervalMs) => { this.keeper.received(peer, seq, echo, intervalMs) }
    }
  }

  private members (): string[] {
    const doc = this.init.store.doc
    return Object.keys(doc.members ?? {}).filter(p => isActiveMember(doc, p))
  }

  /** Until when `restart` VMs may run here (ms, the keeper's clock: `Date.now()`-like). */
  expiry (): number {
    const { store } = this.init
    if (!store.inMesh) return Infinity
    return this.keeper.expiry(this.members(), store.self)
  }

  now (): number {
    return this.init.now?.() ?? performance.timeOrigin + performance.now()
  }

  /** Declarations in our own record (they outlive a restart of the daemon): never echoed again. */
  private rememberOwn (): void {
    const { store } = this.init
    for (const [peer, d] of Object.entries(store.doc.hosts?.[store.self]?.unreachable ?? {})) this.keeper.remember(peer, d.epoch)
  }

  /**
   * Declares the peers silent for the declare time, and drops declarations of epochs the peer has
   * left behind (it came back) or of hosts no longer members. One change, only when needed.
   */
  async tick (): Promise<void> {
    const { store, log, emit } = this.init
    if (!store.inMesh || this.writing || !isActiveMember(store.doc, store.self)) return
    this.rememberOwn()
    const doc = store.doc
    const others = this.members().filter(p => p !== store.self)
    // Only members that have published a record: one admitted that never joined runs nothing and
    // is left alone (declaring each such peer cost every host a change, for nothing).
    const fresh = this.keeper.declare(others.filter(p => doc.hosts?.[p] !== undefined), p => epochOf(doc.hosts?.[p]))
    const own = doc.hosts?.[store.self]?.unreachable ?? {}
    const stale = Object.entries(own).filter(([p, d]) => !others.includes(p) || d.epoch < epochOf(doc.hosts?.[p])).map(([p]) => p)
    if (fresh.length === 0 && stale.length === 0) return
    this.writing = true
    try {
      const since = new Date().toISOString()
      await store.change(`lease: declare ${fresh.map(f => f.peer.slice(-8)).join(',') || '-'}, drop ${stale.length}`, d => {
        const rec = d.host
        if (rec === undefined) return
        rec.unreachable ??= {}
        for (const p of stale) delete rec.unreachable[p]
        for (const f of fresh) rec.unreachable[f.peer] = scalars({ epoch: f.epoch, since })
      })
      for (const f of fresh) {
        log.warn('declared a host unreachable', { peer: f.peer, epoch: f.epoch, silentMs: this.keeper.declareMsFor(f.peer) })
        emit('host.unreachable', { peerId: f.peer, epoch: f.epoch })
      }
    } finally {
      this.writing = false
    }
  }
}
