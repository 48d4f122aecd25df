/**
 * The VM reconciler over the fake hypervisor: what a host does with a VM the world places on it
 * when the data plane has not built the VM's network yet (it waits, it does not fail).
 */
import { describe, it, expect } from 'vitest'
import { VmReconciler, type DiskMoves } from '../../node/compute/reconciler.ts'
import { FakeHypervisor } from '../../node/compute/hypervisor/fake.ts'
import { optString, type HostVm } from '../../crdt/schema.ts'
import type { World, VmEntry } from '../../crdt/world.ts'
import type { StateStore } from '../../crdt/store.ts'
import type { ImageStore } from '../../node/compute/images/store.ts'
import { silentLogger } from '../../node/log.ts'

const SELF = '12D3KooWSelf'
const VM = 'c'.repeat(64)
const NET = 'd'.repeat(64)
const SHA = 'e'.repeat(64)

interface MoveSetup { from: string, request: string, fromLost?: boolean, moves: DiskMoves }

function setup (bridge: { exists: boolean }, move?: MoveSetup): { rec: VmReconciler, hv: FakeHypervisor, report: () => HostVm | undefined } {
  const vms: Record<string, HostVm> = { [VM]: { status: 'placed', since: new Date().toISOString() } }
  const store = {
    inMesh: true,
    self: SELF,
    doc: { hosts: { [SELF]: { vms } } },
    change: async (_m: string, fn: (d: any) => void) => { fn({ host: { vms } }) }
  } as unknown as StateStore
  const vm = {
    id: VM, name: 'web', owner: 'F'.repeat(40), labels: {}, desired: 'running', host: SELF, claimants: [SELF], requests: [VM],
    spec: { name: 'web', image: 'tiny', diskGiB: 1, arch: 'x86_64', nics: [{ net: 'lan' }], labels: {}, sshKeys: [], restart: 'always' },
    needs: { vcpus: 1, memMiB: 256, diskGiB: 1 }, nics: [{ net: 'lan' }], created: 0, expires: Infinity, via: SELF, vias: [SELF],
    ...(move === undefined ? {} : { move: { from: move.from, request: move.request } })
  } as unknown as VmEntry
  const world = {
    vms: new Map([[VM, vm]]),
    nets: new Map([['lan', { id: NET, name: 'lan', owner: vm.owner, spec: {}, created: 0, requests: [NET] }]]),
    images: new Map([['tiny', { id: SHA, name: 'tiny', owner: vm.owner, sha256: SHA, format: 'raw', sizeBytes: 1, arch: 'x86_64' }]]),
    requests: new Map(), revoked: new Set(), decisions: new Map(),
    hosts: move === undefined ? [] : [{ peerId: move.from, member: true, ...(move.fromLost === true ? { lost: true } : {}) }]
  } as unknown as World
  const images = { has: async () => true, info: async () => ({ sha256: SHA, size: 1, format: 'raw' }), path: () => '/nonexistent/base' } as unknown as ImageStore
  const hv = new FakeHypervisor()
  const rec = new VmReconciler({
    store, driver: hv, images, world: () => world, log: silentLogger, fetch: async () => {}, intervalMs: 3_600_000,
    bridgeExists: async () => bridge.exists,
    ...(move === undefined ? {} : { moves: move.moves })
  })
  return { rec, hv, report: () => vms[VM] }
}

describe('VM reconciler', () => {
  it('a VM whose network is not built here yet waits as pending (it does not fail), and starts once the bridge exists', async () => {
    const bridge = { exists: false }
    const { rec, hv, report } = setup(bridge)
    rec.kick(true)
    await rec.idle()
    expect(hv.calls.filter(c => c.op === 'start')).toEqual([])
    expect(optString(report()?.status)).toBe('pending')
    expect(optString(report()?.reason)).toMatch(/waiting for network lan to be built on this host/)
    bridge.exists = true
    rec.kick(true)
    await rec.idle()
    expect(hv.calls.filter(c => c.op === 'start')).toHaveLength(1)
    expect(optString(report()?.status)).toBe('running')
    rec.stop()
  })

  /** A fake hand-over: what arrived, what was adopted and how. */
  function fakeMoves (): DiskMoves & { arrived?: 'disk' | 'none', adoptedAs?: 'disk' | 'image' } {
    const m: DiskMoves & { arrived?: 'disk' | 'none', adoptedAs?: 'disk' | 'image' } = {
      send: async () => ({ bytes: 0 }),
      received: async () => m.arrived,
      adopted: async () => m.adoptedAs !== undefined,
      adopt: async (_n, _r, _s, fromImage) => { m.adoptedAs = fromImage === true || m.arrived !== 'disk' ? 'image' : 'disk' }
    }
    return m
  }
  const FROM = '12D3KooWFrom'
  const REQ = 'f'.repeat(64)

  it('a VM moved here waits for its disk while the host it left may still hand it over; then starts from that disk', async () => {
    const moves = fakeMoves()
    const { rec, hv, report } = setup({ exists: true }, { from: FROM, request: REQ, moves })
    rec.kick(true)
    await rec.idle()
    expect(hv.calls.filter(c => c.op === 'start')).toEqual([])
    expect(optString(report()?.status)).toBe('placed')
    expect(optString(report()?.reason)).toMatch(/moving: waiting for its disk from/)
    moves.arrived = 'disk'
    rec.kick(true)
    await rec.idle()
    expect(moves.adoptedAs).toBe('disk')
    expect(hv.calls.filter(c => c.op === 'start')).toHaveLength(1)
    expect(optString(report()?.status)).toBe('running')
    rec.stop()
  })

  it('a VM moved here from a host the mesh lost starts from its image (no disk will come)', async () => {
    const moves = fakeMoves()
    const { rec, hv, report } = setup({ exists: true }, { from: FROM, request: REQ, fromLost: true, moves })
    rec.kick(true)
    await rec.idle()
    expect(moves.adoptedAs).toBe('image')
    expect(hv.calls.filter(c => c.op === 'start')).toHaveLength(1)
    expect(optString(report()?.status)).toBe('running')
    rec.stop()
  })
})
