/**
 * VM start through one real daemon with the QEMU driver (root, QEMU, boot-disk tools): a signed
 * vm.create published on the socket → the host reports `running` (QEMU up, QMP says running),
 * split by the statuses the host reports, polled every 5 ms:
 *   placement        submit → `placed` (claim + settle),
 *   host start       `placed` → `running` (image check — the image is local —, overlay, seed,
 *                    QEMU process + QMP; the host reports no `starting` in between that polling sees),
 *   guest boot       `running` → the guest's boot line in the serial log (excluded from the target).
 * Each VM is destroyed (and checked gone) before the next.
 */
import { execFileSync } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKey, loadPrivateKey, signDetached } from '../keys/keyring.ts'
import { buildPayload, sealEnvelope } from '../protocol/envelope.ts'
import { TestMesh, type TestDaemon } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'
import { bootDisk, hasBootDiskTools } from '../node/demo/boot-disk.ts'
import { BOOT_LINE } from '../node/demo/tiny-image.ts'
import type { VmView } from '../node/control/views.ts'
import { summarize, type Summary } from './stats.ts'

export async function vmStartUnavailable (): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (taps, QEMU)'
  return await hasBootDiskTools()
}

/** `hostStartMs`: placed → running; the host reports no separate `starting` that 5 ms polling sees. */
export interface VmStartResult { totalMs: Summary, placementMs: Summary, hostStartMs: Summary, bootMs: Summary }

export async function vmStart (runs: number): Promise<VmStartResult> {
  const disk = (await bootDisk()).path
  const mesh = await TestMesh.create()
  let a: TestDaemon | undefined
  try {
    a = await mesh.daemon('alpha', 'vcpus = 8\nmem_mib = 4096\ndisk_gib = 200\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n')
    await a.api.call('POST', '/v1/init', { name: 'bench' })
    const keyring = join(mesh.dir, 'user-keyring')
    const { fingerprint, publicKey } = await generateKey(keyring, { userIds: ['Bench <bench@example.org>'], type: 'ed25519' })
    const key = await loadPrivateKey(keyring, fingerprint)
    await a.api.call('POST', '/v1/trust', { publicKey })
    const added = await a.as(keyring, 'image', 'add', disk, '--name', 'tiny')
    if (added.code !== 0) throw new Error(`image add failed: ${added.stderr}`)
    const meshId = (await a.status()).mesh?.id as string
    const sign = async (kind: 'vm.create' | 'vm.destroy', body: unknown): Promise<unknown> => {
      const payload = buildPayload(kind, body, { mesh: meshId, issuer: fingerprint, now: Date.now() })
      return await sealEnvelope(payload, async d => await signDetached(key, d))
    }
    const total: number[] = []; const placement: number[] = []; const host: number[] = []; const boot: number[] = []
    for (let i = 0; i < runs; i++) {
      const name = `b${i}`
      const env = await sign('vm.create', { name, image: 'tiny', cpus: 1, memMiB: 256 })
      const seen = new Map<string, number>()
      const t0 = performance.now()
      const { id } = await a.api.call<{ id: string }>('POST', '/v1/requests', env)
      const d = a
      await waitFor(async () => {
        const v = await d.api.call<VmView>('GET', `/v1/vms/${id}`).catch(() => undefined)
        if (v !== undefined && !seen.has(v.status)) seen.set(v.status, performance.now())
        if (v?.status === 'failed' || v?.status === 'rejected') throw new Error(`VM ${name} ${v.status}: ${v.reason ?? ''}`)
        return v?.status === 'running'
      }, { timeoutMs: 60_000, intervalMs: 5, what: `VM ${name} running` })
      const tRun = seen.get('running') as number
      await waitFor(async () => JSON.stringify(await d.api.call('GET', `/v1/vms/${id}/logs`)).includes(BOOT_LINE),
        { timeoutMs: 180_000, intervalMs: 50, what: `the boot line of ${name}` })
      const tBoot = performance.now()
      const tPlaced = seen.get('placed') ?? seen.get('fetching-image') ?? seen.get('starting') ?? tRun
      total.push(tRun - t0); placement.push(tPlaced - t0); host.push(tRun - tPlaced); boot.push(tBoot - tRun)
      await a.api.call('POST', '/v1/requests', await sign('vm.destroy', { vm: id }))
      await waitFor(async () => (await readdir(join(d.state, 'vms')).catch(() => [] as string[])).length === 0,
        { timeoutMs: 60_000, intervalMs: 100, what: `VM ${name} destroyed` })
    }
    return { totalMs: summarize(total), placementMs: summarize(placement), hostStartMs: summarize(host), bootMs: summarize(boot) }
  } finally {
    // No QEMU outlives the benchmark, even when it failed.
    if (a !== undefined) {
      for (const name of await readdir(join(a.state, 'vms')).catch(() => [] as string[])) {
        const pid = Number((await readFile(join(a.state, 'vms', name, 'qemu.pid'), 'utf8').catch(() => '')).trim())
        if (pid > 0) { try { process.kill(pid, 'SIGKILL') } catch {} }
        try { execFileSync('ip', ['link', 'del', `pc-t${name.slice(3)}0`], { stdio: 'ignore' }) } catch {}
      }
    }
    await mesh.stopAll()
  }
}
