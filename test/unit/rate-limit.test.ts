import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { AuthorRateLimit } from '../../node/mesh/rate-limit.ts'
import { Stores } from '../helpers/stores.ts'
import { publishHostRecord } from '../../crdt/membership.ts'

describe('per-author gossip rate limit', () => {
  it('lets a burst through, then only the sustained rate, per author', () => {
    let now = 0
    const r = new AuthorRateLimit({ bytesPerSecond: 1000, burstBytes: 5000, now: () => now })
    expect(r.take('m', 5000)).toBe(true)
    expect(r.take('m', 1)).toBe(false)
    // Another author is not touched by m's flood.
    expect(r.take('h', 4000)).toBe(true)
    now += 2000
    expect(r.take('m', 2000)).toBe(true)
    expect(r.take('m', 100)).toBe(false)
    now += 1_000_000
    expect(r.take('m', 5000)).toBe(true)
  })

  const t = new Stores()
  beforeEach(async () => { await t.setup() })
  afterEach(async () => { await t.teardown() })

  it('a flooding member\'s changes beyond its budget are dropped by the store and listed as throttled, and come in later', async () => {
    const { stores: [a, m] } = await t.mesh(2)
    for (let i = 0; i < 10; i++) await publishHostRecord(m, { name: `m${i}`, addresses: [], wgPublicKey: '', version: 't' })
    const feed = m.feeds.get(m.self)!
    const changes = feed.changesAfter(a.feeds.get(m.self)?.seq ?? 0)
    let budget = changes[0].change.length * 3 + 1
    const take = (_author: string, bytes: number): boolean => { if (budget < bytes) return false; budget -= bytes; return true }
    const r = await a.receive(changes, m.self, take)
    expect(r.applied.length).toBe(3)
    expect(r.throttled?.every(x => x === m.self)).toBe(true)
    expect(r.rejected).toEqual([])
    // Nothing was blamed on the relayer, and the rest arrives once there is budget again.
    budget = Infinity
    const r2 = await a.receive(changes, m.self, take)
    expect(a.feeds.get(m.self)?.seq).toBe(feed.seq)
    expect(r2.applied.length + r.applied.length).toBe(changes.length)
  })
})
