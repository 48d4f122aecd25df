/**
 * Issue 12, point 4: "Only the receiving host can finally reject a request; another host's word
 * about someone else's request is ignored" (docs/byzantine.md). A member that copies a request
 * another host received (payload and signature, as every host can read them) into its own feed,
 * stamped earlier than the receiving host's copy (anywhere in the window the signer gave), becomes
 * the request's "receiving host": its copy is judged first (copies are ordered by stamp), and its
 * final rejection then counts. Here at the state level (stand-in signatures judged by the real
 * envelope checks) and against three real daemons with a real OpenPGP user.
 * Found by the fuzzer (fuzz-blame.test.ts, replayed requests).
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest'
import type { StateStore } from '../../crdt/store.ts'
import { deriveWorld } from '../../crdt/world.ts'
import { scalars } from '../../crdt/schema.ts'
import { Stores, sync, FAST_TMP } from '../helpers/stores.ts'
import { fakeRequest, storeRequest, judgeRequests, issuer, trusting, RESOURCES } from '../helpers/fake-requests.ts'
import type { TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { addressOf, waitForFeed, type NetAttacker } from '../helpers/attacker.ts'
import { signedRequest, type User } from '../helpers/users.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'
import { attackedMesh, type AttackedMesh } from '../helpers/attacked-mesh.ts'

async function syncAll (stores: StateStore[]): Promise<void> {
  for (const a of stores) for (const b of stores) if (a !== b) await sync(a, b)
}

const rejection = (id: string) => (d: any): void => {
  d.host.rejections ??= {}
  d.host.rejections[id] = scalars({ at: new Date().toISOString(), reason: 'no host can take it' })
}

describe('adversarial: a member replaying another host\'s stored request (state level)', () => {
  const t = new Stores()
  beforeEach(async () => { await t.setup(FAST_TMP) })
  afterEach(async () => { await t.teardown() })

  it('a member that copies another host\'s stored request into its own feed with an earlier stamp does not become its receiving host: its final rejection is still ignored', async () => {
    const { stores: [f, h1, h2, m] } = await t.mesh(4)
    const user = issuer(7)
    for (const s of [f, h1, h2]) await s.change('resources', (d: any) => { d.host.resources = scalars(RESOURCES); d.host.policy = scalars(trusting(user)) })
    await syncAll([f, h1, h2, m])
    const r = fakeRequest(f.meshId as string, user, 'vm.create', { name: 'web', image: 'tiny', type: 'small' })
    await h1.change('store', storeRequest(r))
    await syncAll([f, h1, h2, m])
    // M has the request from H1's feed (payload and signature as the user made them); it stores a
    // copy stamped a minute before H1's, then writes the final rejection the receiving host may.
    const stamp = new Date(Date.parse(h1.doc.requests.get(r.id)?.[0].at as string) - 60_000)
    await m.change('replay', (d: any) => { storeRequest(r, stamp)(d); rejection(r.id)(d) })
    await syncAll([f, h1, h2, m])
    for (const s of [f, h1, h2]) {
      const w = deriveWorld(s.doc, await judgeRequests(s.doc))
      expect(w.vms.get(r.id)?.rejected, 'rejected by a host the user never handed it to').toBeUndefined()
      expect(w.requests.get(r.id)?.status).toBe('pending')
      // Which of the copies' hosts the user handed it to is not known (stamps are the hosts' word):
      // the host that did is among those that received it, and the replay gains no veto.
      expect(w.requests.get(r.id)?.vias, 'the host the user handed it to').toContain(h1.self)
    }
  })
})

describe('adversarial: a member replaying another host\'s stored request (three real daemons)', () => {
  let t: AttackedMesh | undefined
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined
  let dir: string
  let user: User

  beforeAll(async () => {
    t = await attackedMesh(['alpha', 'bravo', 'charlie'], 'hypervisor = "none"\nvcpus = 64\nmem_mib = 65536\ndisk_gib = 1000\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n', { user: 'ada' })
    ;({ daemons, m, dir, user } = t)
  })
  afterAll(async () => { await t?.stop() })

  it('a VM waiting for its host, received by bravo: the attacker copies the request stamped earlier and rejects it; the VM stays pending', async () => {
    const attacker = m as NetAttacker
    const [, bravo] = daemons
    const meshId = (await bravo.status()).mesh?.id as string
    // Pinned to charlie, which is down: the VM waits (it is nobody's to reject but bravo's).
    const charlie = daemons[2]
    const charlieId = (await charlie.id()).peerId
    await charlie.kill()
    const env = await signedRequest(user, meshId, 'vm.create', { name: 'waits', image: 'tiny', type: 'small', pin: { host: charlieId } })
    const id = (await bravo.api.call<RequestView>('POST', '/v1/requests', env)).id
    const live = daemons.slice(0, 2)
    for (const d of live) await waitFor(async () => (await d.api.call<VmView[]>('GET', '/v1/vms')).find(v => v.id === id)?.status === 'pending', { what: `${d.name} to see the VM pending` })
    // What the attacker read in bravo's feed, stored in its own, stamped when the user signed it.
    const created = JSON.parse(env.payload).created as string
    await attacker.append(d => {
      d.requests ??= {}
      d.requests[id] = scalars({ ...env, at: created })
      rejection(id)(d)
    })
    for (const d of live) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of live) await waitForFeed(d, attacker)
    await new Promise(resolve => setTimeout(resolve, 1000))
    for (const d of live) {
      const r = await d.api.call<RequestView>('GET', `/v1/requests/${id}`)
      expect(r.status, `${d.name}: rejected by a host the user never gave it to`).toBe('pending')
      expect(r.vias, d.name).toContain((await bravo.id()).peerId)
    }
  })
})
