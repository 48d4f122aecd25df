/**
 * Issue 12, point 4 (and the request part of point 1), at the level of the replicated state: who
 * may finally reject a request, and which stored requests can ever be valid. Requests here carry
 * a stand-in signature judged by the real envelope checks (test/helpers/fake-requests.ts); the
 * same over real daemons with OpenPGP keys: requests.test.ts.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import type { StateStore } from '../../crdt/store.ts'
import { deriveWorld } from '../../crdt/world.ts'
import { scalars } from '../../crdt/schema.ts'
import { Stores, sync, FAST_TMP } from '../helpers/stores.ts'
import { fakeRequest, storeRequest, judgeRequests, issuer, trusting, RESOURCES } from '../helpers/fake-requests.ts'

async function syncAll (stores: StateStore[]): Promise<void> {
  for (const a of stores) for (const b of stores) if (a !== b) await sync(a, b)
}

async function worldOf (s: StateStore): Promise<ReturnType<typeof deriveWorld>> {
  return deriveWorld(s.doc, await judgeRequests(s.doc))
}

const rejection = (id: string, at = new Date()) => (d: any): void => {
  d.host.rejections ??= {}
  d.host.rejections[id] = scalars({ at: at.toISOString(), reason: 'no host can take it' })
}

describe('adversarial: requests in the replicated state', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup(FAST_TMP) })
  afterEach(async () => { await t.teardown() })

  /** Founder F, honest H1 and H2 (able to run the user's VMs), member M. */
  async function mesh (): Promise<{ f: StateStore, h1: StateStore, h2: StateStore, m: StateStore, user: string }> {
    const { stores: [f, h1, h2, m] } = await t.mesh(4)
    const user = issuer(7)
    for (const s of [f, h1, h2]) await s.change('resources', (d: any) => { d.host.resources = scalars(RESOURCES); d.host.policy = scalars(trusting(user)) })
    await syncAll([f, h1, h2, m])
    return { f, h1, h2, m, user }
  }

  it('a final rejection written by a host other than the request\'s receiving host is ignored; the receiving host\'s counts', async () => {
    const { f, h1, h2, m, user } = await mesh()
    const r = fakeRequest(f.meshId as string, user, 'vm.create', { name: 'web', image: 'tiny', type: 'small' })
    const r2 = fakeRequest(f.meshId as string, user, 'vm.create', { name: 'web2', image: 'tiny', type: 'small' })
    await h1.change('store', storeRequest(r))
    await h1.change('store', storeRequest(r2))
    await syncAll([f, h1, h2, m])
    // M and H2 each write a final rejection of r; only H1 (which received them) of r2.
    await m.change('reject', rejection(r.id))
    await h2.change('reject', rejection(r.id))
    await h1.change('reject', rejection(r2.id))
    await syncAll([f, h1, h2, m])
    for (const s of [f, h1, h2]) {
      const w = await worldOf(s)
      expect(w.vms.get(r.id)?.rejected).toBeUndefined()
      expect(w.requests.get(r.id)?.status).toBe('pending')
      expect(w.requests.get(r2.id)?.status).toBe('rejected')
    }
  })

  it('a stored request whose receipt stamp is not a time is never valid, and the problem is held against the host that stored it', async () => {
    const { f, h1, h2, m, user } = await mesh()
    const bad = ['not a date', '', '2026-13-45T99:99:99Z', 'NaN', '+275760-09-13T00:00:00.000Z']
    const rs = bad.map((_, i) => fakeRequest(f.meshId as string, user, 'vm.create', { name: `web${i}`, image: 'tiny', type: 'small' }))
    await m.change('odd stamps', d => { rs.forEach((r, i) => storeRequest(r, bad[i])(d)) })
    await m.change('no stamp', (d: any) => { d.requests.extra = scalars({ payload: rs[0].payload, signature: rs[0].signature }) })
    await syncAll([f, h1, h2, m])
    for (const s of [f, h1, h2]) {
      for (const r of rs) expect(s.doc.requests.get(r.id)).toBeUndefined()
      const w = await worldOf(s)
      expect(w.vms.size).toBe(0)
      expect(s.state().problems.get(m.self)?.join('\n')).toMatch(/requests\..*at/)
    }
  })
})
