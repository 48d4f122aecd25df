/**
 * The VM reconciler of this host: from the derived world, the VMs placed here become real VMs
 * through the hypervisor driver, and what the driver observes is reported in this host's record.
 * Observe → plan (node/compute/vm-plan.ts) → apply the smallest change → report. Runs on every
 * state change and every few seconds; passes never overlap; a failed action is reported, never
 * thrown. A restart of the daemon adopts running VMs: the driver finds them by name.
 */
import { join } from 'node:path'
import { access } from 'node:fs/promises'
import { vmName, tapName, vmMac, type HypervisorDriver, type VmSpec, type VmObserved } from './hypervisor/types.ts'
import type { ImageStore } from './images/store.ts'
import type { StateStore } from '../../crdt/store.ts'
import { hostViews, placementRequests, type World, type VmEntry } from '../../crdt/world.ts'
import { placeOne } from '../../crdt/placement.ts'
import { optString, scalars, type HostVm } from '../../crdt/schema.ts'
import { assignVnis, bridgeName } from '../network/index.ts'
import { planVms, type VmTarget, type VmReport } from './vm-plan.ts'
import type { Logger } from '../log.ts'

export interface VmReconcilerInit {
  store: StateStore
  driver: HypervisorDriver
  images: ImageStore
  world: () => World
  log: Logger
  /** Fetches an image from peers (node/compute/images/transfer.ts); resolves when it is in the local store. */
  fetch: (vmId: string, sha256: string) => Promise<void>
  /** Writes a cloud-init seed for the VM and returns its path, or undefined for none. */
  seed?: (vm: VmEntry, spec: VmSpec) => Promise<string | undefined>
  /** Stop a local VM nobody placed here after this long. @default 60000 */
  orphanGraceMs?: number
  /** @default 5000 */
  intervalMs?: number
  /** Awaited before VMs start (the data plane makes the bridges their NICs join). */
  beforeStart?: () => Promise<void>
  /** Whether a network bridge exists here (a VM on a network starts only once it does). @default /sys/class/net */
  bridgeExists?: (bridge: string) => Promise<boolean>
  /** Whether this host holds its lease: `--ha restart` VMs run only then (node/compute/fence.ts). @default always */
  leaseHeld?: () => boolean
  /** Whether the lease is not held yet because this host only just came to need it. @default never */
  leaseAcquiring?: () => boolean
  /** Why a restart VM is fenced, for its report. */
  fenceReason?: string
  /**
   * Cold moves (node/compute/disk-handover.ts): the host a VM left hands its disk to the host that
   * takes it, which waits for it. Without this a moved VM starts from its image. @default none
   */
  moves?: DiskMoves
  /** Events for the API's stream. */
  emit?: (type: string, data?: Record<string, unknown>) => void
}

/** What the reconciler needs of disk hand-overs (DiskHandover, or a fake in tests). */
export interface DiskMoves {
  send: (peer: string, vmId: string, request: string) => Promise<{ bytes: number }>
  received: (name: string, request: string) => Promise<'disk' | 'none' | undefined>
  adopted: (name: string, request: string) => Promise<boolean>
  adopt: (name: string, request: string, spec: VmSpec, fromImage?: boolean) => Promise<void>
}

/** A failed hand-over is tried again after this long. */
const HANDOVER_RETRY_MS = 5000

const FETCH_RETRY_MS = 5000

export interface ReconcileStats { passes: number, errors: number, lastMs: number, totalMs: number }

