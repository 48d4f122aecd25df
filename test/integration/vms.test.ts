/**
 * VMs for real, through the daemon and the CLI: a VM boots from an image added with `image add`,
 * stops, starts, survives a `kill -9` of the daemon (adopted, not duplicated), is restarted after
 * QEMU dies, is destroyed without leftovers; a second host fetches the image from a peer, refusing
 * corrupted bytes; bad input is refused. Needs root, QEMU and the boot-disk tools.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { mkdir, readFile, readdir, rm, writeFile, copyFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { bootDisk, hasBootDiskTools } from '../../node/demo/boot-disk.ts'
import { BOOT_LINE } from '../../node/demo/tiny-image.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'

const missing = process.getuid?.() !== 0 ? 'needs root (taps, QEMU)' : await hasBootDiskTools()
if (missing !== undefined) console.warn(`skipping real VM tests: ${missing} (CI runs as root and installs them: .ci/install-system-packages)`)

const CONFIG = 'vcpus = 8\nmem_mib = 4096\ndisk_gib = 200\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'
const BOOT_MS = 180_000

describe.skipIf(missing !== undefined)('VMs through the daemon, for real (QEMU)', () => {
  let mesh: TestMesh
  let a: TestDaemon, b: TestDaemon
  let keyring: string
  let disk: string

  const vm = async (d: TestDaemon, name: string): Promise<VmView> => await d.api.call<VmView>('GET', `/v1/vms/${name}`)
  const as = async (d: TestDaemon, ...args: string[]) => await d.as(keyring, ...args)
  const qemuPids = (name: string): number[] => {
    try { return execFileSync('pgrep', ['-f', `qemu-system-x86_64.*-name ${name}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number) } catch { return [] }
  }
  const pidOf = async (d: TestDaemon, name: string): Promise<number> => Number((await readFile(join(d.state, 'vms', name, 'qemu.pid'), 'utf8')).trim())

  beforeAll(async () => {
    disk = (await bootDisk()).path
    mesh = await TestMesh.create()
    ;[a, b] = await mesh.form(['alpha', 'bravo'], CONFIG)
    keyring = join(mesh.dir, 'user-keyring')
    expect((await a.as(keyring, 'key', 'generate', '--name', 'vm user', '--email', 'vm@example.org')).code).toBe(0)
    const pub = join(mesh.dir, 'user.asc')
    await writeFile(pub, (await a.as(keyring, 'key', 'export')).stdout)
    for (const d of [a, b]) expect((await d.cli('trust', 'add', pub)).code).toBe(0)
    const added = await as(a, 'image', 'add', disk, '--name', 'tiny')
    expect(added.code, added.stderr).toBe(0)
  }, 300_000)
  afterAll(async () => {
    // Destroy what is left so no QEMU outlives the test, even when it failed.
    for (const d of [a, b]) {
      for (const name of await readdir(join(d.state, 'vms')).catch(() => [] as string[])) {
        for (const pid of qemuPids(name)) { try { process.kill(pid, 'SIGKILL') } catch {} }
        try { execFileSync('ip', ['link', 'del', `pc-t${name.slice(3)}0`], { stdio: 'ignore' }) } catch {}
      }
    }
    await mesh.stopAll()
  })

  it('a VM created through the CLI boots under QEMU, reports running, and its serial log shows it booted', async () => {
    const r = await as(a, '--json', 'vm', 'create', 't1', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--on', 'alpha')
    expect(r.code, r.stderr).toBe(0)
    expect((JSON.parse(r.stdout) as RequestView).status).toBe('placed')
    await waitFor(async () => (await vm(a, 't1')).status === 'running', { timeoutMs: 60_000, what: 't1 running' })
    await waitFor(async () => (await a.cli('vm', 'logs', 't1')).stdout.includes(BOOT_LINE), { timeoutMs: BOOT_MS, intervalMs: 500, what: 'the boot line in t1\'s serial log' })
    // B sees the same status through the replicated state.
    await waitFor(async () => (await vm(b, 't1')).status === 'running', { what: 'B to see t1 running' })
  }, BOOT_MS + 60_000)

  it('vm console attaches to the serial console on the host that runs the VM (the guest\'s shell answers)', async () => {
    const { request } = await import('node:http')
    const text = await new Promise<string>((resolve, reject) => {
      const req = request({ socketPath: a.socket, path: '/v1/vms/t1/console', headers: { connection: 'Upgrade', upgrade: 'picocloud-console' } })
      req.on('response', res => reject(new Error(`refused: HTTP ${res.statusCode ?? '?'}`)))
      req.on('upgrade', (_res, socket) => {
        let got = ''
        const timer = setInterval(() => socket.write('echo pc-console-$((6*7))\n'), 500)
        socket.on('data', d => {
          got += d
          if (got.includes('pc-console-42')) { clearInterval(timer); socket.end(); resolve(got) }
        })
        socket.on('close', () => { clearInterval(timer); resolve(got) })
      })
      req.on('error', reject)
      req.end()
    })
    expect(text).toContain('pc-console-42')
    const elsewhere = await b.cli('vm', 'console', 't1')
    expect(elsewhere.code).toBe(1)
    expect(elsewhere.stderr).toMatch(/does not run on this host/)
  }, 60_000)

  it('vm stop and vm start wait for the outcome; the host says "stopping" while the guest powers off; vm restart', async () => {
    const id = (await vm(a, 't1')).id
    const name = `pc-${id.slice(0, 8)}`
    const stop = await as(a, 'vm', 'stop', 't1')
    expect(stop.code, stop.stderr).toBe(0)
    expect(stop.stdout).toMatch(/VM t1: stopped/)
    // It returned once stopped: no QEMU left, and the host had said "stopping" first.
    expect(qemuPids(name)).toEqual([])
    const reports = (await a.api.call<Array<{ message: string | null }>>('GET', '/v1/history')).map(h => h.message ?? '').filter(m => m.includes(`${id.slice(0, 8)}=stop`))
    expect(reports.slice(-2)).toEqual([`report ${id.slice(0, 8)}=stopping`, `report ${id.slice(0, 8)}=stopped`])
    const start = await as(a, 'vm', 'start', 't1')
    expect(start.code, start.stderr).toBe(0)
    expect(start.stdout).toMatch(/VM t1: running/)
    expect(qemuPids(name)).toHaveLength(1)
    const before = qemuPids(name)[0]
    const restart = await as(a, 'vm', 'restart', 't1', '--force')
    expect(restart.code, restart.stderr).toBe(0)
    expect(restart.stdout).toMatch(/VM t1: stopped[\s\S]*VM t1: running/)
    expect(qemuPids(name)).toHaveLength(1)
    expect(qemuPids(name)[0]).not.toBe(before)
  }, 150_000)

  it('kill -9 of the daemon while the VM runs: after restart the same QEMU is adopted, not duplicated, and vm stop still works', async () => {
    const name = `pc-${(await vm(a, 't1')).id.slice(0, 8)}`
    const pid = await pidOf(a, name)
    await a.kill('SIGKILL')
    expect(qemuPids(name)).toEqual([pid])
    await a.start()
    await waitFor(async () => (await vm(a, 't1')).status === 'running', { what: 't1 running after the restart' })
    // Give the reconciler a few passes: it must not start a second QEMU.
    await waitFor(async () => (await a.status()).uptimeSeconds >= 3, { what: 'a few seconds of uptime' })
    expect(qemuPids(name)).toEqual([pid])
    expect(await pidOf(a, name)).toBe(pid)
    expect((await as(a, 'vm', 'stop', 't1')).code).toBe(0)
    await waitFor(async () => qemuPids(name).length === 0 && (await vm(a, 't1')).status === 'stopped', { timeoutMs: 60_000, what: 't1 stopped after the restart' })
    expect((await as(a, 'vm', 'start', 't1')).code).toBe(0)
    await waitFor(async () => (await vm(a, 't1')).status === 'running', { timeoutMs: 60_000, what: 't1 running' })
  }, 150_000)

  it('QEMU killed behind the daemon\'s back: failed with the reason, then restarted by the policy', async () => {
    const name = `pc-${(await vm(a, 't1')).id.slice(0, 8)}`
    const pid = await pidOf(a, name)
    process.kill(pid, 'SIGKILL')
    const failed = await waitFor(async () => { const v = await vm(a, 't1'); return v.status === 'failed' && v }, { timeoutMs: 30_000, intervalMs: 100, what: 't1 reported failed' })
    expect(failed.reason).toBeTruthy()
    await waitFor(async () => (await vm(a, 't1')).status === 'running' && qemuPids(name).length === 1 && qemuPids(name)[0] !== pid, { timeoutMs: 60_000, what: 't1 restarted with a new QEMU' })
  }, 120_000)

  it('vm destroy leaves no process, tap, socket or overlay behind', async () => {
    const id = (await vm(a, 't1')).id
    const name = `pc-${id.slice(0, 8)}`
    expect((await as(a, 'vm', 'destroy', 't1')).code).toBe(0)
    await waitFor(async () => {
      const gone = await stat(join(a.state, 'vms', name)).then(() => false, () => true)
      return gone && qemuPids(name).length === 0
    }, { timeoutMs: 60_000, what: 't1 destroyed without leftovers' })
    expect(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })).not.toContain(`pc-t${id.slice(0, 8)}`)
    expect((await a.api.call<VmView[]>('GET', '/v1/vms')).some(v => v.id === id)).toBe(false)
  }, 90_000)

  it('a VM placed on B makes B fetch the image from A; a peer serving corrupted bytes is detected', async () => {
    const sha = (await a.api.call<Array<{ name: string, sha256: string }>>('GET', '/v1/images')).find(i => i.name === 'tiny')?.sha256 as string
    // C holds a corrupted copy under the right name; A, the good holder, is down for now.
    const c = await mesh.daemon('charlie', CONFIG)
    const dir = join(c.state, 'images', 'sha256')
    await mkdir(dir, { recursive: true })
    await copyFile(disk, join(dir, sha))
    const bytes = await readFile(join(dir, sha)); bytes[1_000_000] ^= 0xff; await writeFile(join(dir, sha), bytes)
    const peerC = (await c.id()).peerId
    expect((await a.cli('admit', peerC)).code).toBe(0)
    expect((await c.cli('join', (await a.id()).addresses[0])).code).toBe(0)
    await waitFor(async () => (await a.api.call<Array<{ name: string, holders: string[] }>>('GET', '/v1/images')).find(i => i.name === 'tiny')?.holders.includes('charlie'), { what: 'C to announce its copy' })
    await a.kill('SIGKILL')

    const r = await as(b, '--json', 'vm', 'create', 't2', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--on', 'bravo')
    expect(r.code, r.stderr).toBe(0)
    const failed = await waitFor(async () => { const v = await vm(b, 't2'); return v.status === 'failed' && v }, { timeoutMs: 60_000, what: 't2 failed: only a corrupted copy is reachable' })
    expect(failed.reason).toMatch(/hash|sha256/i)
    expect(await stat(join(b.state, 'images', 'sha256', sha)).then(() => true, () => false)).toBe(false)

    await a.start()
    await waitFor(async () => (await vm(b, 't2')).status === 'running', { timeoutMs: 120_000, what: 't2 running once the good copy is reachable' })
    const stored = execFileSync('sha256sum', [join(b.state, 'images', 'sha256', sha)], { encoding: 'utf8' }).split(' ')[0]
    expect(stored).toBe(sha)
    expect((await as(b, 'vm', 'destroy', 't2')).code).toBe(0)
    await c.kill()
  }, 300_000)

  it('bad input: missing image file, unknown format, an image name of another owner, a VM bigger than any host', async () => {
    const images = JSON.stringify(await a.api.call('GET', '/v1/images'))
    const requests = (await a.api.call<VmView[]>('GET', '/v1/vms?all=1')).length
    const missingFile = await as(a, 'image', 'add', '/nonexistent/disk.img', '--name', 'x')
    expect(missingFile.code).toBe(1)
    expect(missingFile.stderr).toMatch(/no such file/)
    const fmt = await as(a, 'image', 'add', disk, '--name', 'x', '--format', 'vmdk')
    expect(fmt.code).toBe(1)
    expect(fmt.stderr).toMatch(/unknown image format "vmdk"/)
    // Nothing was stored or announced (the state itself moves on: VM reports, network status).
    expect(JSON.stringify(await a.api.call('GET', '/v1/images'))).toBe(images)
    expect((await a.api.call<VmView[]>('GET', '/v1/vms?all=1')).length).toBe(requests)

    const other = join(mesh.dir, 'other-keyring')
    expect((await a.as(other, 'key', 'generate', '--name', 'other', '--email', 'o@example.org')).code).toBe(0)
    await writeFile(join(mesh.dir, 'other.asc'), (await a.as(other, 'key', 'export')).stdout)
    expect((await a.cli('trust', 'add', join(mesh.dir, 'other.asc'))).code).toBe(0)
    const taken = await a.as(other, '--json', 'image', 'add', disk, '--name', 'tiny')
    expect(taken.code).toBe(1)
    const t = JSON.parse(taken.stdout) as RequestView
    expect(t.status).toBe('rejected')
    expect(t.reasons[0].reason).toBe('name-taken')

    const big = await as(a, '--json', 'vm', 'create', 'huge', '--image', 'tiny', '--cpus', '64', '--mem', '1024')
    expect(big.code).toBe(1)
    const h = JSON.parse(big.stdout) as RequestView
    expect(h.status).toBe('rejected')
    expect(h.reasons.map(x => x.reason)).toContain('capacity-vcpus')
  }, 120_000)
})

