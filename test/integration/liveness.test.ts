/**
 * Liveness from beats on direct connections: a host that freezes without closing its connections
 * (SIGSTOP, like a host that lost power) is reported unreachable and its connections dropped after
 * three beat intervals; when it comes back it is reconnected and reachable again.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'

const CONFIG = 'heartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

describe('liveness of hosts', () => {
  let mesh: TestMesh
  let a: TestDaemon, b: TestDaemon, c: TestDaemon

  beforeAll(async () => {
    mesh = await TestMesh.create()
    ;[a, b, c] = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG)
  })
  afterAll(async () => {
    c.proc?.kill('SIGCONT')
    await mesh.stopAll()
  })

  it('a frozen host is reported unreachable and dropped within three beat intervals, and comes back', async () => {
    const cId = (await c.id()).peerId
    const view = async (d: TestDaemon) => (await d.hosts()).find(h => h.peerId === cId)
    for (const d of [a, b]) await waitFor(async () => (await view(d))?.reachable === true, { timeoutMs: 20_000, what: `${d.name} to see charlie reachable` })

    c.proc?.kill('SIGSTOP')
    try {
      const t0 = Date.now()
      for (const d of [a, b]) {
        await waitFor(async () => { const h = await view(d); return h?.reachable === false && !h.connected }, { timeoutMs: 15_000, intervalMs: 100, what: `${d.name} to see frozen charlie unreachable and disconnected` })
      }
      // Three intervals of silence (1.5 s) plus up to one interval until the next check, on a busy machine.
      expect(Date.now() - t0).toBeLessThan(10_000)
      // The others still see each other.
      expect((await a.hosts()).find(h => h.name === 'bravo')?.reachable).toBe(true)
    } finally {
      c.proc?.kill('SIGCONT')
    }
    for (const d of [a, b]) {
      await waitFor(async () => { const h = await view(d); return h?.reachable === true && h.connected }, { timeoutMs: 30_000, intervalMs: 200, what: `${d.name} to see charlie back` })
    }
  })
})
