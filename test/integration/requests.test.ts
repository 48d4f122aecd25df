/**
 * Signed requests across three real daemons: trust decides where VMs run, every bad envelope is
 * refused with its reason, GnuPG-made keys and signatures work, quotas hold, 20 concurrent VMs are
 * placed exactly once, owners' rights hold, and a partition heals into one placement per VM.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { buildPayload } from '../../protocol/envelope.ts'
import { loadPrivateKey, signDetached } from '../../keys/keyring.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'

// Plenty of room on every host, fast heartbeats so that a partition is noticed quickly.
const CONFIG = 'hypervisor = "none"\nvcpus = 64\nmem_mib = 65536\ndisk_gib = 1000\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

interface User { keyring: string, fpr: string, keyFile: string }

describe('signed requests, trust and placement', () => {
  let mesh: TestMesh
  let a: TestDaemon, b: TestDaemon, c: TestDaemon
  let dir: string
  let u1: User, u2: User, u3: User

  async function user (name: string): Promise<User> {
    const keyring = join(dir, `${name}-keyring`)
    const g = await a.as(keyring, '--json', 'key', 'generate', '--name', name, '--email', `${name}@example.org`)
    expect(g.code).toBe(0)
    const fpr = JSON.parse(g.stdout).fingerprint as string
    const keyFile = join(dir, `${name}.asc`)
    await writeFile(keyFile, (await a.as(keyring, 'key', 'export', fpr)).stdout)
    return { keyring, fpr, keyFile }
  }

  const vms = async (d: TestDaemon): Promise<VmView[]> => await d.api.call<VmView[]>('GET', '/v1/vms')
  const req = async (d: TestDaemon, id: string): Promise<RequestView> => await d.api.call<RequestView>('GET', `/v1/requests/${id}`)

  async function envelope (u: User, kind: string, body: unknown, opts: { mesh?: string, now?: number, lifetimeMs?: number } = {}): Promise<{ payload: string, signature: string }> {
    const status = await a.status()
    const payload = buildPayload(kind as any, body, { mesh: opts.mesh ?? status.mesh?.id as string, issuer: u.fpr, now: opts.now ?? Date.now(), lifetimeMs: opts.lifetimeMs })
    const key = await loadPrivateKey(u.keyring, u.fpr)
    return { payload, signature: await signDetached(key, new TextEncoder().encode(payload)) }
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-req-'))
    mesh = await TestMesh.create()
    ;[a, b, c] = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG, { PICOCLOUD_TEST_HOOKS: '1' })
    u1 = await user('one')
    u2 = await user('two')
    u3 = await user('three')
  })
  afterAll(async () => {
    await mesh.stopAll()
    await rm(dir, { recursive: true, force: true })
  })

  it('a key trusted nowhere is rejected on every host with reasons; trusted only on B, it is placed on B', async () => {
    const r = await c.as(u1.keyring, 'vm', 'create', 'nowhere', '--image', 'tiny', '--type', 'small')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/no host of this mesh trusts the issuer's key \(not-trusted on every host\)/)
    expect(await vms(a)).toEqual([])

    expect((await b.cli('trust', 'add', u1.keyFile, '--max-vms', '2')).code).toBe(0)
    const ok = await c.as(u1.keyring, '--json', 'vm', 'create', 'web1', '--image', 'tiny', '--type', 'small')
    expect(ok.code).toBe(0)
    const out = JSON.parse(ok.stdout) as RequestView
    expect(out.status).toBe('placed')
    for (const d of [a, b, c]) {
      await waitFor(async () => (await vms(d)).find(v => v.name === 'web1')?.hostName === 'bravo', { what: `${d.name} to see web1 on bravo` })
    }
  })

  it('quota: with --max-vms 2 on B and no other host trusting the key, the third VM is rejected with each host\'s reason', async () => {
    expect((await a.as(u1.keyring, 'vm', 'create', 'web2', '--image', 'tiny', '--type', 'small')).code).toBe(0)
    const third = await a.as(u1.keyring, '--json', 'vm', 'create', 'web3', '--image', 'tiny', '--type', 'small')
    expect(third.code).toBe(1)
    const r = JSON.parse(third.stdout) as RequestView
    expect(r.status).toBe('rejected')
    const byHost = Object.fromEntries(r.reasons.map(x => [x.hostName, x.reason]))
    expect(byHost).toEqual({ alpha: 'not-trusted', bravo: 'quota-vms', charlie: 'not-trusted' })
    const shown = await c.cli('request', 'show', r.id.slice(0, 16))
    expect(shown.stdout).toMatch(/rejected/)
    expect(shown.stdout).toMatch(/bravo: quota-vms/)
  })

  it('tampered payload, tampered signature, wrong mesh, expired, future-dated: each refused with its reason, nothing changes', async () => {
    // What a refused request could have changed: the VMs and the requests stored.
    const snapshot = async (): Promise<string> => JSON.stringify([await a.api.call('GET', '/v1/vms?all=1'), await a.api.call('GET', '/v1/nets')])
    const before = await snapshot()
    const good = await envelope(u1, 'vm.create', { name: 'bad', image: 'tiny', type: 'small' })
    const cases: Array<[string, unknown, string]> = [
      ['tampered payload', { ...good, payload: good.payload.replace('"bad"', '"bax"') }, 'BAD_SIGNATURE'],
      ['tampered signature', { ...good, signature: good.signature.replace(/\n([A-Za-z0-9+/])([A-Za-z0-9+/]{20})/, (_m, c1: string, rest: string) => `\n${c1 === 'A' ? 'B' : 'A'}${rest}`) }, 'BAD_SIGNATURE'],
      ['wrong mesh', await envelope(u1, 'vm.create', { name: 'bad', image: 'tiny', type: 'small' }, { mesh: '0'.repeat(32) }), 'WRONG_MESH'],
      ['expired', await envelope(u1, 'vm.create', { name: 'bad', image: 'tiny', type: 'small' }, { now: Date.now() - 2 * 3600_000 }), 'REQUEST_EXPIRED'],
      ['future-dated', await envelope(u1, 'vm.create', { name: 'bad', image: 'tiny', type: 'small' }, { now: Date.now() + 10 * 60_000 }), 'CREATED_IN_FUTURE']
    ]
    for (const [what, env, code] of cases) {
      const f = join(dir, 'env.json')
      await writeFile(f, JSON.stringify(env))
      const r = await a.cli('--json', 'request', 'submit', f)
      expect(r.code, what).toBe(1)
      expect(JSON.parse(r.stderr).error.code, what).toBe(code)
    }
    expect(await snapshot()).toBe(before)
  })

  it('the same envelope submitted to two hosts at once makes one VM', async () => {
    expect((await c.cli('trust', 'add', u1.keyFile)).code).toBe(0)
    const env = await envelope(u1, 'vm.create', { name: 'twice', image: 'tiny', type: 'small' })
    const results = await Promise.allSettled([a.api.call('POST', '/v1/requests', env), b.api.call('POST', '/v1/requests', env)])
    expect(results.some(r => r.status === 'fulfilled')).toBe(true)
    await waitFor(async () => {
      const lists = await Promise.all([a, b, c].map(vms))
      return lists.every(l => l.filter(v => v.name === 'twice' && v.host !== null).length === 1)
    }, { what: 'one VM "twice", placed, on every host' })
    // Submitting it again is a replay: refused, nothing new.
    const again = await c.api.call('POST', '/v1/requests', env).then(() => 'accepted', (e: any) => e.code)
    expect(again).toBe('REPLAYED_REQUEST')
  })

  it('a key made by GnuPG and a request signed by `gpg --armor --detach-sign` work end to end', async () => {
    const gnupg = join(dir, 'gnupg')
    execFileSync('mkdir', ['-m', '700', gnupg])
    const gpg = (...args: string[]): string => execFileSync('gpg', ['--homedir', gnupg, '--batch', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { encoding: 'utf8' })
    gpg('--quick-gen-key', 'GnuPG User <gpg@example.org>', 'ed25519', 'sign', 'never')
    const fpr = /fpr:+([0-9A-F]{40}):/.exec(gpg('--with-colons', '--list-keys'))?.[1] as string
    await writeFile(join(dir, 'gpg.asc'), gpg('--armor', '--export', fpr))
    expect((await b.cli('trust', 'add', join(dir, 'gpg.asc'))).code).toBe(0)
    await writeFile(join(dir, 'spec.json'), JSON.stringify({ kind: 'vm.create', body: { name: 'from-gpg', image: 'tiny', type: 'small' } }))
    const p = await b.cli('request', 'payload', join(dir, 'spec.json'), '--issuer', fpr, '-o', join(dir, 'payload.json'))
    expect(p.code).toBe(0)
    gpg('--armor', '--detach-sign', '--local-user', fpr, join(dir, 'payload.json'))
    const r = await a.cli('--json', 'request', 'submit', join(dir, 'payload.json'), '--signature', join(dir, 'payload.json.asc'))
    expect(r.code).toBe(0)
    expect(JSON.parse(r.stdout).status).toBe('placed')
    expect((await vms(c)).find(v => v.name === 'from-gpg')?.owner).toBe(fpr)
  })

  it('20 VMs created concurrently through 3 hosts are each placed exactly once, and every host reports the same placement', async () => {
    for (const d of [a, b, c]) expect((await d.cli('trust', 'add', u3.keyFile)).code).toBe(0)
    const envs = await Promise.all(Array.from({ length: 20 }, async (_, i) => await envelope(u3, 'vm.create', { name: `burst-${i}`, image: 'tiny', type: 'small' })))
    await Promise.all(envs.map(async (env, i) => await [a, b, c][i % 3].api.call('POST', '/v1/requests', env)))
    const placements = await Promise.all([a, b, c].map(async d => await waitFor(async () => {
      const l = (await vms(d)).filter(v => v.name.startsWith('burst-'))
      return l.length === 20 && l.every(v => v.host !== null && v.claimants.length === 1 && v.status === 'placed') && l
    }, { timeoutMs: 90_000, what: `${d.name} to see 20 VMs placed once each` })))
    const key = (l: VmView[]): string => JSON.stringify(l.map(v => [v.name, v.host]).sort())
    expect(key(placements[1])).toBe(key(placements[0]))
    expect(key(placements[2])).toBe(key(placements[0]))
    // Rendezvous hashing spreads them: more than one host is used.
    expect(new Set(placements[0].map(v => v.host)).size).toBeGreaterThan(1)
  })

  it('user two cannot stop user one\'s VM (rejected, reason); B\'s host operator can stop a VM on B', async () => {
    expect((await c.cli('trust', 'add', u2.keyFile)).code).toBe(0)
    const r = await a.as(u2.keyring, '--json', 'vm', 'stop', 'web1')
    expect(r.code).toBe(1)
    const out = JSON.parse(r.stdout) as RequestView
    expect(out.status).toBe('rejected')
    expect(out.reasons[0].reason).toBe('not-owner')
    expect(out.reasons[0].detail).toMatch(/only its owner may change it/)

    const notHere = await a.cli('vm', 'stop', 'web1', '--operator')
    expect(notHere.code).toBe(1)
    expect(notHere.stderr).toMatch(/does not run on this host/)
    const op = await b.cli('--json', 'vm', 'stop', 'web1', '--operator', '--reason', 'maintenance')
    expect(op.code).toBe(0)
    expect(JSON.parse(op.stdout).status).toBe('stopped')
    await waitFor(async () => (await vms(a)).find(v => v.name === 'web1')?.status === 'stopped', { what: 'A to see web1 stopped by B\'s operator' })
  })

  it('an operator stop holds against the owner\'s start, says so, and only that host\'s operator lifts it', async () => {
    const start = await a.as(u1.keyring, 'vm', 'start', 'web1')
    expect(start.code).toBe(1)
    expect(start.stderr).toMatch(/web1 is held stopped by the operator of bravo \(maintenance\)/)
    const shown = await a.api.call<VmView>('GET', '/v1/vms/web1')
    expect(shown).toMatchObject({ status: 'stopped', desired: 'running', operatorStop: { reason: 'maintenance' } })
    expect(shown.reason).toMatch(/stays stopped until that host's operator runs `picocloud vm start --operator web1`/)
    const elsewhere = await a.cli('vm', 'start', 'web1', '--operator')
    expect(elsewhere.code).toBe(1)
    expect(elsewhere.stderr).toMatch(/does not run on this host/)
    expect((await b.cli('vm', 'stop', 'web1', '--operator', '--force')).stderr).toMatch(/--force is for the owner's stop/)
    const lifted = await b.cli('vm', 'start', 'web1', '--operator')
    expect(lifted.code, lifted.stderr).toBe(0)
    expect(lifted.stdout).toMatch(/lifted this host's stop of web1; it runs again if its owner wants it running \(desired: running\)/)
    await waitFor(async () => (await a.api.call<VmView>('GET', '/v1/vms/web1')).operatorStop === undefined, { what: 'A to see the stop lifted' })
    const again = await b.cli('vm', 'start', 'web1', '--operator')
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/was not stopped by this host's operator; its owner starts it/)
  })

  it('partition: VMs created on both sides, then healed: states converge and no VM stays placed twice', async () => {
    const ids = await Promise.all([a, b, c].map(async d => (await d.id()).peerId))
    for (const d of [a, b, c]) expect((await d.cli('trust', 'add', u3.keyFile)).code).toBe(0)
    await waitFor(async () => (await c.status()).state.heads.join() === (await a.status()).state.heads.join(), { what: 'trust to replicate' })
    await a.api.call('POST', '/v1/test/partition', { peers: [ids[1], ids[2]] })
    await b.api.call('POST', '/v1/test/partition', { peers: [ids[0]] })
    await c.api.call('POST', '/v1/test/partition', { peers: [ids[0]] })
    await waitFor(async () => (await a.status()).peers.length === 0, { what: 'A to be cut off' })
    // u3 is trusted everywhere: each side places what it receives on the hosts it can see.
    const left = await Promise.all([0, 1, 2].map(async i => await a.api.call<RequestView>('POST', '/v1/requests', await envelope(u3, 'vm.create', { name: `left-${i}`, image: 'tiny', type: 'small' }))))
    const right = await Promise.all([0, 1, 2].map(async i => await b.api.call<RequestView>('POST', '/v1/requests', await envelope(u3, 'vm.create', { name: `right-${i}`, image: 'tiny', type: 'small' }))))
    // The same request reaches both sides (a user retried through another host): both place it.
    const dup = await envelope(u3, 'vm.create', { name: 'both-sides', image: 'tiny', type: 'small' })
    const dupId = (await a.api.call<RequestView>('POST', '/v1/requests', dup)).id
    await b.api.call<RequestView>('POST', '/v1/requests', dup)
    for (const r of [...left, { id: dupId }]) await waitFor(async () => (await req(a, r.id)).status === 'placed', { timeoutMs: 15_000, what: 'left side placement' })
    for (const r of [...right, { id: dupId }]) await waitFor(async () => (await req(b, r.id)).status === 'placed', { timeoutMs: 15_000, what: 'right side placement' })
    expect((await vms(a)).filter(v => v.name.startsWith('left-')).every(v => v.host === ids[0])).toBe(true)
    const dupLeft = (await vms(a)).find(v => v.id === dupId)?.host
    const dupRight = (await vms(b)).find(v => v.id === dupId)?.host
    expect(dupLeft).toBe(ids[0])
    expect(dupRight).not.toBe(ids[0])

    for (const d of [a, b, c]) await d.api.call('POST', '/v1/test/heal')
    const all = [...left, ...right, { id: dupId }].map(r => r.id)
    const final = await Promise.all([a, b, c].map(async d => await waitFor(async () => {
      if ((await d.status()).state.heads.join() !== (await a.status()).state.heads.join()) return false
      const l = (await vms(d)).filter(v => all.includes(v.id))
      return l.length === 7 && l.every(v => v.claimants.length === 1 && v.host === v.claimants[0]) && l
    }, { timeoutMs: 30_000, what: `${d.name} to converge with one placement per VM` })))
    const key = (l: VmView[]): string => JSON.stringify(l.map(v => [v.id, v.host]).sort())
    expect(key(final[1])).toBe(key(final[0]))
    expect(key(final[2])).toBe(key(final[0]))
    // The VM placed on both sides now runs only on the better-ranked of its two hosts.
    const { rank } = await import('../../crdt/placement.ts')
    const winner = final[0].find(v => v.id === dupId)?.host
    expect(winner).toBe(rank(dupId, [dupLeft as string, dupRight as string])[0])
  })

  it('a long poll on a request answers as soon as its status changes, after the wait when it does not, and refuses bad parameters', async () => {
    // u3 is trusted on every host (trust add is idempotent): its VM leaves pending once placed.
    for (const d of [a, b, c]) expect((await d.cli('trust', 'add', u3.keyFile)).code).toBe(0)
    const env = await envelope(u3, 'vm.create', { name: 'poll', image: 'tiny', type: 'small' })
    const first = await a.api.call<RequestView>('POST', '/v1/requests', env)
    const t0 = Date.now()
    const next = await a.api.call<RequestView>('GET', `/v1/requests/${first.id}?unless=${first.status}&wait=20`)
    const waited = Date.now() - t0
    console.log(`long poll: ${first.status} → ${next.status} after ${waited} ms`)
    if (first.status !== 'rejected') {
      expect(next.status).not.toBe(first.status)
      expect(waited).toBeLessThan(15_000)
    }
    // Settled: nothing changes any more, so it is answered after the wait, with the same status.
    const settled = await waitFor(async () => { const v = await req(a, first.id); return ['placed', 'rejected'].includes(v.status) ? v : undefined }, { what: 'the request settled' })
    const t1 = Date.now()
    const same = await a.api.call<RequestView>('GET', `/v1/requests/${first.id}?unless=${settled.status}&wait=1`)
    expect(same.status).toBe(settled.status)
    expect(Date.now() - t1).toBeGreaterThanOrEqual(900)
    // Bad parameters change nothing and say why.
    for (const q of ['wait=5', 'unless=pending&wait=-1', 'unless=pending&wait=999', 'unless=pending&wait=soon', 'unless=PENDING!']) {
      await expect(a.api.call('GET', `/v1/requests/${first.id}?${q}`)).rejects.toMatchObject({ code: 'BAD_REQUEST' })
    }
  })
})
