/**
 * `vm move` in the replicated state (crdt/world.ts): the owner's move re-pins the VM, unseats the
 * host it leaves and names that host as the only source of its disk; only that host can say it
 * handed the disk over. Attacks: a move by someone else, a member claiming a hand-over it never
 * made, malformed hand-over marks, a move "to" the host it leaves.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import type { StateStore } from '../../crdt/store.ts'
import { deriveWorld } from '../../crdt/world.ts'
import { scalars } from '../../crdt/schema.ts'
import { validateBody } from '../../protocol/requests.ts'
import { Stores, sync, FAST_TMP } from '../helpers/stores.ts'
import { fakeRequest, storeRequest, judgeRequests, issuer, trusting, RESOURCES } from '../helpers/fake-requests.ts'

async function syncAll (stores: StateStore[]): Promise<void> {
  for (const a of stores) for (const b of stores) if (a !== b) await sync(a, b)
}

async function worldOf (s: StateStore): Promise<ReturnType<typeof deriveWorld>> {
  return deriveWorld(s.doc, await judgeRequests(s.doc))
}

const claim = (id: string) => (d: any): void => {
  d.host.claims ??= {}
  d.host.claims[id] = scalars({ at: new Date().toISOString() })
}
const report = (id: string, fields: Record<string, unknown>) => (d: any): void => {
  d.host.vms ??= {}
  d.host.vms[id] = scalars({ status: 'stopped', since: new Date().toISOString(), ...fields })
}

describe('adversarial: vm move in the replicated state', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup(FAST_TMP) })
  afterEach(async () => { await t.teardown() })

  /** Hosts H1 and H2 trust the owner; M is a member; the VM runs on H1. */
  async function placed (): Promise<{ h1: StateStore, h2: StateStore, m: StateStore, owner: string, vm: string, all: StateStore[] }> {
    const { stores: [f, h1, h2, m] } = await t.mesh(4)
    const owner = issuer(7)
    for (const s of [h1, h2]) await s.change('resources', (d: any) => { d.host.resources = scalars(RESOURCES); d.host.policy = scalars(trusting(owner)) })
    const r = fakeRequest(f.meshId as string, owner, 'vm.create', { name: 'web', image: 'tiny', type: 'small', pin: { host: h1.self } })
    await h1.change('store', storeRequest(r))
    await h1.change('claim', claim(r.id))
    await h1.change('report', report(r.id, { status: 'running' }))
    const all = [f, h1, h2, m]
    await syncAll(all)
    expect((await worldOf(h2)).vms.get(r.id)?.host).toBe(h1.self)
    return { h1, h2, m, owner, vm: r.id, all }
  }

  it('the owner\'s move re-pins the VM and unseats the host it leaves; the new host takes it; the move names its disk\'s source', async () => {
    const { h1, h2, owner, vm, all } = await placed()
    const mv = fakeRequest(h1.meshId as string, owner, 'vm.move', { vm, pin: { host: h2.self }, from: h1.self })
    await h2.change('store', storeRequest(mv))
    await h2.change('claim', claim(vm))
    await syncAll(all)
    for (const s of all) {
      const w = await worldOf(s)
      const v = w.vms.get(vm)
      expect(w.requests.get(mv.id)?.status).toBe('accepted')
      expect(v?.spec.pin).toEqual({ host: h2.self })
      expect(v?.host).toBe(h2.self)
      expect(v?.move).toEqual({ from: h1.self, request: mv.id })
    }
    // The host it left says it handed the disk over: the move is settled for everyone.
    await h1.change('handed over', report(vm, { reason: 'moved', handedOver: mv.id }))
    await syncAll(all)
    for (const s of all) expect((await worldOf(s)).vms.get(vm)?.move?.settled).toBe(true)
  })

  it('a move by someone other than the owner is rejected and changes nothing', async () => {
    const { h1, h2, vm, all } = await placed()
    const mv = fakeRequest(h1.meshId as string, issuer(9), 'vm.move', { vm, pin: { host: h2.self }, from: h1.self })
    await h2.change('store', storeRequest(mv))
    await syncAll(all)
    const w = await worldOf(h2)
    expect(w.requests.get(mv.id)?.status).toBe('rejected')
    expect(w.vms.get(vm)?.host).toBe(h1.self)
    expect(w.vms.get(vm)?.move).toBeUndefined()
  })

  it('only the host the VM left can settle its move: a member\'s false hand-over mark, and malformed marks, count for nothing', async () => {
    const { h1, h2, m, owner, vm, all } = await placed()
    const mv = fakeRequest(h1.meshId as string, owner, 'vm.move', { vm, pin: { host: h2.self }, from: h1.self })
    await h2.change('store', storeRequest(mv))
    await syncAll(all)
    await m.change('false mark', report(vm, { handedOver: mv.id }))
    await h1.change('malformed mark', report(vm, { handedOver: 'not a request id' }))
    await syncAll(all)
    for (const s of [h1, h2]) {
      const w = await worldOf(s)
      expect(w.vms.get(vm)?.move?.settled).toBeUndefined()
      expect(s.state().problems.get(h1.self)?.join('\n') ?? '').toMatch(/handedOver/)
    }
  })

  it('a move body is checked where it enters: no source, a bad peer id, moving to the host it leaves', () => {
    const peer = '12D3KooW' + 'A'.repeat(44)
    expect(() => validateBody('vm.move', { vm: 'web', pin: { host: peer } })).toThrow(/from/)
    expect(() => validateBody('vm.move', { vm: 'web', from: 'nope' })).toThrow(/body.from/)
    expect(() => validateBody('vm.move', { vm: 'web', pin: { host: peer }, from: peer })).toThrow(/host it leaves/)
    expect(() => validateBody('vm.move', { vm: 'web', pin: {}, from: peer })).toThrow(/"host", "labels"/)
    expect(validateBody('vm.move', { vm: 'web', pin: { labels: { zone: 'b' } }, from: peer })).toEqual({ vm: 'web', pin: { labels: { zone: 'b' } }, from: peer })
  })
})
