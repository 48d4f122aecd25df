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
  lease: { expiry: () => number, now: () => number }
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

  constructor (init: FenceInit) {
    this.init = init
  }

  holds (): boolean {
    return this.init.lease.now() < this.init.lease.expiry() - MARGIN_MS
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
    if (names.length === 0 && !this.fenced) return
    if (this.holds()) {
      const left = lease.expiry() - lease.now() - MARGIN_MS
      watchdog?.pet(left, names.flatMap(name => { const p = pid(name); return p === undefined ? [] : [{ pid: p, name }] }))
      if (this.fenced) {
        this.fenced = false
        log.info('lease held again: restart VMs may run here')
        emit('host.lease', { held: true })
        changed()
      }
      return
    }
    watchdog?.pet(0, [])
    if (this.fenced) return
    this.fenced = true
    log.warn('lease lost: this host hears fewer than a majority of the hosts; fencing its restart VMs', { vms: names.join(',') })
    emit('host.lease', { held: false, fenced: names })
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
