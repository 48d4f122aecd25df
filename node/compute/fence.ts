/**
 * Self-fencing of this host's `--ha restart` VMs (crdt/lease.ts): checked a few times per beat,
 * it kills them the moment the lease runs out, and keeps the watchdog (node/compute/watchdog.ts)
 * petted with the time left while it holds, so that they die in time even if this daemon is
 * frozen or gone. The reconciler reads `holds()` and neither starts nor reports them as running
 * without the lease.
 *
 * @example
 * const fence = new Fence({ lease, driver, guarded: () => names, pid: n => pids.get(n), log, emit, changed: kick })
 * fence.start()
 */
import type { HypervisorDriver } from './hypervisor/types.ts'
import type { Watchdog } from './watchdog.ts'
import type { Logger } from '../log.ts'

export interface FenceInit {
  /**
   * `want`: this host just came to hold `restart` VMs; beat at the lease rate so that the lease is
   * held within a round trip (hosts without such VMs beat slowly and hold none).
   */
  lease: { expiry: () => number, now: () => number, fenceMs?: number, want?: () => void }
  driver: HypervisorDriver
  /** Names of the `restart` VMs the state places here. */
  guarded: () => string[]
  /** The QEMU pid of a VM, as last observed (for the watchdog). */
  pid: (name: string) => number | undefined
  watchdog?: Watchdog
  log: Logger
  emit: (type: string, data?: Record<string, unknown>) => void
  /** The fence went up or down: the reconciler should look again. */
  changed: () => void
  /** @default 250 */
  intervalMs?: number
}

/** Kill this long before the lease ends: the watchdog's read and kill take a moment. */
const MARGIN_MS = 200

export class Fence {
  private readonly init: FenceInit
  private timer?: NodeJS.Timeout
  private fenced = false
  private killing?: Promise<void>
  /** Whether nothing was under the lease at the last check. */
  private unguarded = true
  /** Until then a missing lease is being acquired (first restart VM here), not lost. */
  private acquiringUntil = 0

  constructor (init: FenceInit) {
    this.init = init
  }

  holds (): boolean {
    return this.init.lease.now() < this.init.lease.expiry() - MARGIN_MS
  }

  /** Not held yet because this host only just came to need it: its VMs wait, they are not fenced. */
  acquiring (): boolean {
    return !this.holds() && this.init.lease.now() < this.acquiringUntil
  }

  start (): void {
    this.timer = setInterval(() => { this.check() }, this.init.intervalMs ?? 250)
    this.timer.unref()
    this.check()
  }

  stop (): void {
    clearInterval(this.timer)
    this.init.watchdog?.close()
  }

  check (): void {
    const { lease, guarded, pid, watchdog, log, emit, changed } = this.init
    const names = guarded()
    // Nothing under the lease here: nothing to check (most hosts, most of the time).
    if (names.length === 0 && !this.fenced) {
      this.unguarded = true
      return
    }
    if (this.unguarded) {
      this.unguarded = false
      if (!this.holds()) this.acquiringUntil = lease.now() + (lease.fenceMs ?? 0)
      lease.want?.()
    }
    if (this.holds()) {
      const left = lease.expiry() - lease.now() - MARGIN_MS
      watchdog?.pet(left, names.flatMap(name => { const p = pid(name); return p === undefined ? [] : [{ pid: p, name }] }))
      if (this.fenced) {
        this.fenced = false
        log.info('lease held: restart VMs may run here')
        emit('host.lease', { held: true })
        changed()
      }
      return
    }
    watchdog?.pet(0, [])
    if (this.fenced) return
    this.fenced = true
    // Whatever runs without the lease dies either way; only the words differ.
    if (this.acquiring()) log.info('waiting for the lease: a majority of the hosts must answer this host\'s beats', { vms: names.join(',') })
    else {
      log.warn('lease lost: this host hears fewer than a majority of the hosts; fencing its restart VMs', { vms: names.join(',') })
      emit('host.lease', { held: false, fenced: names })
    }
    this.killing = this.kill(names).finally(() => { this.killing = undefined; changed() })
  }

  /** Done when the VMs of the last fence are killed. */
  async idle (): Promise<void> {
    await this.killing
  }

  private async kill (names: string[]): Promise<void> {
    for (const name of names) {
      try {
        await this.init.driver.stop(name, { timeoutMs: 0 })
      } catch (err: any) {
        if (err?.code !== 'NOT_FOUND') this.init.log.error('fencing a VM failed', { vm: name, error: err.message })
      }
    }
  }
}
