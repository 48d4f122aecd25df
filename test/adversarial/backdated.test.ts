/**
 * Issue 12, point 1 (backdated writes) against three real daemons: an expeller the founder expels
 * keeps acting on a daemon that has not heard of its expulsion yet (charlie, cut off from the
 * others by the test hooks) — it admits a newcomer, expels bravo, re-admits a host the founder had
 * expelled, all with a `seen` that leaves its expulsion out. Charlie takes them for a while; once
 * the partition heals, none of them counts anywhere. Every order of arrival at the state level:
 * membership.test.ts.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { joinAttacker, addressOf, waitForFeed, randomPeer, event, pushEvents, type NetAttacker } from '../helpers/attacker.ts'
import { seenNow } from '../../crdt/membership.ts'

const CONFIG = 'hypervisor = "none"\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

describe('adversarial: an expelled expeller\'s later acts never count (three real daemons)', () => {
  let mesh: TestMesh
  let alpha: TestDaemon, bravo: TestDaemon, charlie: TestDaemon
  let m: NetAttacker | undefined

  beforeAll(async () => {
    mesh = await TestMesh.create()
    ;[alpha, bravo, charlie] = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG, { PICOCLOUD_TEST_HOOKS: '1' })
    m = await joinAttacker([alpha, bravo, charlie])
  })
  afterAll(async () => {
    await m?.stop()
    await mesh.stopAll()
  })

  const members = async (d: TestDaemon): Promise<string[]> => (await d.hosts()).map(h => h.peerId)

  it('admits, expels and re-admits on a daemon that has not heard of its expulsion: after the partition heals, none of it counts anywhere', async () => {
    const attacker = m as NetAttacker
    const daemons = [alpha, bravo, charlie]
    const [aId, bId, cId] = await Promise.all(daemons.map(async d => (await d.id()).peerId))
    // The founder makes the attacker an expeller, admits X and expels it again.
    await alpha.api.call('POST', '/v1/mesh/policy', { expellers: [attacker.peerId] })
    const x = await randomPeer()
    await alpha.api.call('POST', '/v1/admit', { peerId: x, name: 'x' })
    await alpha.api.call('POST', '/v1/expel', { peer: x, reason: 'the founder expels x' })
    for (const d of daemons) {
      await waitFor(async () => (await d.status()).mesh?.policy.expellers.includes(attacker.peerId) === true && !(await members(d)).includes(x),
        { timeoutMs: 20_000, what: `${d.name} to see the policy and x expelled` })
    }
    await attacker.sync(await addressOf(alpha))
    // Charlie is cut off from alpha and bravo; the founder expels the attacker.
    await charlie.api.call('POST', '/v1/test/partition', { peers: [aId, bId] })
    await alpha.api.call('POST', '/v1/test/partition', { peers: [cId] })
    await bravo.api.call('POST', '/v1/test/partition', { peers: [cId] })
    await alpha.api.call('POST', '/v1/expel', { peer: attacker.peerId, reason: 'rogue' })
    await waitFor(async () => !(await members(bravo)).includes(attacker.peerId), { what: 'bravo to see the expulsion' })
    // The attacker acts on charlie, claiming to have seen everything but its expulsion.
    const newcomer = await randomPeer()
    const seen = seenNow(attacker.store)
    await attacker.append(pushEvents(
      event({ op: 'admit', peer: newcomer, name: 'late' }, seen),
      event({ op: 'expel', peer: bId, reason: 'spite' }, seen),
      event({ op: 'admit', peer: x, name: 'back' }, seen)
    ))
    await attacker.push(await addressOf(charlie), attacker.feed)
    await waitForFeed(charlie, attacker)
    // Charlie, not knowing, takes them.
    expect(await members(charlie)).toContain(newcomer)
    expect(await members(charlie)).not.toContain(bId)

    for (const d of daemons) await d.api.call('POST', '/v1/test/heal')
    await waitFor(async () => {
      const heads = await Promise.all(daemons.map(async d => [...(await d.status()).state.heads].sort().join()))
      return new Set(heads).size === 1
    }, { timeoutMs: 30_000, what: 'the three daemons to converge after the partition' })
    for (const d of daemons) {
      const list = await members(d)
      expect(list, `${d.name}: the attacker`).not.toContain(attacker.peerId)
      expect(list, `${d.name}: admitted after the expulsion`).not.toContain(newcomer)
      expect(list, `${d.name}: re-admitted after the expulsion`).not.toContain(x)
      for (const id of [aId, bId, cId]) expect(list, `${d.name}: honest hosts`).toContain(id)
    }
  })
})
