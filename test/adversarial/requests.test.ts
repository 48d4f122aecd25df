/**
 * Issue 12, points 4, 6 and 10, against three real daemons (hypervisor = "none": placement only)
 * with real OpenPGP users and an attacking member on libp2p (test/helpers/attacker.ts):
 * - a final rejection written by a host other than the request's receiving host is ignored;
 * - a request stored with a receipt stamp that is not a time, or outside the window its signer
 *   gave, is never valid;
 * - a request backdated 50 minutes cannot take a placed VM's place (bravo has room for one VM);
 * - labels are self-declared: a member copying bravo's `zone=roof` gets VMs pinned by that label
 *   (expected, README: pin by host for security), never one pinned to bravo by host.
 * The state-level versions: requests-state.test.ts; placement units: test/unit/placement.test.ts.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { joinAttacker, addressOf, waitForFeed, type NetAttacker } from '../helpers/attacker.ts'
import { makeUser, makeUserAt, signedRequest, type User } from '../helpers/users.ts'
import { scalars } from '../../crdt/schema.ts'
import { requestId } from '../../protocol/envelope.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'

const BASE = 'hypervisor = "none"\ndisk_gib = 1000\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'
const BIG = `${BASE}vcpus = 64\nmem_mib = 65536\n`
/** Room for exactly one small VM (1 vCPU, 1 GiB); and the label users pin to. */
const ONE = `${BASE}vcpus = 1\nmem_mib = 1024\nlabels = { zone = "roof" }\n`

