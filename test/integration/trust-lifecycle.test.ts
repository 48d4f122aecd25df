/**
 * What a host operator's trust changes, and an expulsion, do to VMs that already run, across three
 * real daemons: `trust remove` (and trusting a key again with narrower limits) governs new
 * placements only; `--evict` moves away the key's VMs the new policy no longer admits, to a host
 * that admits them, and keeps, with the reason, those no other host can take; an expelled host's
 * VMs go to another host, even long after their requests expired.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { makeUser, signedRequest } from '../helpers/users.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'

const CONFIG = 'hypervisor = "none"\nvcpus = 64\nmem_mib = 65536\ndisk_gib = 1000\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

describe('trust changes and running VMs', () => {
  let mesh: TestMesh
  let a: TestDaemon, b: TestDaemon, c: TestDaemon
  let dir: string
  let keyring: string, keyFile: string, fpr: string

  const hostOf = async (d: TestDaemon, name: string): Promise<string | null> => (await d.api.call<VmView>('GET', `/v1/vms/${name}`)).hostName
  const hostsEverywhere = async (name: string): Promise<Array<string | null>> => await Promise.all([a, b, c].map(async d => await hostOf(d, name)))
  const create = async (name: string, ...extra: string[]): Promise<void> => {
    const r = await c.as(keyring, 'vm', 'create', name, '--image', 'tiny', '--type', 'small', ...extra)
    expect(r.code, r.stderr).toBe(0)
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-trustlc-'))
    mesh = await TestMesh.create()
    ;[a, b, c] = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG)
    keyring = join(dir, 'user-keyring')
    const g = await a.as(keyring, '--json', 'key', 'generate', '--name', 'user', '--email', 'user@example.org')
    expect(g.code).toBe(0)
    fpr = JSON.parse(g.stdout).fingerprint as string
    keyFile = join(dir, 'user.asc')
    await writeFile(keyFile, (await a.as(keyring, 'key', 'export', fpr)).stdout)
    // Only alpha trusts the key at first: every VM lands there.
    expect((await a.cli('trust', 'add', keyFile)).code).toBe(0)
    await create('v1')
    await create('v2')
    await create('pinned', '--on', 'alpha')
    for (const name of ['v1', 'v2', 'pinned']) {
      await waitFor(async () => (await hostsEverywhere(name)).every(h => h === 'alpha'), { what: `${name} placed on alpha, seen by every host` })
    }
  }, 120_000)
  afterAll(async () => {
    await mesh?.stopAll()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('trust remove and narrower limits stop new placements on the host, never the VMs already there', async () => {
    const removed = await a.cli('trust', 'remove', fpr)
    expect(removed.code, removed.stderr).toBe(0)
    expect(removed.stdout).toBe(`this host no longer trusts ${fpr}\n`)
    expect((await b.cli('trust', 'add', keyFile)).code).toBe(0)
    // A VM created after the removal goes to bravo: by then every host has judged with alpha's new
    // policy (its placement needs it), and has had every chance to move the old ones.
    await create('probe')
    await waitFor(async () => (await hostsEverywhere('probe')).every(h => h === 'bravo'), { what: 'probe placed on bravo' })
    for (const name of ['v1', 'v2', 'pinned']) expect(await hostsEverywhere(name)).toEqual(['alpha', 'alpha', 'alpha'])
    // Trusted again with a network it has no VM on, and one VM at most: the three stay.
    expect((await a.cli('trust', 'add', keyFile, '--networks', 'dmz', '--max-vms', '1')).code).toBe(0)
    await create('probe2')
    await waitFor(async () => (await hostsEverywhere('probe2')).every(h => h === 'bravo'), { what: 'probe2 placed on bravo (alpha is full for the key)' })
    for (const name of ['v1', 'v2', 'pinned']) expect(await hostsEverywhere(name)).toEqual(['alpha', 'alpha', 'alpha'])
  }, 60_000)

  it('bad input to trust remove --evict is refused and changes nothing', async () => {
    const unknown = await a.cli('trust', 'remove', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', '--evict')
    expect(unknown.code).not.toBe(0)
    expect(unknown.stderr).toMatch(/is not in this host's trust policy/)
    await expect(a.api.call('DELETE', `/v1/trust/${fpr}?evict=maybe`)).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/"evict" must be 1 or 0/) })
    await expect(a.api.call('POST', '/v1/trust', { fingerprint: fpr, evict: 'yes' })).rejects.toMatchObject({ status: 400 })
    expect((await a.cli('--json', 'trust', 'list')).stdout).toContain(fpr) // still trusted
    for (const name of ['v1', 'v2', 'pinned']) expect(await hostOf(a, name)).toBe('alpha')
  })

  it('trust remove --evict moves the VMs another host admits there, and keeps the one pinned here', async () => {
    const r = await a.cli('trust', 'remove', fpr, '--evict')
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/moving v1 away \(.*\): another host will start it from its image/)
    expect(r.stdout).toMatch(/moving v2 away/)
    expect(r.stdout).toMatch(/pinned stays here: no other host that is up can take it/)
    for (const name of ['v1', 'v2']) {
      await waitFor(async () => (await hostsEverywhere(name)).every(h => h === 'bravo'), { what: `${name} moved to bravo, seen by every host` })
    }
    expect(await hostsEverywhere('pinned')).toEqual(['alpha', 'alpha', 'alpha'])
    // Nothing of the key is left to evict but the pinned VM.
    expect((await a.cli('trust', 'add', keyFile)).code).toBe(0)
    const again = await a.cli('--json', 'trust', 'remove', fpr, '--evict')
    expect(JSON.parse(again.stdout).evicted).toEqual({ moved: [], kept: [{ id: expect.any(String), name: 'pinned', why: 'no other host that is up can take it' }] })
  }, 60_000)

  it('an evicted VM whose request has expired is still placed again; so is an expelled host\'s VM', async () => {
    const late = await makeUser(a, dir, 'late')
    expect((await c.cli('trust', 'add', late.keyFile)).code).toBe(0)
    const meshId = (await a.status()).mesh?.id as string
    const create = async (name: string): Promise<{ id: string, expires: number }> => {
      const env = await signedRequest(late, meshId, 'vm.create', { name, image: 'tiny', type: 'small' }, { lifetimeMs: 5000 })
      const r = await c.api.call<RequestView>('POST', '/v1/requests', env)
      return { id: r.id, expires: Date.parse(JSON.parse(env.payload).expires) }
    }
    const [gone, moved] = [await create('gone'), await create('moved')]
    for (const name of ['gone', 'moved']) {
      await waitFor(async () => (await hostsEverywhere(name)).every(h => h === 'charlie'), { what: `${name} placed on charlie` })
    }
    // Both requests expire; only then may other hosts take the VMs.
    await waitFor(async () => Date.now() > Math.max(gone.expires, moved.expires) + 200, { what: 'both requests to expire' })
    expect((await b.cli('trust', 'add', late.keyFile)).code).toBe(0)
    // Evicted by charlie's operator: bravo takes it.
    const ev = await c.cli('trust', 'remove', late.fpr, '--evict')
    expect(ev.stdout).toMatch(/moving moved away/)
    expect(ev.stdout).toMatch(/moving gone away/)
    for (const name of ['gone', 'moved']) {
      await waitFor(async () => (await hostsEverywhere(name)).every(h => h === 'bravo'), { what: `${name} placed again on bravo after its request expired` })
    }
    expect((await a.api.call<RequestView>('GET', `/v1/requests/${moved.id}`)).status).toBe('placed')
    // Back on charlie (bravo evicts, charlie trusts again), then charlie is expelled.
    expect((await c.cli('trust', 'add', late.keyFile)).code).toBe(0)
    expect((await b.cli('trust', 'remove', late.fpr, '--evict')).code).toBe(0)
    await waitFor(async () => (await hostsEverywhere('gone')).every(h => h === 'charlie'), { what: 'gone back on charlie' })
    expect((await b.cli('trust', 'add', late.keyFile)).code).toBe(0)
    const charlie = (await c.id()).peerId
    expect((await a.cli('expel', charlie, '--reason', 'test')).code).toBe(0)
    await waitFor(async () => (await Promise.all([a, b].map(async d => await hostOf(d, 'gone')))).every(h => h === 'bravo'), { what: 'the expelled host\'s VM placed on bravo' })
    expect((await b.api.call<RequestView>('GET', `/v1/requests/${gone.id}`)).status).toBe('placed')
  }, 90_000)
})
