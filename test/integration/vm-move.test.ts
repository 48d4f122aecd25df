/**
 * `vm move` for real: three daemons, a real QEMU guest that counts its boots on its own disk
 * (node/demo/tiny-image.ts). A move powers the guest off on its host, hands the disk over and
 * boots it on the new host from that disk (the count goes on); moving it back replaces the stale
 * disk the first host still had. QEMU processes are sampled every 100 ms: never two copies. Bad
 * moves are refused before anything is signed and change nothing. Needs root, QEMU and the
 * boot-disk tools.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { makeUser } from '../helpers/users.ts'
import { hostsRunning, qemuPidsOf, sampleCopies, type Sample } from '../helpers/vm-copies.ts'
import { bootDisk, hasBootDiskTools } from '../../node/demo/boot-disk.ts'
import { BOOTS_LINE } from '../../node/demo/tiny-image.ts'
import type { VmView, RequestView } from '../../node/control/views.ts'

const missing = process.getuid?.() !== 0 ? 'needs root (taps, QEMU)' : await hasBootDiskTools()
if (missing !== undefined) console.warn(`skipping vm move tests: ${missing} (CI runs as root and installs them: .ci/install-system-packages)`)

const CONFIG = 'vcpus = 8\nmem_mib = 4096\ndisk_gib = 200\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\nnetwork = "none"\n'

describe.skipIf(missing !== undefined)('vm move: a cold move carries the disk (QEMU)', () => {
  let mesh: TestMesh
  let ds: TestDaemon[]
  let keyring: string
  let name = ''
  let copies: Sample[] = []
  let stopSampling = (): void => {}

  const vm = async (d: TestDaemon, ref: string): Promise<VmView & { history: RequestView[] }> => await d.api.call('GET', `/v1/vms/${ref}`)
  const byName = (host: string | null | undefined): TestDaemon => ds.find(d => d.name === host) as TestDaemon
  /** The highest boot count a host's serial log of the VM shows (0: none yet). */
  const boots = async (d: TestDaemon): Promise<number> => {
    const log = await readFile(join(d.state, 'vms', name, 'serial.log'), 'utf8').catch(() => '')
    return Math.max(0, ...[...log.matchAll(new RegExp(`${BOOTS_LINE} (\\d+)`, 'g'))].map(m => Number(m[1])))
  }

  /** What each host sees of m1, and what its log says of moves, when a move did not finish. */
  const explain = async (): Promise<void> => {
    for (const d of ds) {
      const v = await vm(d, 'm1').catch(err => err.message)
      console.log(d.name, JSON.stringify(typeof v === 'string' ? v : { host: v.hostName, status: v.status, reason: v.reason, kinds: v.history.map((h: RequestView) => `${h.kind}:${h.status}`) }))
      console.log(d.log.split('\n').filter(l => /disk|move|hand|claim|VM|schedul/i.test(l)).slice(-25).join('\n'))
    }
  }

  beforeAll(async () => {
    const disk = (await bootDisk()).path
    mesh = await TestMesh.create()
    ds = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG)
    const user = await makeUser(ds[0], mesh.dir, 'mover')
    keyring = user.keyring
    // charlie does not trust the owner: no VM of theirs may go there.
    for (const d of ds.slice(0, 2)) expect((await d.cli('trust', 'add', user.keyFile)).code).toBe(0)
    const added = await ds[0].as(keyring, 'image', 'add', disk, '--name', 'tiny')
    expect(added.code, added.stderr).toBe(0)
    const r = await ds[0].as(keyring, 'vm', 'create', 'm1', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--disk', '1')
    expect(r.code, r.stderr).toBe(0)
    await waitFor(async () => (await vm(ds[0], 'm1')).status === 'running', { timeoutMs: 90_000, what: 'm1 running' })
    const v = await vm(ds[0], 'm1')
    name = `pc-${v.id.slice(0, 8)}`
    await waitFor(async () => await boots(byName(v.hostName)) === 1, { timeoutMs: 60_000, what: 'first boot counted on the disk' })
    ;({ samples: copies, stop: stopSampling } = sampleCopies(ds, name))
  }, 300_000)

  afterAll(async () => {
    stopSampling()
    for (const d of ds ?? []) for (const pid of await qemuPidsOf(d)) { try { process.kill(pid, 'SIGKILL') } catch {} }
    await mesh?.stopAll()
  })

  it('bad moves are refused before anything is signed, and change nothing', async () => {
    const before = await vm(ds[0], 'm1')
    const host = before.hostName as string
    const cases: Array<[string[], RegExp]> = [
      [[], /--to HOST or --on/],
      [['--to', 'charlie', '--on', 'x=y'], /--to HOST or --on/],
      [['--to', 'nosuchhost'], /no host nosuchhost/],
      [['--to', host], /already runs on/],
      [['--to', 'charlie'], /no other host that is up may take m1; nothing changed[\s\S]*charlie/],
      [['--on', 'zone=nowhere'], /no other host that is up may take m1[\s\S]*zone=nowhere/]
    ]
    for (const [args, why] of cases) {
      const r = await ds[0].as(keyring, 'vm', 'move', 'm1', ...args)
      expect(r.code, `vm move m1 ${args.join(' ')}`).not.toBe(0)
      expect(r.stderr, `vm move m1 ${args.join(' ')}`).toMatch(why)
    }
    const after = await vm(ds[0], 'm1')
    expect(after.hostName).toBe(host)
    expect(after.status).toBe('running')
    expect(after.history.map(h => h.kind)).not.toContain('vm.move')
    expect(await hostsRunning(ds, name)).toEqual([host])
  }, 120_000)

  it('moves to another host with its disk: powered off there first, booted here from that disk; never two copies', async () => {
    const from = (await vm(ds[0], 'm1')).hostName as string
    const to = from === 'alpha' ? 'bravo' : 'alpha'
    const t0 = Date.now()
    const r = await ds[2].as(keyring, 'vm', 'move', 'm1', '--to', to, '--timeout', '90')
    if (r.code !== 0) await explain()
    expect(r.code, r.stderr + r.stdout).toBe(0)
    expect(r.stdout).toMatch(new RegExp(`running on ${to}`))
    console.log(`vm move ${from} → ${to}: ${Date.now() - t0} ms until it ran there`)
    await waitFor(async () => await boots(byName(to)) === 2, { timeoutMs: 60_000, what: 'the second boot, counted on the moved disk' })
    expect(await hostsRunning(ds, name)).toEqual([to])
    const v = await vm(ds[0], 'm1')
    expect(v.hostName).toBe(to)
    expect(v.history.map(h => h.kind)).toContain('vm.move')
    const twice = copies.filter(c => c.hosts.length > 1)
    expect(twice, JSON.stringify(twice.slice(0, 3))).toEqual([])
  }, 180_000)

  it('moves back: the first host\'s stale disk is replaced by the one handed back', async () => {
    const from = (await vm(ds[0], 'm1')).hostName as string
    const to = from === 'alpha' ? 'bravo' : 'alpha'
    const r = await ds[0].as(keyring, 'vm', 'move', 'm1', '--to', to, '--timeout', '90')
    if (r.code !== 0) await explain()
    expect(r.code, r.stderr + r.stdout).toBe(0)
    // The first host's own disk said 1; the one handed back says 2: this boot is the third.
    await waitFor(async () => await boots(byName(to)) === 3, { timeoutMs: 60_000, what: 'the third boot on the first host' })
    expect(await hostsRunning(ds, name)).toEqual([to])
    expect(copies.filter(c => c.hosts.length > 1)).toEqual([])
    expect(copies.length).toBeGreaterThan(50)
  }, 180_000)

  it('a --ha restart VM moves the same way: its disk goes along, and the endorsements follow the new host', async () => {
    const r = await ds[0].as(keyring, 'vm', 'create', 'r1', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--disk', '1', '--ha', 'restart')
    expect(r.code, r.stderr).toBe(0)
    await waitFor(async () => (await vm(ds[0], 'r1')).status === 'running', { timeoutMs: 90_000, what: 'r1 running' })
    const v = await vm(ds[0], 'r1')
    const r1 = `pc-${v.id.slice(0, 8)}`
    const from = v.hostName as string
    const to = from === 'alpha' ? 'bravo' : 'alpha'
    const count = async (d: TestDaemon): Promise<number> => {
      const log = await readFile(join(d.state, 'vms', r1, 'serial.log'), 'utf8').catch(() => '')
      return Math.max(0, ...[...log.matchAll(new RegExp(`${BOOTS_LINE} (\\d+)`, 'g'))].map(m => Number(m[1])))
    }
    await waitFor(async () => await count(byName(from)) === 1, { timeoutMs: 60_000, what: 'r1 booted once' })
    const sampled = sampleCopies(ds, r1)
    try {
      const mv = await ds[1].as(keyring, 'vm', 'move', 'r1', '--to', to, '--timeout', '90')
      if (mv.code !== 0) await explain()
      expect(mv.code, mv.stderr + mv.stdout).toBe(0)
      await waitFor(async () => await count(byName(to)) === 2, { timeoutMs: 60_000, what: 'r1 booted from its moved disk' })
      const w = await vm(ds[2], 'r1')
      expect(w.hostName).toBe(to)
      expect(w.status).toBe('running')
      expect(sampled.samples.filter(c => c.hosts.length > 1)).toEqual([])
    } finally {
      sampled.stop()
    }
  }, 240_000)
})
