import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { createHash } from 'node:crypto'
import { Stores, sync } from '../helpers/stores.ts'
import { Scheduler } from '../../node/control/scheduler.ts'
import { validateBody } from '../../protocol/requests.ts'
import { rank } from '../../crdt/placement.ts'
import { scalars } from '../../crdt/schema.ts'
import type { StateStore } from '../../crdt/store.ts'
import type { Validity } from '../../crdt/world.ts'
import { silentLogger } from '../../node/log.ts'
import { waitFor } from '../helpers/wait.ts'

const ISSUER = 'A'.repeat(40)

/** Every host: capacity for a few VMs, trusting ISSUER. */
async function publishResources (s: StateStore): Promise<void> {
  await s.change('resources', d => {
    d.host!.resources = scalars({ arch: ['x86_64'], vcpus: 8, memMiB: 8192, diskGiB: 100, labels: {}, hypervisor: 'none' })
    d.host!.policy = scalars({ version: 1, entries: [{ fingerprint: ISSUER }] }) as any
  })
}

/** A vm.create stored by `via`; every host treats it as verified (the book is not what is tested). */
async function storeRequest (via: StateStore, name: string): Promise<{ id: string, validity: (id: string, v: string) => Validity | undefined }> {
  const payload = JSON.stringify({ name, nonce: Math.random() })
  const id = createHash('sha256').update(payload).digest('hex')
  const at = new Date().toISOString()
  await via.change('request', d => { d.requests ??= {}; d.requests[id] = scalars({ payload, signature: 's', at }) })
  const body = validateBody('vm.create', { name, image: 'img', type: 'small' })
  const now = Date.now()
  const request = { id, kind: 'vm.create' as const, issuer: ISSUER, created: now, expires: now + 600_000, body, via: via.self, at }
  return { id, validity: (i, v) => i === id && v === via.self ? { ok: true, request } : undefined }
}

describe('scheduler', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup() })
  afterEach(async () => { await t.teardown() })

  it('a host ranked first that is up but never claims cannot keep a VM unplaced: the next-ranked host claims it', async () => {
    const { stores } = await t.mesh(3)
    for (const s of stores) await publishResources(s)
    for (let i = 0; i < 3; i++) for (const a of stores) for (const b of stores) if (a !== b) await sync(a, b)
    const { id, validity } = await storeRequest(stores[0], 'web')
    for (const s of stores.slice(1)) await sync(s, stores[0])
    const order = rank(id, stores.map(s => s.self))
    const silent = stores.find(s => s.self === order[0]) as StateStore
    const second = stores.find(s => s.self === order[1]) as StateStore
    // Everyone is up; the first-ranked host runs no scheduler (it claims nothing, ever).
    const scheds = stores.filter(s => s !== silent).map(s => new Scheduler({ store: s, book: { get: validity } as any, up: () => true, log: silentLogger, fallbackMs: 100 }))
    try {
      for (const sch of scheds) sch.kick()
      const t0 = Date.now()
      await waitFor(async () => second.doc.hosts[second.self]?.claims?.[id] !== undefined, { timeoutMs: 5000, what: 'the second-ranked host to claim' })
      expect(Date.now() - t0).toBeGreaterThanOrEqual(100)
      // The third-ranked host did not claim as well (it waits twice as long, and sees the claim).
      const third = stores.find(s => s.self === order[2]) as StateStore
      await sync(third, second)
      await scheds[stores.filter(s => s !== silent).indexOf(third)].idle()
      expect(third.doc.hosts[third.self]?.claims?.[id]).toBeUndefined()
    } finally {
      for (const sch of scheds) sch.stop()
    }
  })
})