export class VmReconciler {
  private readonly init: VmReconcilerInit
  private running?: Promise<void>
  private again = false
  private timer?: NodeJS.Timeout
  private readonly orphanSince = new Map<string, number>()
  private readonly fetching = new Map<string, Promise<void>>()
  /** Last fetch failure per image, retried after FETCH_RETRY_MS (a good holder may come back). */
  private readonly fetchErrors = new Map<string, { reason: string, at: number }>()
  private readonly actionErrors = new Map<string, string>()
  /** Crash backoff per VM: 2 s after the first crash, doubling to 5 min. */
  private readonly crashes = new Map<string, { count: number, notBefore: number, pid?: number }>()
  readonly stats: ReconcileStats = { passes: 0, errors: 0, lastMs: 0, totalMs: 0 }
  /** QEMU pid of each local VM as last observed (the watchdog kills by pid). */
  readonly pids = new Map<string, number>()
  /** Disk hand-overs of moved VMs under way or done, by move request: done, or retry after. */
  private readonly handovers = new Map<string, { done: boolean, notBefore: number }>()

  constructor (init: VmReconcilerInit) {
    this.init = init
  }

  start (): void {
    this.timer = setInterval(() => this.kick(true), this.init.intervalMs ?? 5000)
    this.timer.unref()
    this.kick(true)
  }

  stop (): void {
    clearInterval(this.timer)
  }

  /**
   * Runs a pass soon. A pass caused by a state change that left this host's VMs as they were is
   * skipped (no look at the hypervisor); `observe` forces one (the periodic pass, a fetch done, a
   * crash backoff over), so a VM that died is still noticed within the interval.
   */
  kick (observe = false): void {
    this.observeNext ||= observe
    if (this.running !== undefined) { this.again = true; return }
    this.running = (async () => {
      // Later than the scheduler's pass, and once for a burst of changes.
      await new Promise(resolve => setTimeout(resolve, 20))
      do {
        this.again = false
        const t0 = performance.now()
        const observe = this.observeNext
        this.observeNext = false
        try {
          await this.pass(observe)
        } catch (err: any) {
          this.stats.errors++
          this.init.log.error('VM reconcile pass failed', { error: err.message })
        }
        const ms = performance.now() - t0
        this.stats.passes++; this.stats.lastMs = ms; this.stats.totalMs += ms
      } while (this.again)
    })().finally(() => { this.running = undefined })
  }

  async idle (): Promise<void> {
    while (this.running !== undefined) await this.running
  }

  /** A VM's image: known in the mesh, held here, or why not. */
  private async image (world: World, vm: VmEntry): Promise<VmTarget['image'] & { format?: 'raw' | 'qcow2' }> {
    const ref = vm.spec.image
    const img = ref.startsWith('sha256:') ? [...world.images.values()].find(i => i.sha256 === ref.slice(7)) : world.images.get(ref)
    const sha256 = img?.sha256 ?? (ref.startsWith('sha256:') ? ref.slice(7) : undefined)
    if (sha256 === undefined) return { present: false, error: `image ${ref} is not known in this mesh (add it with \`picocloud image add\`)` }
    const fetchError = this.fetchErrors.get(sha256)
    if (fetchError !== undefined && Date.now() - fetchError.at > FETCH_RETRY_MS) this.fetchErrors.delete(sha256)
    if (!(await this.init.images.has(sha256))) return { sha256, present: false, error: this.fetchErrors.get(sha256)?.reason }
    return { sha256, present: true, ...(img?.format === undefined ? {} : { format: img.format }) }
  }

  /** The spec of a VM placed here, when its image is in the local store. */
  private async spec (world: World, vm: VmEntry): Promise<{ spec?: VmSpec, image: VmTarget['image'] }> {
    const found = await this.image(world, vm)
    if (!found.present || found.sha256 === undefined) return { image: found }
    const sha256 = found.sha256
    const img = { format: found.format }
    const info = await this.init.images.info(sha256)
    const vnis = assignVnis([...world.nets.values()].map(n => n.id))
    const spec: VmSpec = {
      id: vm.id,
      name: vmName(vm.id),
      vcpus: vm.needs.vcpus,
      memMiB: vm.needs.memMiB,
      arch: vm.spec.arch,
      disk: { baseImage: this.init.images.path(sha256), format: info?.format ?? img?.format ?? 'raw', sizeGiB: vm.needs.diskGiB },
      nics: vm.nics.map((n, i) => {
        const net = world.nets.get(n.net)
        const vni = net === undefined ? undefined : vnis.get(net.id)
        return { mac: vmMac(vm.id, i), tap: tapName(vm.id, i), ...(vni === undefined ? {} : { bridge: bridgeName(vni) }) }
      }),
      restart: vm.spec.restart
    }
    const seed = await this.init.seed?.(vm, spec)
    if (seed !== undefined) spec.seed = seed
    return { spec, image: { sha256, present: true } }
  }

