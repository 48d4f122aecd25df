/**
 * Control-plane benchmarks on loopback with real daemon processes:
 * - dissemination: a change committed on one host until every other host has applied it;
 * - idle RSS of one daemon in the mesh;
 * - `picocloud status` round trip (process start to exit).
 */
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { TestMesh, type TestDaemon, ROOT } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'
import { summarize, type Summary } from './stats.ts'

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
    const ds = await mesh.form(Array.from({ length: hosts }, (_, i) => `h${i}`))
    // Everyone connected to everyone before measuring.
    await waitFor(async () => (await Promise.all(ds.map(async d => (await d.status()).peers.length))).every(n => n >= hosts - 1),
      { timeoutMs: 60_000, what: 'a full mesh of connections' })
    await new Promise(resolve => setTimeout(resolve, 1500)) // let gossipsub form its mesh (one heartbeat)
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

export async function idleRss (hosts: number, settleMs: number): Promise<{ hosts: number, rssMiB: Summary }> {
  const mesh = await TestMesh.create()
  try {
    const ds = await mesh.form(Array.from({ length: hosts }, (_, i) => `h${i}`))
    await new Promise(resolve => setTimeout(resolve, settleMs))
    const rss = await Promise.all(ds.map(async d => {
      const status = await readFile(`/proc/${d.proc?.pid ?? 0}/status`, 'utf8')
      return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN) / 1024
    }))
    return { hosts, rssMiB: summarize(rss) }
  } finally {
    await mesh.stopAll()
  }
}

export async function statusRoundTrip (runs: number): Promise<Summary> {
  const mesh = await TestMesh.create()
  try {
    const [d] = await mesh.form(['solo'])
    const times: number[] = []
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now()
      await new Promise<void>((resolve, reject) => {
        const p = spawn(`${ROOT}/bin/picocloud`, ['--socket', d.socket, 'status'], { stdio: 'ignore' })
        p.on('error', reject)
        p.on('close', code => code === 0 ? resolve() : reject(new Error(`status exited ${code}`)))
      })
      times.push(performance.now() - t0)
    }
    return summarize(times)
  } finally {
    await mesh.stopAll()
  }
}
