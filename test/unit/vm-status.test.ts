import { describe, it, expect } from 'vitest'
import { vmStatus, type Liveness } from '../../node/control/views.ts'
import type { VmEntry } from '../../crdt/world.ts'

const HOST = '12D3KooWA1xCqW8vZ5PGnVpHGSqL3nGFXhPDx1yGiS1kJ7cV2mNb'
const NOW = Date.parse('2026-12-07T12:00:00.000Z')
const vm = (over: Partial<VmEntry> = {}): VmEntry => ({
  id: 'ab'.repeat(32), name: 'web', owner: 'F'.repeat(40), labels: {}, spec: {} as VmEntry['spec'], needs: { vcpus: 1, memMiB: 256, diskGiB: 1 },
  nics: [], desired: 'running', created: NOW, expires: NOW + 600_000, via: HOST, vias: [HOST], requests: [], host: HOST, claimants: [HOST],
  report: { status: 'running', since: new Date(NOW).toISOString() }, ...over
})
const up: Liveness = { isUp: () => true, lastSeen: () => NOW }

describe('a VM\'s status as people see it', () => {
  it('is its host\'s report while the host is up', () => {
    expect(vmStatus(vm(), up, NOW)).toEqual({ status: 'running' })
    expect(vmStatus(vm({ report: { status: 'failed', since: '', reason: 'qemu: oom' } }), up, NOW)).toEqual({ status: 'failed', reason: 'qemu: oom' })
  })
  it('is stopping from the moment a stop is asked until the host reports it stopped', () => {
    expect(vmStatus(vm({ desired: 'stopped' }), up, NOW)).toEqual({ status: 'stopping', reason: 'the guest was asked to power off' })
    expect(vmStatus(vm({ desired: 'stopped', forceStop: true }), up, NOW).reason).toMatch(/--force/)
    expect(vmStatus(vm({ desired: 'stopped', report: { status: 'stopped', since: '' } }), up, NOW)).toEqual({ status: 'stopped' })
  })
  it('is host-down, with how long and the last report, when its host cannot be reached from here', () => {
    const down: Liveness = { isUp: () => false, lastSeen: () => NOW - 42_000 }
    expect(vmStatus(vm(), down, NOW)).toEqual({ status: 'host-down', reason: 'its host has been unreachable for 42 s; its last report: running' })
    expect(vmStatus(vm(), { isUp: () => false, lastSeen: () => undefined }, NOW).reason).toMatch(/has not been reachable from here/)
    // Without liveness (metrics of this host's own view), the report as it is.
    expect(vmStatus(vm()).status).toBe('running')
  })
  it('says who can start a VM its host\'s operator stopped', () => {
    const held = vm({ report: { status: 'stopped', since: '', reason: 'stopped by the host operator: disk swap', operatorStop: { at: '', reason: 'disk swap' } } })
    expect(vmStatus(held, up, NOW).reason).toMatch(/disk swap; it stays stopped until that host's operator runs `picocloud vm start --operator web`/)
  })
})