  private observeNext = false
  private lastInputs = ''

  /**
   * Images of the `--ha restart` VMs this host would take over next (first in their ranking after
   * their present host): fetched ahead, so that a takeover does not depend on the lost host, or
   * on the host that added the image, being reachable.
   */
  private async prefetchStandby (world: World): Promise<void> {
    const self = this.init.store.self
    const restart = [...world.vms.values()].filter(vm => vm.spec.ha === 'restart' && vm.desired !== 'destroyed' && vm.rejected === undefined && vm.host !== self)
    if (restart.length === 0) return
    const hosts = hostViews(this.init.store.doc)
    for (const req of placementRequests(restart)) {
      const vm = world.vms.get(req.id) as VmEntry
      const standby = placeOne(req, hosts).ranking.find(p => p !== vm.host)
      if (standby !== self) continue
      const image = await this.image(world, vm)
      if (!image.present && image.sha256 !== undefined && image.error === undefined) this.startFetch(vm.id, image.sha256)
    }
  }

  private async pass (observe: boolean): Promise<void> {
    const { store, driver, log } = this.init
    if (!store.inMesh) return
    const self = store.self
    const world = this.init.world()
    const mineInState = store.doc.hosts?.[self]?.vms ?? {}
    const targets: VmTarget[] = []
    const lostHere = new Set<string>()
    /** `restart` VMs placed elsewhere now, by name → id: killed at once (see below). */
    const killNow = new Map<string, string>()
    /** VMs their owner moved away from here: their disk goes to the new host once they are stopped. */
    const handOver: Array<{ vm: VmEntry, to: string }> = []
    for (const vm of world.vms.values()) {
      const name = vmName(vm.id)
      const placedHere = vm.host === self
      if (!placedHere) {
        // Destroyed VMs that were ours, and VMs a better-ranked host won, go at once.
        if (vm.desired === 'destroyed' && mineInState[vm.id] !== undefined) targets.push({ id: vm.id, name, want: 'destroyed', restart: 'never', image: { present: true } })
        else if (vm.desired !== 'destroyed' && vm.host !== null) {
          lostHere.add(name)
          const movedAway = vm.move !== undefined && vm.move.from === self && vm.move.settled !== true && this.init.moves !== undefined
          // Another host may run it as soon as this copy is gone: no time for the guest's power-off
          // (unless its owner moved it: the new host waits for its disk, which a clean power-off keeps whole).
          if (vm.spec.ha === 'restart' && !movedAway) killNow.set(name, vm.id)
          if (movedAway) handOver.push({ vm, to: vm.host })
        }
        continue
      }
      // Start only once the claim has settled (the scheduler then writes the first report).
      if (mineInState[vm.id] === undefined) continue
      const operatorStop = mineInState[vm.id]?.operatorStop
      const want = vm.desired === 'running' && operatorStop === undefined ? 'running' : vm.desired === 'destroyed' ? 'destroyed' : 'stopped'
      if (want !== 'destroyed' && vm.move !== undefined && vm.move.from !== self && this.init.moves !== undefined) {
        const waiting = await this.moveIn(world, vm, name)
        if (waiting !== undefined) {
          targets.push({ id: vm.id, name, want: 'stopped', held: { status: 'placed', reason: waiting }, restart: vm.spec.restart, image: { present: true } })
          continue
        }
      }
      if (want === 'running' && vm.spec.ha === 'restart') {
        const held = this.init.leaseHeld?.() === false
          ? this.init.leaseAcquiring?.() === true
            ? { status: 'placed' as const, reason: 'waiting for this host\'s lease: a majority of the hosts must answer its beats' }
            : { status: 'fenced' as const, reason: this.init.fenceReason ?? 'this host lost its lease' }
          : vm.endorsed !== true ? { status: 'placed' as const, reason: 'waiting for a majority of the hosts to endorse this host\'s claim' } : undefined
        if (held !== undefined) {
          targets.push({ id: vm.id, name, want: 'stopped', force: true, held, restart: vm.spec.restart, image: { present: true } })
          continue
        }
      }
      const { spec, image } = want === 'running' ? await this.spec(world, vm) : { spec: undefined, image: { present: true } }
      targets.push({ id: vm.id, name, want, ...(want === 'stopped' && vm.forceStop === true && operatorStop === undefined ? { force: true } : {}), restart: vm.spec.restart, spec, image })
    }
    const inputs = JSON.stringify([targets, [...lostHere], handOver.map(h => [h.vm.id, h.to])])
    if (!observe && inputs === this.lastInputs) return
    if (observe) await this.prefetchStandby(world).catch((err: any) => { log.warn('prefetching standby images failed', { error: err.message }) })
    this.lastInputs = inputs
    const observed = await driver.list()
    this.pids.clear()
    for (const o of observed) if (o.pid !== undefined && (o.state === 'running' || o.state === 'paused')) this.pids.set(o.name, o.pid)
    const now = Date.now()
    for (const o of observed) if (!this.orphanSince.has(o.name)) this.orphanSince.set(o.name, now)
    for (const name of this.orphanSince.keys()) if (!observed.some(o => o.name === name)) this.orphanSince.delete(name)
    for (const o of observed) {
      const old = this.crashes.get(o.name)
      if (o.state === 'running' && old !== undefined && now - old.notBefore > 600_000) this.crashes.delete(o.name)
      if (o.state !== 'crashed') continue
      const c = this.crashes.get(o.name)
      if (c !== undefined && c.pid === o.pid) continue
      const count = (c?.count ?? 0) + 1
      this.crashes.set(o.name, { count, pid: o.pid, notBefore: now + Math.min(2000 * 2 ** (count - 1), 300_000) })
      log.warn('VM crashed', { vm: o.name, reason: o.reason, restartInMs: Math.min(2000 * 2 ** (count - 1), 300_000) })
      setTimeout(() => this.kick(true), Math.min(2000 * 2 ** (count - 1), 300_000) + 50).unref()
    }
    const restartNotBefore = new Map([...this.crashes].map(([n, c]) => [n, c.notBefore]))
    const plan = planVms({ targets, observed, now, orphanSince: this.orphanSince, orphanGraceMs: this.init.orphanGraceMs ?? 60_000, lostHere, restartNotBefore })
    for (const o of plan.orphans) if (o.seenMs === 0) log.warn('a VM runs here that the state does not place here; it will be stopped after the grace period', { vm: o.name })

    const reports = new Map(plan.reports)
    // A guest gets up to 30 s to power off: say "stopping" meanwhile, not after.
    const stopping = plan.actions.filter(a => a.type === 'stop').map(a => [a.id, reports.get(a.id)] as const)
    if (stopping.length > 0) await this.report(new Map(stopping.filter((x): x is [string, VmReport] => x[1] !== undefined)), mineInState)
    if (plan.actions.some(a => a.type === 'start' && a.spec.nics.some(n => n.bridge !== undefined))) {
      await this.init.beforeStart?.().catch((err: any) => { log.warn('data plane not ready before VM start', { error: err.message }) })
    }
    for (const a of plan.actions) {
      try {
        switch (a.type) {
          case 'fetch':
            this.startFetch(a.id, a.sha256)
            break
          case 'start': {
            // The data plane builds a network's bridge on its own pass: until then the VM waits
            // (looked at again in a few seconds), it has not failed.
            const missing = await this.missingBridge(a.spec)
            if (missing !== undefined) {
              const net = world.vms.get(a.id)?.nics[missing.index]?.net ?? '?'
              reports.set(a.id, { status: 'pending', reason: `waiting for network ${net} to be built on this host (bridge ${missing.bridge}; see \`picocloud status\`)` })
              setTimeout(() => this.kick(true), 2000).unref()
              break
            }
            const o = await driver.start(a.spec)
            if (o.pid !== undefined) this.pids.set(a.spec.name, o.pid)
            this.actionErrors.delete(a.id)
            reports.set(a.id, observedReport(o))
            log.info('started VM', { vm: a.spec.name, pid: o.pid })
            break
          }
          case 'stop':
            await driver.stop(a.name, a.force ? { timeoutMs: 0 } : {})
            this.pids.delete(a.name)
            if (!reports.has(a.id) || reports.get(a.id)?.status === 'stopping') reports.set(a.id, { status: 'stopped' })
            log.info('stopped VM', { vm: a.name })
            break
          case 'destroy':
            await driver.destroy(a.name)
            this.pids.delete(a.name)
            log.info('destroyed VM', { vm: a.name })
            break
          case 'stop-orphan':
            await driver.stop(a.name, killNow.has(a.name) ? { timeoutMs: 0 } : {})
            this.pids.delete(a.name)
            // Said in the record: the scheduler withdraws the claim on it now (and the other
            // hosts' endorsements move to the new host's claim).
            if (killNow.has(a.name)) reports.set(killNow.get(a.name) as string, { status: 'stopped', reason: 'moved to another host' })
            log.warn('stopped a VM that the state does not place here', { vm: a.name })
            break
        }
      } catch (err: any) {
        this.stats.errors++
        const id = 'id' in a ? a.id : undefined
        log.error(`VM ${a.type} failed`, { vm: 'name' in a ? a.name : a.id, error: err.message })
        if (id !== undefined) reports.set(id, { status: 'failed', reason: err.message })
      }
    }
    await this.report(reports, mineInState)
    for (const h of handOver) this.handOver(h.vm, h.to, this.pids.has(vmName(h.vm.id)))
  }

