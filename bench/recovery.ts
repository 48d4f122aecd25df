/**
 * Recovery of a `--ha restart` VM after its host loses power, with default lease settings
 * (lease_interval 2 s: lease 6 s, declared after 12 s of silence). Three real daemons, QEMU
 * guests. Each run: a VM boots, its host's daemon, watchdog and QEMU are killed at once (t0), and
 * another daemon's view is polled every 20 ms:
 *   detection      t0 → the VM leaves its old host in that view (a majority declared it lost),
 *   daemon share   t0 → the new host reports `running` (QEMU up, QMP running),
 *   guest boot     `running` → the guest's boot line in the new host's serial log.
 * The killed daemon is started again (it rejoins at a new epoch) and the VM destroyed before the
 * next run. Every run is counted; a run that does not recover within 120 s fails the benchmark.
 */
import { execFileSync } from 'node:child_process'
import { TestMesh, type TestDaemon } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'
import { makeUser } from '../test/helpers/users.ts'
import { qemuPidsOf, imageElsewhere } from '../test/helpers/vm-copies.ts'
import { bootDisk } from '../node/demo/boot-disk.ts'
import { BOOT_LINE } from '../node/demo/tiny-image.ts'
import type { VmView } from '../node/control/views.ts'
import type { HostView } from '../protocol/api.ts'
import { summarize, type Summary } from './stats.ts'

export interface RecoveryResult { detectMs: Summary, daemonMs: Summary, bootMs: Summary, totalMs: Summary }

function childrenOf (pid: number): number[] {
  try { return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number) } catch { return [] }
}

export async function recovery (runs: number): Promise<RecoveryResult> {
  const disk = (await bootDisk()).path
  const mesh = await TestMesh.create()
  const ds: TestDaemon[] = []
  try {
    // Default heartbeat and lease: only what the machine needs to hold three daemons.
    ds.push(...await mesh.form(['alpha', 'bravo', 'charlie'], 'vcpus = 8\nmem_mib = 4096\ndisk_gib = 200\nnetwork = "none"\n'))
    const { keyring, keyFile } = await makeUser(ds[0], mesh.dir, 'bench')
    for (const d of ds) if ((await d.cli('trust', 'add', keyFile)).code !== 0) throw new Error('trust add failed')
    const added = await ds[0].as(keyring, 'image', 'add', disk, '--name', 'tiny')
    if (added.code !== 0) throw new Error(`image add failed: ${added.stderr}`)
    const detect: number[] = []; const daemon: number[] = []; const boot: number[] = []; const total: number[] = []
    for (let i = 0; i < runs; i++) {
      const name = `r${i}`
      const created = await ds[0].as(keyring, 'vm', 'create', name, '--image', 'tiny', '--cpus', '1', '--mem', '256', '--ha', 'restart')
      if (created.code !== 0) throw new Error(`vm create failed: ${created.stderr}`)
      const before = await ds[0].api.call<VmView>('GET', `/v1/vms/${name}`)
      const holder = ds.find(d => d.name === before.hostName) as TestDaemon
      const watcher = ds.find(d => d !== holder) as TestDaemon
      // Every host has seen the VM run (its report is in every view) before the power goes.
      await waitFor(async () => (await Promise.all(ds.map(async d => (await d.api.call<VmView>('GET', `/v1/vms/${name}`)).status))).every(s => s === 'running'),
        { timeoutMs: 60_000, what: `${name} running in every view` })
      // The host next in line has fetched the image ahead (node/compute/reconciler.ts), as it would
      // have long before a real failure; without it, a lost holder that held the only copy of the
      // image would leave nothing to restart from.
      await imageElsewhere(watcher, holder.name)
      const pid = holder.proc?.pid as number
      const victims = [pid, ...childrenOf(pid), ...await qemuPidsOf(holder)]
      const t0 = performance.now()
      for (const p of victims) { try { process.kill(p, 'SIGKILL') } catch {} }
      let tMoved: number | undefined
      let host: TestDaemon | undefined
      await waitFor(async () => {
        const v = await watcher.api.call<VmView>('GET', `/v1/vms/${name}`)
        if (tMoved === undefined && v.host !== before.host) tMoved = performance.now()
        if (v.status === 'running' && v.hostName !== holder.name) { host = ds.find(d => d.name === v.hostName); return true }
        return false
      }, { timeoutMs: 120_000, intervalMs: 20, what: `${name} running on another host` })
      const tRun = performance.now()
      const on = host as TestDaemon
      await waitFor(async () => JSON.stringify(await on.api.call('GET', `/v1/vms/${name}/logs`)).includes(BOOT_LINE),
        { timeoutMs: 180_000, intervalMs: 50, what: `the boot line of ${name}` })
      const tBoot = performance.now()
      detect.push((tMoved ?? tRun) - t0); daemon.push(tRun - t0); boot.push(tBoot - tRun); total.push(tBoot - t0)
      // Back to three hosts: the old holder rejoins at a new epoch; then the VM goes.
      await holder.start()
      await waitFor(async () => (await watcher.hosts() as HostView[]).every(h => h.reachable && h.lost === null),
        { timeoutMs: 60_000, what: `${holder.name} back` })
      const destroyed = await ds[0].as(keyring, 'vm', 'destroy', name)
      if (destroyed.code !== 0) throw new Error(`vm destroy failed: ${destroyed.stderr}`)
    }
    return { detectMs: summarize(detect), daemonMs: summarize(daemon), bootMs: summarize(boot), totalMs: summarize(total) }
  } finally {
    // No QEMU outlives the benchmark, even when it failed.
    for (const d of ds) for (const p of await qemuPidsOf(d)) { try { process.kill(p, 'SIGKILL') } catch {} }
    await mesh.stopAll()
  }
}