describe('adversarial: requests and placement (three real daemons)', () => {
  let mesh: TestMesh
  let alpha: TestDaemon, bravo: TestDaemon, charlie: TestDaemon
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined
  let dir: string
  let victim: User, evictor: User
  let meshId: string
  let ids: Record<string, string>

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-adv-req-'))
    mesh = await TestMesh.create()
    alpha = await mesh.daemon('alpha', BIG)
    bravo = await mesh.daemon('bravo', ONE)
    charlie = await mesh.daemon('charlie', BIG)
    daemons = [alpha, bravo, charlie]
    expect((await alpha.cli('init', '--name', 'adv')).code).toBe(0)
    for (const d of [bravo, charlie]) {
      expect((await alpha.cli('admit', (await d.id()).peerId, '--name', d.name)).code).toBe(0)
      const j = await d.cli('join', await addressOf(alpha))
      expect(j.code, j.stderr).toBe(0)
    }
    meshId = (await alpha.status()).mesh?.id as string
    ids = Object.fromEntries(await Promise.all(daemons.map(async d => [d.name, (await d.id()).peerId])))
    victim = await makeUser(alpha, dir, 'victim')
    // Its key is two hours old: it may sign requests dated up to an hour back.
    evictor = await makeUserAt(dir, 'evictor', new Date(Date.now() - 2 * 3600_000))
    for (const d of daemons) for (const u of [victim, evictor]) expect((await d.cli('trust', 'add', u.keyFile)).code).toBe(0)
    m = await joinAttacker(daemons)
    // The attacker offers room for anything, to anyone it is asked to run, and says it is on the roof.
    await m.append(d => {
      d.host.resources = scalars({ arch: ['x86_64'], vcpus: 1000, memMiB: 1_000_000, diskGiB: 100_000, labels: { zone: 'roof' } })
      d.host.policy = scalars({ version: 1, entries: [victim.fpr, evictor.fpr].sort().map(fingerprint => ({ fingerprint })) })
    })
    for (const d of daemons) await m.push(await addressOf(d), m.feed)
    for (const d of daemons) await waitForFeed(d, m)
  })
  afterAll(async () => {
    await m?.stop()
    await mesh.stopAll()
    await rm(dir, { recursive: true, force: true })
  })

  const vmsOf = async (d: TestDaemon): Promise<VmView[]> => await d.api.call<VmView[]>('GET', '/v1/vms?all=1')
  const requestOn = async (d: TestDaemon, id: string): Promise<RequestView | number> => await d.api.call<RequestView>('GET', `/v1/requests/${id}`).catch((e: any) => Number(e.status))

  /** Submits `env` through `d` (its receiving host) and returns the request id. */
  async function submit (d: TestDaemon, env: { payload: string, signature: string }): Promise<string> {
    const r = await d.api.call<RequestView>('POST', '/v1/requests', env)
    return r.id
  }

  it('a final rejection written by a host other than the receiving host is ignored: the VM stays pending everywhere', async () => {
    const attacker = m as NetAttacker
    // Pinned to the attacker's host: nobody else may take it, and the attacker never claims it.
    const id = await submit(bravo, await signedRequest(victim, meshId, 'vm.create', { name: 'waits', image: 'tiny', type: 'small', pin: { host: attacker.peerId } }))
    for (const d of daemons) await waitFor(async () => (await vmsOf(d)).find(v => v.id === id)?.status === 'pending', { what: `${d.name} to see the VM pending` })
    await attacker.sync(await addressOf(bravo))
    await attacker.append(d => { d.host.rejections = scalars({ [id]: { at: new Date().toISOString(), reason: 'no host can take it' } }) })
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) await waitForFeed(d, attacker)
    await new Promise(resolve => setTimeout(resolve, 1000))
    for (const d of daemons) {
      const vm = (await vmsOf(d)).find(v => v.id === id)
      expect(vm?.status, d.name).toBe('pending')
      const r = await requestOn(d, id)
      expect(typeof r === 'object' ? r.status : r, d.name).not.toBe('rejected')
    }
  })

  it('a request the attacker stores with a receipt stamp that is not a time, or outside its window, is never valid', async () => {
    const attacker = m as NetAttacker
    const envs = await Promise.all(['not-a-date', 'before-window'].map(async name => await signedRequest(evictor, meshId, 'vm.create', { name, image: 'tiny', type: 'small' })))
    const [bad, early] = envs.map(e => requestId(e.payload))
    await attacker.append(d => {
      d.requests ??= {}
      d.requests[bad] = scalars({ ...envs[0], at: 'not a date' })
      d.requests[early] = scalars({ ...envs[1], at: new Date(Date.now() - 3 * 3600_000).toISOString() })
    })
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) await waitForFeed(d, attacker)
    for (const d of daemons) {
      expect(await requestOn(d, bad), `${d.name}: a stamp that is not a time`).toBe(404)
      const r = await waitFor(async () => { const r = await requestOn(d, early); return typeof r === 'object' && r.status !== 'pending' && r })
      expect(r.status, `${d.name}: stamped before it was made`).toBe('rejected')
      expect(r.reasons.map(x => x.reason).join()).toMatch(/CREATED_IN_FUTURE/)
      expect((await vmsOf(d)).map(v => v.name)).not.toContain('not-a-date')
    }
  })

  it('a request backdated 50 minutes cannot take a placed VM\'s place, whoever stores it', async () => {
    const attacker = m as NetAttacker
    const r = await bravo.as(victim.keyring, '--json', 'vm', 'create', 'victim', '--image', 'tiny', '--type', 'small', '--on', 'bravo')
    expect(r.code, r.stderr).toBe(0)
    const victimId = (JSON.parse(r.stdout) as RequestView).id
    for (const d of daemons) await waitFor(async () => (await vmsOf(d)).find(v => v.id === victimId)?.status === 'placed', { what: `${d.name} to see the victim placed on bravo` })
    // The evictor's request names a creation time 50 minutes ago (within the hour it may live),
    // pinned to bravo; through alpha, and stored by the attacker stamped 50 minutes ago too.
    const early = Date.now() - 50 * 60_000
    const viaAlpha = await submit(alpha, await signedRequest(evictor, meshId, 'vm.create', { name: 'evict-1', image: 'tiny', type: 'small', pin: { host: ids.bravo } }, { now: early, lifetimeMs: 60 * 60_000 }))
    const env = await signedRequest(evictor, meshId, 'vm.create', { name: 'evict-2', image: 'tiny', type: 'small', pin: { host: ids.bravo } }, { now: early - 1000, lifetimeMs: 60 * 60_000 })
    const viaAttacker = requestId(env.payload)
    await attacker.append(d => { d.requests ??= {}; d.requests[viaAttacker] = scalars({ ...env, at: new Date(early).toISOString() }) })
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) {
      await waitFor(async () => { const vms = await vmsOf(d); return [viaAlpha, viaAttacker].every(id => vms.some(v => v.id === id)) }, { what: `${d.name} to see both backdated requests` })
    }
    // Time for every scheduler to act (claims settle in 150 ms; a fallback claim after 5 s).
    await new Promise(resolve => setTimeout(resolve, 6000))
    for (const d of daemons) {
      const vms = await vmsOf(d)
      const v = vms.find(x => x.id === victimId)
      expect(v?.host, `${d.name}: the victim's host`).toBe(ids.bravo)
      expect(v?.status, d.name).toBe('placed')
      for (const id of [viaAlpha, viaAttacker]) {
        const e = vms.find(x => x.id === id)
        expect(e?.host ?? null, `${d.name}: the backdated VM's host`).not.toBe(ids.bravo)
        // A valid request (its key, its window), refused for want of room on bravo only.
        const r = await requestOn(d, id)
        expect(typeof r === 'object' ? r.reasons.find(x => x.host === ids.bravo)?.reason : r, `${d.name}: why not on bravo`).toMatch(/^capacity-/)
      }
    }
  })

  it('labels are self-declared: a member that copies bravo\'s zone=roof gets VMs pinned by label; a VM pinned to a host never goes to it', async () => {
    const attacker = m as NetAttacker
    const names = Array.from({ length: 4 }, (_, i) => `roof-${i}`)
    for (const n of names) {
      const r = await alpha.as(victim.keyring, '--json', 'vm', 'create', n, '--image', 'tiny', '--type', 'small', '--on', 'zone=roof', '--no-wait')
      expect(r.code, r.stdout + r.stderr).toBe(0)
    }
    const byHost = await bravo.as(victim.keyring, '--json', 'vm', 'create', 'charlie-only', '--image', 'tiny', '--type', 'small', '--on', 'charlie', '--no-wait')
    expect(byHost.code, byHost.stdout + byHost.stderr).toBe(0)
    // The attacker claims what it ranks for, as a host that runs VMs does, and reports them placed.
    await attacker.sync(await addressOf(alpha))
    const wanted = (await vmsOf(alpha)).filter(v => v.name.startsWith('roof-') || v.name === 'charlie-only').map(v => v.id)
    const at = new Date().toISOString()
    await attacker.append(d => {
      d.host.claims = scalars(Object.fromEntries(wanted.map(id => [id, { at }])))
      d.host.vms = scalars(Object.fromEntries(wanted.map(id => [id, { status: 'placed', since: at }])))
    })
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) await waitForFeed(d, attacker)
    await new Promise(resolve => setTimeout(resolve, 1000))
    for (const d of daemons) {
      const vms = await vmsOf(d)
      const onAttacker = vms.filter(v => v.name.startsWith('roof-') && v.host === attacker.peerId)
      expect(onAttacker.length, `${d.name}: VMs pinned by label that went to the member copying the label`).toBeGreaterThan(0)
      expect(vms.find(v => v.name === 'charlie-only')?.host, `${d.name}: pinned to charlie by host`).toBe(ids.charlie)
    }
  })
})
