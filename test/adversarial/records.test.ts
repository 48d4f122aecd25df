/**
 * Issue 12, point 3 (and the display part of "Robustness"): a member that writes a malformed
 * record of its own — a `null` rejection, a number for its architectures, no addresses, lists
 * over every limit, control characters and bidi overrides in its name — harms only its own
 * standing. Against three real daemons, with the attacker on libp2p (test/helpers/attacker.ts):
 * every API route of every honest daemon keeps answering 200, their human output shows no raw
 * control characters, the scheduler keeps placing a user's VM, and `hosts --json` lists the
 * problems against the attacker; after its expulsion too. The same fields at the state level,
 * with every possible order of delivery: the fuzzer (fuzz.test.ts, malformed records).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import type { TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { addressOf, waitForFeed, type NetAttacker } from '../helpers/attacker.ts'
import type { User } from '../helpers/users.ts'
import { scalars } from '../../crdt/schema.ts'
import type { VmView } from '../../node/control/views.ts'
import type { HostView } from '../../protocol/api.ts'
import { attackedMesh, type AttackedMesh } from '../helpers/attacked-mesh.ts'

const CONFIG = 'hypervisor = "none"\nvcpus = 64\nmem_mib = 65536\ndisk_gib = 1000\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'
const ID = (c: string): string => c.repeat(64)

/** The status of GET `path` on `d` (200 or the error's status). */
async function statusOf (d: TestDaemon, path: string): Promise<number> {
  return await d.api.call('GET', path).then(() => 200, (e: any) => Number(e.status ?? 500))
}

