/**
 * `--ha restart` for real: three daemons, real QEMU guests. A host loses power (daemon, QEMU and
 * watchdog killed at once) and its VM boots on another host; a host's daemon is frozen (SIGSTOP)
 * and its watchdog kills the VM before another host starts it, and it does not come back when the
 * daemon thaws; a `--ha none` VM stays with its lost host and says so. QEMU processes of the VM are
 * sampled every 100 ms all along: never two at once. Needs root, QEMU and the boot-disk tools.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { makeUser } from '../helpers/users.ts'
import { hostsRunning, qemuPidsOf, sampleCopies, imageElsewhere, type Sample } from '../helpers/vm-copies.ts'
import { bootDisk, hasBootDiskTools } from '../../node/demo/boot-disk.ts'
import type { VmView } from '../../node/control/views.ts'
import type { HostView } from '../../protocol/api.ts'

const missing = process.getuid?.() !== 0 ? 'needs root (taps, QEMU)' : await hasBootDiskTools()
if (missing !== undefined) console.warn(`skipping HA tests: ${missing} (CI runs as root and installs them: .ci/install-system-packages)`)

// Beats every second: the lease is 3 s, a silent host is declared after 6 s.
const CONFIG = 'vcpus = 8\nmem_mib = 4096\ndisk_gib = 200\nheartbeat_interval = 1\nreconnect_interval = 0.5\nnetwork = "none"\n'

describe.skipIf(missing !== undefined)('--ha restart VMs outlive their host (QEMU)', () => {
  let mesh: TestMesh
  let ds: TestDaemon[]
  let keyring: string
  let name = ''
  let copies: Sample[] = []
  let stopSampling = (): void => {}

  const vm = async (d: TestDaemon, ref: string): Promise<VmView> => await d.api.call<VmView>('GET', `/v1/vms/${ref}`)
  const byName = (host: string | null): TestDaemon => ds.find(d => d.name === host) as TestDaemon
  const running = async (vmName: string): Promise<string[]> => await hostsRunning(ds, vmName)
  const childrenOf = (pid: number): number[] => {
    try { return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number) } catch { return [] }
  }

  beforeAll(async () => {
    const disk = (await bootDisk()).path
    mesh = await TestMesh.create()
    ds = await mesh.form(['alpha', 'bravo', 'charlie'], CONFIG)
    const user = await makeUser(ds[0], mesh.dir, 'ha')
    keyring = user.keyring
    for (const d of ds) expect((await d.cli('trust', 'add', user.keyFile)).code).toBe(0)
    const added = await ds[0].as(keyring, 'image', 'add', disk, '--name', 'tiny')
    expect(added.code, added.stderr).toBe(0)
  }, 300_000)

  afterAll(async () => {
    stopSampling()
    for (const d of ds ?? []) {
      if (d.proc?.pid !== undefined) { try { process.kill(d.proc.pid, 'SIGCONT') } catch {} }
      for (const pid of await qemuPidsOf(d)) { try { process.kill(pid, 'SIGKILL') } catch {} }
    }
    await mesh?.stopAll()
  })

  it('a restart VM boots; the copies of it are sampled every 100 ms from now on', async () => {
    const r = await ds[0].as(keyring, '--json', 'vm', 'create', 'h1', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--ha', 'restart')
    expect(r.code, r.stderr).toBe(0)
    await waitFor(async () => (await vm(ds[0], 'h1')).status === 'running', { timeoutMs: 60_000, what: 'h1 running' })
    const v = await vm(ds[0], 'h1')
    expect(v.ha).toBe('restart')
    name = `pc-${v.id.slice(0, 8)}`
    expect(await running(name)).toEqual([v.hostName])
    ;({ samples: copies, stop: stopSampling } = sampleCopies(ds, name))
  }, 120_000)

  it('power loss: the VM runs on another host within 30 s; a --ha none VM there shows host-lost', async () => {
    const before = await vm(ds[0], 'h1')
    const holder = byName(before.hostName)
    const pinned = await ds[0].as(keyring, 'vm', 'create', 'n1', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--on', holder.name)
    expect(pinned.code, pinned.stderr).toBe(0)
    await imageElsewhere(ds[0], holder.name)
    const pid = holder.proc?.pid as number
    const qemuPids = await qemuPidsOf(holder)
    // Everything of that host at once: the daemon, its children (the watchdog) and its QEMUs.
    const t0 = Date.now()
    for (const p of [pid, ...childrenOf(pid), ...qemuPids]) { try { process.kill(p, 'SIGKILL') } catch {} }
    const other = ds.find(d => d !== holder) as TestDaemon
    await waitFor(async () => {
      const v = await vm(other, 'h1')
      return v.status === 'running' && v.hostName !== holder.name && (await running(name)).length === 1
    }, { timeoutMs: 60_000, intervalMs: 100, what: 'h1 running on another host' }).catch(async err => {
      for (const d of ds.filter(x => x !== holder)) {
        console.log(d.name, JSON.stringify(await vm(d, 'h1')), JSON.stringify(await d.api.call('GET', '/v1/hosts')).slice(0, 3000))
        console.log(d.log.split('\n').filter(l => /lease|declar|epoch|claim|schedul|fenc|VM/.test(l)).slice(-40).join('\n'))
      }
      throw err
    })
    const recoveryMs = Date.now() - t0
    console.log(`power loss → h1 running elsewhere: ${recoveryMs} ms`)
    expect(recoveryMs).toBeLessThan(30_000)
    const n1 = await vm(other, 'n1')
    expect(n1.status).toBe('host-lost')
    expect(n1.reason).toMatch(/--ha none/)
    // The host comes back: a new epoch, its old claim on h1 void; h1 stays where it runs, n1 runs again.
    await holder.start()
    await waitFor(async () => (await vm(holder, 'n1')).status === 'running', { timeoutMs: 90_000, what: 'n1 running again on its host' }).catch(async err => {
      console.log('n1 on the returned host:', JSON.stringify(await vm(holder, 'n1')), JSON.stringify(((await holder.hosts()) as HostView[]).map(h => [h.name, h.reachable, h.lost, h.declaredBy.length, h.epoch])))
      console.log(holder.log.split('\n').filter(l => /lease|declar|epoch|claim|schedul|fenc|VM|fetch|image/.test(l)).slice(-40).join('\n'))
      throw err
    })
    expect((await vm(holder, 'h1')).hostName).not.toBe(holder.name)
    expect(await running(name)).toHaveLength(1)
  }, 240_000)

  it('a frozen daemon (SIGSTOP): its watchdog kills the VM before another host starts it, and it stays dead after SIGCONT', async () => {
    const holder = byName((await vm(ds[0], 'h1')).hostName)
    const other = ds.find(d => d !== holder) as TestDaemon
    await imageElsewhere(ds[0], holder.name)
    const pid = holder.proc?.pid as number
    const from = Date.now()
    process.kill(pid, 'SIGSTOP')
    try {
      await waitFor(async () => {
        const v = await vm(other, 'h1')
        return v.status === 'running' && v.hostName !== holder.name
      }, { timeoutMs: 60_000, intervalMs: 100, what: 'h1 running on another host while the holder is frozen' })
      const samples = copies.filter(c => c.at >= from)
      const killed = samples.find(c => !c.hosts.includes(holder.name))?.at ?? Infinity
      const started = samples.find(c => c.hosts.some(h => h !== holder.name))?.at ?? Infinity
      expect(killed).toBeLessThan(started)
      // Hold the freeze for 3 × the lease in all.
      await new Promise(resolve => setTimeout(resolve, Math.max(0, from + 9000 - Date.now())))
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    await waitFor(async () => (await holder.api.call('GET', '/v1/status').then(() => true, () => false)), { what: 'the thawed daemon answers' })
    // Give it time to do the wrong thing, if it would.
    const thawed = Date.now()
    await waitFor(async () => Date.now() - thawed > 8000, { timeoutMs: 10_000, intervalMs: 500, what: '8 s' })
    expect(copies.filter(c => c.at > thawed).every(c => !c.hosts.includes(holder.name))).toBe(true)
    expect(await running(name)).toHaveLength(1)
  }, 180_000)

  it('host drain moves a restart VM away at once (no lease wait), refuses when no other host may take it, and undrain lifts it', async () => {
    const holder = byName((await vm(ds[0], 'h1')).hostName)
    const [second, third] = ds.filter(d => d !== holder)
    await imageElsewhere(ds[0], holder.name)
    // The third host drained first: h1 can only go to the second.
    expect((await third.cli('host', 'drain', '--reason', 'disk swap')).code).toBe(0)
    const t0 = Date.now()
    const r = await holder.cli('host', 'drain', '--reason', 'maintenance')
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/h1: moves/)
    await waitFor(async () => { const v = await vm(second, 'h1'); return v.status === 'running' && v.hostName === second.name },
      { timeoutMs: 30_000, intervalMs: 100, what: `h1 running on ${second.name}` })
    console.log(`drain → h1 running on ${second.name}: ${Date.now() - t0} ms`)
    expect(await running(name)).toEqual([second.name])
    const hostsText = (await second.cli('hosts')).stdout
    expect(hostsText).toMatch(new RegExp(`${holder.name}.*\\(drained\\)`))
    // The second host cannot be drained too: h1 would have nowhere to go. Nothing changes.
    const refused = await second.cli('host', 'drain')
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/cannot drain: no other host that is up may take h1.*nothing changed/)
    expect(((await second.hosts()) as HostView[]).find(h => h.self)?.drained).toBeNull()
    const bad = await second.cli('host', 'drain', '--reason', 'a\u0001b')
    expect(bad.code).toBe(1)
    for (const d of [holder, third]) expect((await d.cli('host', 'undrain')).code).toBe(0)
    const again = await third.cli('host', 'undrain')
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/not drained/)
    // h1 stays where it runs.
    expect((await vm(ds[0], 'h1')).hostName).toBe(second.name)
  }, 120_000)

  it('at no sample did two copies of the VM run', () => {
    expect(copies.length).toBeGreaterThan(100)
    const twice = copies.filter(c => c.hosts.length > 1)
    expect(twice, JSON.stringify(twice.slice(0, 3))).toEqual([])
  })
})