  /**
   * On the host a moved VM goes to: undefined when it may start (its disk is here and is now its
   * overlay, or there is none to wait for), else why it waits. Gives up waiting only when the host
   * it left can never hand the disk over (lost or no longer a member): it starts from its image.
   */
  private async moveIn (world: World, vm: VmEntry, name: string): Promise<string | undefined> {
    const moves = this.init.moves as DiskMoves
    const move = vm.move as NonNullable<VmEntry['move']>
    if (await moves.adopted(name, move.request)) return undefined
    const got = await moves.received(name, move.request)
    const from = world.hosts.find(h => h.peerId === move.from)
    const fromName = this.init.store.doc.hosts?.[move.from]?.name ?? move.from.slice(-8)
    const gone = from === undefined || from.member === false || from.lost === true
    if (got === undefined && !gone && move.settled !== true) return `moving: waiting for its disk from ${fromName}, which stops it first`
    const { spec } = await this.spec(world, vm)
    // The image first (the usual path fetches it): the disk is put over it on the next pass.
    if (spec === undefined) return undefined
    await moves.adopt(name, move.request, spec, got === undefined)
    if (got === undefined && move.settled !== true) {
      this.init.log.warn('a moved VM starts from its image: the host it left can no longer hand its disk over', { vm: name, from: fromName })
      this.init.emit?.('vm.moved', { vm: vm.id, from: move.from, disk: false })
    } else if (got !== undefined) {
      this.init.log.info('a moved VM starts from the disk its last host handed over', { vm: name, from: fromName })
      this.init.emit?.('vm.moved', { vm: vm.id, from: move.from, disk: got === 'disk' })
    }
    return undefined
  }

