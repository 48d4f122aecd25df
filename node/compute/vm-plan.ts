/**
 * What to do with the VMs of this host: a pure diff between what the state wants here and what
 * the hypervisor reports, as the smallest list of actions and the status to report for each VM.
 *
 * @example
 * const { actions, reports } = planVms({ targets, observed, now, restarts })
 */
import type { VmObserved, VmSpec, RestartPolicy } from './hypervisor/types.ts'
import type { VmStatus } from '../../crdt/schema.ts'

/** One VM as the state wants it on this host. */
export interface VmTarget {
  id: string
  /** `pc-…` */
  name: string
  want: 'running' | 'stopped' | 'destroyed'
  /** With want stopped: cut the power at once instead of asking the guest to power off. */
  force?: boolean
  /**
   * With want stopped: a `restart` VM that may not run here now (lease lost, or its claim not yet
   * endorsed, crdt/lease.ts). Killed if it runs; reported with this status and reason.
   */
  held?: { status: VmStatus, reason: string }
  restart: RestartPolicy
  /** Undefined while the image is not in the local store (or unknown). */
  spec?: VmSpec
  image: { sha256?: string, present: boolean, error?: string }
}

export type VmAction =
  | { type: 'fetch', id: string, sha256: string }
  | { type: 'start', id: string, spec: VmSpec }
  | { type: 'stop', id: string, name: string, force: boolean }
  | { type: 'destroy', id: string, name: string }
  | { type: 'stop-orphan', name: string }

export interface VmReport {
  status: VmStatus
  reason?: string
  /** On the host a moved VM left: the move whose disk it handed over (crdt/schema.ts HostVm). */
  handedOver?: string
}

export interface PlanInput {
  targets: VmTarget[]
  observed: VmObserved[]
  now: number
  /** When each unexpected local VM was first seen (for the grace period). */
  orphanSince: Map<string, number>
  /** How long a local VM that the state does not place here may run before it is stopped. */
  orphanGraceMs: number
  /** Names of VMs that started twice and lost to a better-ranked host: stopped at once. */
  lostHere: Set<string>
  /** A crashed VM is restarted only from this time on (backoff against crash loops). */
  restartNotBefore?: Map<string, number>
}

export interface VmPlan {
  actions: VmAction[]
  reports: Map<string, VmReport>
  /** Local VMs nobody placed here, with how long they have been seen. */
  orphans: Array<{ name: string, seenMs: number, state: string }>
}

export function planVms (input: PlanInput): VmPlan {
  const actions: VmAction[] = []
  const reports = new Map<string, VmReport>()
  const observed = new Map(input.observed.map(o => [o.name, o]))
  const wanted = new Set(input.targets.map(t => t.name))

  for (const t of input.targets) {
    const o = observed.get(t.name)
    if (t.want === 'destroyed') {
      if (o !== undefined) actions.push({ type: 'destroy', id: t.id, name: t.name })
      reports.set(t.id, { status: 'destroyed' })
      continue
    }
    if (t.want === 'stopped' && t.held !== undefined) {
      if (o?.state === 'running' || o?.state === 'paused') actions.push({ type: 'stop', id: t.id, name: t.name, force: true })
      reports.set(t.id, { ...t.held })
      continue
    }
    if (t.want === 'stopped') {
      if (o?.state === 'running' || o?.state === 'paused') {
        actions.push({ type: 'stop', id: t.id, name: t.name, force: t.force === true })
        reports.set(t.id, { status: 'stopping' })
      } else {
        reports.set(t.id, { status: 'stopped', reason: o?.state === 'crashed' ? o.reason : undefined })
      }
      continue
    }
    // want running
    if (o?.state === 'running') { reports.set(t.id, { status: 'running' }); continue }
    if (o?.state === 'paused') { reports.set(t.id, { status: 'running', reason: 'paused' }); continue }
    if (t.image.error !== undefined) { reports.set(t.id, { status: 'failed', reason: t.image.error }); continue }
    if (!t.image.present || t.spec === undefined) {
      if (t.image.sha256 !== undefined) actions.push({ type: 'fetch', id: t.id, sha256: t.image.sha256 })
      reports.set(t.id, { status: 'fetching-image' })
      continue
    }
    if (o?.state === 'crashed') {
      // QEMU died behind our back: report it, and restart unless the policy says never.
      const reason = o.reason ?? 'QEMU exited'
      const notBefore = input.restartNotBefore?.get(t.name) ?? 0
      if (t.restart === 'never' || input.now < notBefore) { reports.set(t.id, { status: 'failed', reason }); continue }
      actions.push({ type: 'start', id: t.id, spec: t.spec })
      reports.set(t.id, { status: 'starting', reason: `restarting after a crash: ${reason}` })
      continue
    }
    // Not there yet, or stopped (a stop by the owner was undone by a start).
    actions.push({ type: 'start', id: t.id, spec: t.spec })
    reports.set(t.id, { status: 'starting' })
  }

  const orphans: VmPlan['orphans'] = []
  for (const o of input.observed) {
    if (wanted.has(o.name)) continue
    if (o.state !== 'running' && o.state !== 'paused') continue
    if (input.lostHere.has(o.name)) { actions.push({ type: 'stop-orphan', name: o.name }); continue }
    const since = input.orphanSince.get(o.name) ?? input.now
    const seenMs = input.now - since
    orphans.push({ name: o.name, seenMs, state: o.state })
    if (seenMs >= input.orphanGraceMs) actions.push({ type: 'stop-orphan', name: o.name })
  }
  return { actions, reports, orphans }
}