describe('adversarial: a member\'s malformed record harms only its own standing (three real daemons)', () => {
  let t: AttackedMesh | undefined
  let daemons: TestDaemon[]
  let m: NetAttacker | undefined
  let dir: string
  let user: User

  beforeAll(async () => {
    t = await attackedMesh(['alpha', 'bravo', 'charlie'], CONFIG, { user: 'ada' })
    ;({ daemons, m, dir, user } = t)
  })
  afterAll(async () => { await t?.stop() })

  /** Every route a user or operator reads; a request and a VM by name when there are some. */
  async function routes (d: TestDaemon): Promise<string[]> {
    const vms = await d.api.call<VmView[]>('GET', '/v1/vms?all=1')
    return ['/v1/status', '/v1/id', '/v1/hosts', '/v1/history', '/v1/vms', '/v1/vms?all=1', '/v1/images', '/v1/nets', '/v1/trust',
      ...vms.slice(0, 3).flatMap(v => [`/v1/vms/${v.id}`, `/v1/requests/${v.id}`])]
  }

  /** Every API route answers 200; with `cli`, every human listing too, with no raw control characters. */
  async function everyRouteAnswers (cli = true): Promise<void> {
    for (const d of daemons) {
      for (const path of await routes(d)) expect(await statusOf(d, path), `${d.name} GET ${path}`).toBe(200)
      if (!cli) continue
      for (const args of [['hosts'], ['status'], ['history'], ['vm', 'list'], ['net', 'list'], ['image', 'list'], ['trust', 'list']]) {
        const r = await d.cli(...args)
        expect(r.code, `${d.name}: picocloud ${args.join(' ')}: ${r.stderr}`).toBe(0)
        // eslint-disable-next-line no-control-regex
        expect(r.stdout, `${d.name}: picocloud ${args.join(' ')} prints raw control characters`).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f\u202a-\u202e\u2066-\u2069]/)
      }
    }
  }

  async function vmPlaced (name: string): Promise<void> {
    const r = await daemons[1].as(user.keyring, '--json', 'vm', 'create', name, '--image', 'tiny', '--type', 'small')
    expect(r.code, r.stderr).toBe(0)
    for (const d of daemons) {
      await waitFor(async () => (await d.api.call<VmView[]>('GET', '/v1/vms')).find(v => v.name === name)?.status === 'placed',
        { timeoutMs: 20_000, what: `${d.name} to see ${name} placed` })
    }
  }

  it('a null rejection, a number for arch, no addresses, control characters in its name, then 10,001 claims: every route of every daemon answers 200, and a new VM is placed', async () => {
    const attacker = m as NetAttacker
    // A VM placed before, so that there are VM and request routes to read.
    await vmPlaced('before')
    const vmId = (await daemons[0].api.call<VmView[]>('GET', '/v1/vms')).find(v => v.name === 'before')?.id as string
    const writes: Array<(d: any) => void> = [
      d => { d.host.rejections = { [vmId]: null, [ID('a')]: 17, x: { at: 'never' } } },
      d => { d.host.resources = { arch: 5, vcpus: 'lots', memMiB: -1, diskGiB: null, labels: { 'bad key!': '\u0000', zone: { nested: true } } } },
      d => { delete d.host.addresses },
      d => { d.host.name = scalars('\u001b[2J\u001b[31mroot\u001b[0m\r\n\u202eevil\u0007') },
      d => { d.host.vms = { [vmId]: { status: 'running', since: 'now' }, [ID('b')]: null }; d.host.policy = { version: -1, entries: 'everyone' } },
      d => { d.host.keys = { NOTAFINGERPRINT: 1, [user.fpr]: 42 }; d.host.nets = { [ID('c')]: { vni: -1, fdb: 'x' } }; d.host.images = { [ID('d')]: { size: 'big' } } },
      d => { d.host.wgEndpoints = Array.from({ length: 100 }, () => 'x'.repeat(100)); d.host.wgPort = 'x'; d.host.updated = 'yesterday'; d.host.netError = '\u001b]0;title\u0007' }
    ]
    for (const w of writes) await attacker.append(w)
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) await waitForFeed(d, attacker)

    await everyRouteAnswers()
    await vmPlaced('after')
    // The problems are listed against the attacker, and only against it.
    const fields = ['host.rejections', 'host.resources', 'host.name', 'host.vms', 'host.policy', 'host.keys', 'host.nets', 'host.images', 'host.wgEndpoints']
    await problemsListed(attacker, fields)

    // A list far over its limit (10,001 entries, each malformed too): the same, and the list of
    // problems shown stays short.
    await attacker.append(d => { d.host.claims = {}; for (let i = 0; i < 10_001; i++) d.host.claims[`k${i}`] = 1 })
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) await waitForFeed(d, attacker)
    await everyRouteAnswers(false)
    await vmPlaced('after-flood')
    await problemsListed(attacker, ['host.claims'])
  })

  async function problemsListed (attacker: NetAttacker, fields: string[]): Promise<void> {
    for (const d of daemons) {
      const hosts = JSON.parse((await d.cli('--json', 'hosts')).stdout) as HostView[]
      const mine = hosts.find(h => h.peerId === attacker.peerId)
      const problems = (mine?.problems ?? []).join('\n')
      for (const field of fields) expect(problems, `${d.name}: ${field}`).toContain(field)
      expect(mine?.problems.length ?? 0).toBeLessThanOrEqual(100)
      for (const h of hosts.filter(h => h.peerId !== attacker.peerId)) expect(h.problems, `${d.name}: ${h.name}`).toEqual([])
      // Its name is not shown as it wrote it (dropped: not printable text).
      expect(mine?.name ?? '').not.toMatch(/\u001b|\u202e/)
    }
  }

  it('a null record, then expelled: every route still answers 200 and nothing of it is left in the hosts\' views', async () => {
    const attacker = m as NetAttacker
    await attacker.append(d => { d.host = null })
    for (const d of daemons) await attacker.push(await addressOf(d), attacker.feed)
    for (const d of daemons) await waitForFeed(d, attacker)
    await everyRouteAnswers(false)
    expect((await daemons[0].cli('expel', attacker.peerId, '--reason', 'malformed records')).code).toBe(0)
    for (const d of daemons) {
      await waitFor(async () => !(await d.hosts()).some(h => h.peerId === attacker.peerId), { timeoutMs: 20_000, what: `${d.name} to drop the attacker` })
    }
    await everyRouteAnswers()
    await vmPlaced('after-expulsion')
  })
})