  /** On the host a moved VM left: once it is stopped here, its disk goes to the new host (retried until it is taken). */
  private handOver (vm: VmEntry, to: string, runs: boolean): void {
    const move = vm.move as NonNullable<VmEntry['move']>
    const moves = this.init.moves as DiskMoves
    const state = this.handovers.get(move.request)
    if (runs || state?.done === true || (state !== undefined && Date.now() < state.notBefore)) return
    this.handovers.set(move.request, { done: true, notBefore: Infinity })
    const { log, store } = this.init
    const toName = store.doc.hosts?.[to]?.name ?? to.slice(-8)
    const t0 = Date.now()
    moves.send(to, vm.id, move.request).then(async ({ bytes }) => {
      log.info('handed a moved VM\'s disk over', { vm: vmName(vm.id), to: toName, bytes, ms: Date.now() - t0 })
      const mine = store.doc.hosts?.[store.self]?.vms ?? {}
      await this.report(new Map([[vm.id, { status: 'stopped', reason: `moved to ${toName}: its disk was handed over`, handedOver: move.request }]]), mine)
    }).catch((err: any) => {
      log.warn('handing a moved VM\'s disk over failed; trying again', { vm: vmName(vm.id), to: toName, error: err.message })
      this.handovers.set(move.request, { done: false, notBefore: Date.now() + HANDOVER_RETRY_MS })
      setTimeout(() => this.kick(true), HANDOVER_RETRY_MS + 50).unref()
    })
  }

