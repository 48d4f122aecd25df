/**
 * Issue 12, point 7: equivocation must not split the mesh. Against three real daemons, the
 * attacker (a member on libp2p, test/helpers/attacker.ts) signs two different changes with one
 * sequence number and hands fork A (and a change built on it) to alpha, fork B to bravo, while
 * every honest host keeps writing. All three end with one frontier and the same evidence, show the
 * attacker as equivocated (out of the mesh), hold every honest change made meanwhile, penalise
 * the attacker and no honest host, and refuse the attacker's connections.
 *
 * At the state level, with the evidence reaching hosts in every way: test/unit/store.test.ts and
 * the fuzzer (fuzz.test.ts, forks and twins).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { multiaddr } from '@multiformats/multiaddr'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { joinAttacker, addressOf, randomPeer, forge, type NetAttacker } from '../helpers/attacker.ts'
import { scalars } from '../../crdt/schema.ts'
import { SYNC_PROTOCOL } from '../../crdt/sync.ts'
import type { StatusView } from '../../protocol/api.ts'

const CONFIG = 'hypervisor = "none"\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

describe('adversarial: equivocation over real daemons', () => {
  let mesh: TestMesh
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined

  beforeAll(async () => {
    mesh = await TestMesh.create()
    daemons = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG)
    m = await joinAttacker(daemons)
  })
  afterAll(async () => {
    await m?.stop()
    await mesh.stopAll()
  })

  it('fork A to alpha, fork B to bravo: all converge on one frontier, the attacker is out as equivocated everywhere, every honest change made meanwhile is everywhere, and no honest host is penalised', async () => {
    const attacker = m as NetAttacker
    const [alpha, bravo, charlie] = daemons
    const ids = await Promise.all(daemons.map(async d => (await d.id()).peerId))
    const base = attacker.feed
    const forkA = attacker.forge(d => { d.host.name = scalars('fork-a') })
    const forkA2 = forge(attacker.key, [...base, forkA], d => { d.host.name = scalars('fork-a2') })
    const forkB = attacker.forge(d => { d.host.name = scalars('fork-b') })
    expect((await attacker.push(await addressOf(alpha), [forkA, forkA2])).error).toBeUndefined()
    expect((await attacker.push(await addressOf(bravo), [forkB])).error).toBeUndefined()
    // Honest hosts keep writing while the forks spread: each admits a newcomer.
    const newcomers = await Promise.all(daemons.map(async () => await randomPeer()))
    for (const [i, d] of daemons.entries()) expect((await d.cli('admit', newcomers[i], '--name', `new-${d.name}`)).code).toBe(0)

    const statuses = await waitFor(async () => {
      const ss = await Promise.all(daemons.map(async d => await d.status()))
      const heads = new Set(ss.map(s => [...s.state.heads].sort().join()))
      return heads.size === 1 && ss.every(s => s.state.equivocations.some(e => e.peerId === attacker.peerId)) && ss
    }, { timeoutMs: 30_000, what: 'the three daemons to converge with evidence of the equivocation' })
    for (const [i, s] of statuses.entries()) {
      const d = daemons[i]
      expect(s.state.equivocations, d.name).toEqual([{ peerId: attacker.peerId, seq: base.length + 1 }])
      const hosts = await d.hosts()
      expect(hosts.map(h => h.peerId), `${d.name}: the attacker is out`).not.toContain(attacker.peerId)
      for (const n of newcomers) expect(hosts.map(h => h.peerId), `${d.name}: honest admissions made meanwhile`).toContain(n)
      for (const id of ids) expect(hosts.map(h => h.peerId), `${d.name}: honest hosts stay`).toContain(id)
      expect(s.mesh?.members, d.name).toBe(3 + newcomers.length)
    }
    // Penalties: the attacker (by everyone that holds the evidence), never an honest host.
    await waitFor(async () => (await Promise.all(daemons.map(async d => await d.status()))).every(s => s.penalties.some(p => p.peerId === attacker.peerId)),
      { timeoutMs: 10_000, what: 'every daemon to penalise the attacker' })
    for (const d of daemons) {
      const s: StatusView = await d.status()
      expect(s.penalties.map(p => p.peerId), d.name).toEqual([attacker.peerId])
      expect(s.penalties[0].offences.map(o => o.reason).join('\n')).toMatch(/equivocation/)
    }
    // And it is refused: no connection, no sync.
    for (const d of [alpha, bravo, charlie]) {
      await waitFor(async () => !(await d.status()).peers.some(p => p.peerId === attacker.peerId), { timeoutMs: 10_000, what: `${d.name} to drop the attacker` })
      await expect(attacker.node.dialProtocol(multiaddr(await addressOf(d)), SYNC_PROTOCOL, { signal: AbortSignal.timeout(5000) })).rejects.toThrow()
    }
  })
})
