import { describe, it, expect } from 'vitest'
import { planVms, type VmTarget, type PlanInput } from '../../node/compute/vm-plan.ts'
import type { VmObserved, VmSpec } from '../../node/compute/hypervisor/types.ts'

const id = 'ab'.repeat(32)
const name = 'pc-abababab'
const spec: VmSpec = { id, name, vcpus: 1, memMiB: 256, arch: 'x86_64', disk: { baseImage: '/img', format: 'raw' }, nics: [], restart: 'always' }
const target = (t: Partial<VmTarget> = {}): VmTarget => ({ id, name, want: 'running', restart: 'always', spec, image: { sha256: 'f'.repeat(64), present: true }, ...t })
const seen = (state: VmObserved['state'], extra: Partial<VmObserved> = {}): VmObserved => ({ name, id, state, ...extra })
const plan = (p: Partial<PlanInput>) => planVms({ targets: [], observed: [], now: 1000, orphanSince: new Map(), orphanGraceMs: 60_000, lostHere: new Set(), ...p })

describe('VM plan (observe → diff → smallest change)', () => {
  it('starts a VM that should run and does not exist; leaves a running one alone', () => {
    expect(plan({ targets: [target()] }).actions).toEqual([{ type: 'start', id, spec }])
    const running = plan({ targets: [target()], observed: [seen('running')] })
    expect(running.actions).toEqual([])
    expect(running.reports.get(id)).toEqual({ status: 'running' })
  })

  it('fetches a missing image first and reports fetching-image; a fetch error is a failure with its reason', () => {
    const p = plan({ targets: [target({ spec: undefined, image: { sha256: 'f'.repeat(64), present: false } })] })
    expect(p.actions).toEqual([{ type: 'fetch', id, sha256: 'f'.repeat(64) }])
    expect(p.reports.get(id)?.status).toBe('fetching-image')
    const e = plan({ targets: [target({ spec: undefined, image: { sha256: 'f'.repeat(64), present: false, error: 'peer sent bad bytes' } })] })
    expect(e.actions).toEqual([])
    expect(e.reports.get(id)).toEqual({ status: 'failed', reason: 'peer sent bad bytes' })
  })

  it('a crashed VM is restarted by policy and reported with the crash reason; `never` leaves it failed', () => {
    const p = plan({ targets: [target()], observed: [seen('crashed', { reason: 'qemu: oom' })] })
    expect(p.actions).toEqual([{ type: 'start', id, spec }])
    expect(p.reports.get(id)?.reason).toMatch(/qemu: oom/)
    // Within the crash backoff the VM is reported failed, with QEMU's reason, and left alone.
    const waiting = plan({ targets: [target()], observed: [seen('crashed', { reason: 'qemu: oom' })], restartNotBefore: new Map([[name, 5000]]) })
    expect(waiting.actions).toEqual([])
    expect(waiting.reports.get(id)).toEqual({ status: 'failed', reason: 'qemu: oom' })
    const never = plan({ targets: [target({ restart: 'never' })], observed: [seen('crashed', { reason: 'qemu: oom' })] })
    expect(never.actions).toEqual([])
    expect(never.reports.get(id)).toEqual({ status: 'failed', reason: 'qemu: oom' })
  })

  it('stops what should be stopped, destroys what was destroyed, and does nothing twice', () => {
    expect(plan({ targets: [target({ want: 'stopped' })], observed: [seen('running')] }).actions).toEqual([{ type: 'stop', id, name, force: false }])
    const forced = plan({ targets: [target({ want: 'stopped', force: true })], observed: [seen('running')] })
    expect(forced.actions).toEqual([{ type: 'stop', id, name, force: true }])
    expect(forced.reports.get(id)?.status).toBe('stopping')
    expect(plan({ targets: [target({ want: 'stopped' })], observed: [seen('stopped')] }).actions).toEqual([])
    expect(plan({ targets: [target({ want: 'destroyed' })], observed: [seen('stopped')] }).actions).toEqual([{ type: 'destroy', id, name }])
    const gone = plan({ targets: [target({ want: 'destroyed' })] })
    expect(gone.actions).toEqual([])
    expect(gone.reports.get(id)?.status).toBe('destroyed')
  })

  it('a local VM nobody placed here is stopped only after the grace period; one that lost to a better host at once', () => {
    const early = plan({ observed: [seen('running')], orphanSince: new Map([[name, 900]]) })
    expect(early.actions).toEqual([])
    expect(early.orphans).toEqual([{ name, seenMs: 100, state: 'running' }])
    expect(plan({ observed: [seen('running')], orphanSince: new Map([[name, 1000 - 60_000]]) }).actions).toEqual([{ type: 'stop-orphan', name }])
    expect(plan({ observed: [seen('running')], lostHere: new Set([name]) }).actions).toEqual([{ type: 'stop-orphan', name }])
  })
})
