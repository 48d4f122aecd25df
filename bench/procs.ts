/**
 * Bench helpers: forming a mesh of real daemons without overloading a small machine, free ports,
 * and per-process figures from /proc (RSS, CPU) and `ss` (TCP bytes on the wire).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { promisify } from 'node:util'
import { TestMesh, type TestDaemon } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'

const run = promisify(execFile)
export const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/**
 * Starts `n` daemons a few at a time (on 2 cores, 10+ Node processes booting at once take longer
 * than the helper's start timeout), then init + admit + join through the API (not the CLI, which
 * costs a process start each), and waits for a full mesh of connections.
 */
export async function formMesh (mesh: TestMesh, n: number, config = '', env: Record<string, string> = {}, batch = 2): Promise<TestDaemon[]> {
  const ds: TestDaemon[] = []
  for (let i = 0; i < n; i += batch) {
    ds.push(...await Promise.all(Array.from({ length: Math.min(batch, n - i) }, async (_, j) => await mesh.daemon(`h${i + j}`, config, env))))
  }
  const [first, ...rest] = ds
  await first.api.call('POST', '/v1/init', { name: 'bench-mesh' })
  const addr = (await first.id()).addresses[0]
  for (const d of rest) {
    await first.api.call('POST', '/v1/admit', { peerId: (await d.id()).peerId, name: d.name })
  }
  for (const d of rest) await d.api.call('POST', '/v1/join', { address: addr })
  await waitFor(async () => (await Promise.all(ds.map(async d => (await d.status()).peers.length))).every(k => k >= n - 1),
    { timeoutMs: 60_000 + n * 3000, intervalMs: 500, what: `a full mesh of connections among ${n} daemons` })
  return ds
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0))
    })
  })
}

export async function rssMiB (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN) / 1024
}

/** utime + stime of a process (and its waited-for children), in clock ticks (100/s on Linux). */
export async function cpuTicks (pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields after the name start at index 3 (state); utime is field 14, stime 15, cutime 16, cstime 17
  return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])
}
export const CLK_TCK = 100

/**
 * Bytes on the wire of a process's TCP sockets from `ss -tinp`: payload sent + received plus
 * 52 bytes of IP + TCP (with timestamps) headers per segment, so figures compare with packet
 * counters. Sockets that close during a window are missed (an idle mesh keeps its connections).
 */
export async function tcpWireBytes (pid: number): Promise<number> {
  const { stdout } = await run('ss', ['-tinpH'], { maxBuffer: 64 * 1024 * 1024 })
  const lines = stdout.split('\n')
  let total = 0
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i].includes(`pid=${pid},`)) continue
    const info = lines[i] + ' ' + (lines[i + 1] ?? '')
    const num = (k: string): number => Number(new RegExp(`\\b${k}:(\\d+)`).exec(info)?.[1] ?? 0)
    total += num('bytes_sent') + num('bytes_received') + 52 * (num('segs_out') + num('segs_in'))
  }
  return total
}

/** Runs a command to completion, rejecting with its stderr on a non-zero exit. */
export async function sh (cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  const { stdout } = await run(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 })
  return stdout
}

export async function stopProcs (procs: ChildProcess[]): Promise<void> {
  await Promise.all(procs.map(async p => {
    if (p.exitCode !== null || p.signalCode !== null) return
    const exited = new Promise(resolve => p.once('exit', resolve))
    p.kill('SIGKILL')
    await exited
  }))
}

export { spawn }
