/**
 * Control-plane benchmarks on loopback with real daemon processes:
 * - dissemination: a change committed on one host until every other host has applied it;
 * - idle footprint of the daemons in the mesh: RSS, CPU, bytes on the wire;
 * - CLI round trips (process start to exit): `picocloud status`, `picocloud vm list`.
 */
import { spawn } from 'node:child_process'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { TestMesh, type TestDaemon, ROOT } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'
import { summarize, type Summary } from './stats.ts'
import { CLK_TCK, cpuTicks, formMesh, rssMiB, sleep, tcpWireBytes } from './procs.ts'
import type { Footprint } from './anchors.ts'

export interface DisseminationResult { hosts: number, changes: number, latencyMs: Summary }

/** Watches every daemon's event stream and records when each applies a given change hash. */
function watchChanges (daemons: TestDaemon[]): { seen: Map<string, number[]>, stop: () => void } {
  const seen = new Map<string, number[]>()
  const ac = new AbortController()
  for (const d of daemons) {
    void d.api.events(e => {
      if (e.type !== 'state.changed') return
      const t = performance.now()
      for (const c of (e.changes as Array<{ hash: string }>)) {
        const list = seen.get(c.hash) ?? []
        list.push(t)
        seen.set(c.hash, list)
      }
    }, ac.signal)
  }
  return { seen, stop: () => ac.abort() }
}

export async function dissemination (hosts: number, changes: number): Promise<DisseminationResult> {
  const mesh = await TestMesh.create()
  try {
    // formMesh waits until everyone is connected to everyone.
    const ds = await formMesh(mesh, hosts)
    await new Promise(resolve => setTimeout(resolve, 1500 + hosts * 100)) // let gossipsub form its mesh (a few heartbeats)
    const w = watchChanges(ds)
    await new Promise(resolve => setTimeout(resolve, 200))
    const latencies: number[] = []
    try {
      for (let i = 0; i < changes; i++) {
        const origin = ds[i % ds.length]
        const peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
        const before = new Set(w.seen.keys())
        await origin.api.call('POST', '/v1/admit', { peerId: peer })
        const hash = await waitFor(() => [...w.seen.keys()].find(h => !before.has(h)), { what: 'the change event' })
        const times = await waitFor(() => { const t = w.seen.get(hash); return t !== undefined && t.length >= hosts && t }, { timeoutMs: 10_000, what: `change ${hash} on all ${hosts} hosts` })
        latencies.push(Math.max(...times) - Math.min(...times))
      }
    } finally {
      w.stop()
    }
    return { hosts, changes, latencyMs: summarize(latencies) }
  } finally {
    await mesh.stopAll()
  }
}

/**
 * Idle footprint of the daemons of a `hosts` mesh (default heartbeat and reconnect intervals):
 * after `settleMs`, over a `windowMs` window: RSS, CPU (utime+stime from /proc/<pid>/stat) and
 * bytes on the wire of each daemon's TCP connections (`ss -tinp`, payload + 52 B per segment).
 */
export async function footprint (hosts: number, settleMs: number, windowMs: number): Promise<Footprint> {
  const mesh = await TestMesh.create()
  try {
    const ds = await formMesh(mesh, hosts)
    await sleep(settleMs)
    const pids = ds.map(d => d.proc?.pid as number)
    const t0 = performance.now()
    const cpu0 = await Promise.all(pids.map(cpuTicks))
    const net0 = await Promise.all(pids.map(tcpWireBytes))
    await sleep(windowMs)
    const secs = (performance.now() - t0) / 1000
    const cpu1 = await Promise.all(pids.map(cpuTicks))
    const net1 = await Promise.all(pids.map(tcpWireBytes))
    return {
      rssMiB: summarize(await Promise.all(pids.map(rssMiB))),
      cpuPercent: summarize(pids.map((_, i) => 100 * (cpu1[i] - cpu0[i]) / CLK_TCK / secs)),
      kbitPerSecond: summarize(pids.map((_, i) => 8 * (net1[i] - net0[i]) / 1000 / secs))
    }
  } finally {
    await mesh.stopAll()
  }
}

/** `bin/picocloud ARGS` round trips (process start to exit) against one daemon, per command. */
export async function cliRoundTrips (runs: number, commands: string[][]): Promise<Summary[]> {
  const mesh = await TestMesh.create()
  try {
    const [d] = await mesh.form(['solo'])
    const out: Summary[] = []
    for (const args of commands) {
      const times: number[] = []
      for (let i = 0; i < runs + 1; i++) {
        const t0 = performance.now()
        await new Promise<void>((resolve, reject) => {
          const p = spawn(`${ROOT}/bin/picocloud`, ['--socket', d.socket, ...args], { stdio: 'ignore', env: { ...process.env, PICOCLOUD_KEYRING: `${mesh.dir}/no-keyring` } })
          p.on('error', reject)
          p.on('close', code => code === 0 ? resolve() : reject(new Error(`picocloud ${args.join(' ')} exited ${code}`)))
        })
        if (i > 0) times.push(performance.now() - t0) // the first run fills the compile cache
      }
      out.push(summarize(times))
    }
    return out
  } finally {
    await mesh.stopAll()
  }
}