  private async missingBridge (spec: VmSpec): Promise<{ index: number, bridge: string } | undefined> {
    const exists = this.init.bridgeExists ?? (async (b: string) => await access(`/sys/class/net/${b}`).then(() => true, () => false))
    for (const [index, nic] of spec.nics.entries()) {
      if (nic.bridge !== undefined && !(await exists(nic.bridge))) return { index, bridge: nic.bridge }
    }
    return undefined
  }

  private startFetch (vmId: string, sha256: string): void {
    if (this.fetching.has(sha256)) return
    const p = this.init.fetch(vmId, sha256)
      .then(() => { this.fetchErrors.delete(sha256) })
      .catch((err: any) => { this.fetchErrors.set(sha256, { reason: err.message, at: Date.now() }) })
      .finally(() => { this.fetching.delete(sha256); this.kick(true) })
    this.fetching.set(sha256, p)
  }

  /** Writes status changes only, in one signed change. */
  private async report (reports: Map<string, VmReport>, current: Record<string, HostVm>): Promise<void> {
    const changed = [...reports].filter(([id, r]) => {
      const cur = current[id]
      return cur === undefined || optString(cur.status) !== r.status || optString(cur.reason) !== r.reason || (r.handedOver !== undefined && optString(cur.handedOver) !== r.handedOver)
    })
    if (changed.length === 0) return
    const { store } = this.init
    const at = new Date().toISOString()
    await store.change(`report ${changed.map(([id, r]) => `${id.slice(0, 8)}=${r.status}`).join(' ')}`, d => {
      const rec = d.host
      if (rec === undefined) return
      rec.vms ??= {}
      for (const [id, r] of changed) {
        const prev = current[id]
        const next: HostVm = { status: r.status, since: at }
        if (r.reason !== undefined) next.reason = r.reason
        if (prev?.operatorStop !== undefined && r.status !== 'destroyed') next.operatorStop = prev.operatorStop
        const handedOver = r.handedOver ?? optString(prev?.handedOver)
        if (handedOver !== undefined && r.status !== 'destroyed') next.handedOver = handedOver
        rec.vms[id] = scalars(next)
      }
    })
  }
}

function observedReport (o: VmObserved): VmReport {
  if (o.state === 'running' || o.state === 'paused') return { status: 'running' }
  return { status: 'failed', reason: o.reason ?? `the VM is ${o.state} right after start` }
}

export const seedDir = (stateDir: string, name: string): string => join(stateDir, 'vms', name)
