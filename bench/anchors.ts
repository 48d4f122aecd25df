/**
 * The anchors picocloud is compared with, run on this machine in the same run:
 * - Serf (Debian `serf`): agents on 127.0.0.1, user events without coalescing, receipt time taken
 *   by an event handler that appends `date +%s%N` to a file per agent; idle footprint of an agent.
 * - etcd (Debian `etcd-server`): a 3-member cluster on loopback, one client putting keys one after
 *   another through the gRPC gateway (`POST /v3/kv/put`) with a keep-alive connection.
 * Everything (processes, data dirs, nft table) is removed when a benchmark ends, also on failure.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { Agent, request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { waitFor } from '../test/helpers/wait.ts'
import { summarize, type Summary } from './stats.ts'
import { CLK_TCK, cpuTicks, freePort, rssMiB, sh, sleep, stopProcs, tcpWireBytes } from './procs.ts'

export async function missingTool (tool: string): Promise<string | undefined> {
  return await sh('sh', ['-c', `command -v ${tool}`]).then(() => undefined, () => `${tool} is not installed`)
}

interface SerfCluster { dir: string, procs: ChildProcess[], rpc: string[], binds: number[], files: string[] }

async function startSerf (n: number): Promise<SerfCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-bench-serf-'))
  const c: SerfCluster = { dir, procs: [], rpc: [], binds: [], files: [] }
  try {
    for (let i = 0; i < n; i++) {
      const bind = await freePort()
      const rpc = await freePort()
      const file = join(dir, `s${i}.events`)
      const handler = join(dir, `s${i}.sh`)
      await writeFile(handler, `#!/bin/sh\np=$(cat)\necho "$p $(date +%s%N)" >> ${file}\n`)
      await chmod(handler, 0o755)
      const args = ['agent', `-node=s${i}`, `-bind=127.0.0.1:${bind}`, `-rpc-addr=127.0.0.1:${rpc}`,
        `-event-handler=user:bench=${handler}`, '-log-level=warn']
      // -retry-join: the first agent may not listen yet; a plain -join gives up at once.
      if (i > 0) args.push(`-retry-join=127.0.0.1:${c.binds[0]}`, '-retry-interval=1s')
      const p = spawn('serf', args, { stdio: 'ignore' })
      c.procs.push(p); c.rpc.push(`127.0.0.1:${rpc}`); c.binds.push(bind); c.files.push(file)
    }
    await waitFor(async () => {
      const out = await sh('serf', ['members', `-rpc-addr=${c.rpc[0]}`, '-status=alive'])
      return out.trim().split('\n').length >= n
    }, { timeoutMs: 60_000, intervalMs: 500, what: `${n} Serf agents alive` })
    return c
  } catch (err) {
    await stopSerf(c)
    throw err
  }
}

async function stopSerf (c: SerfCluster): Promise<void> {
  await stopProcs(c.procs)
  await rm(c.dir, { recursive: true, force: true })
}

async function receipts (c: SerfCluster): Promise<Map<string, number[]>> {
  const seen = new Map<string, number[]>()
  for (const f of c.files) {
    const text = await readFile(f, 'utf8').catch(() => '')
    for (const line of text.split('\n')) {
      const [id, ns] = line.trim().split(' ')
      if (id === undefined || ns === undefined) continue
      const list = seen.get(id) ?? []
      list.push(Number(BigInt(ns) / 1000n) / 1000) // ms
      seen.set(id, list)
    }
  }
  return seen
}

/**
 * Serf user events without coalescing, fired one at a time from agent i mod n; latency = last
 * agent's handler timestamp − first agent's (the origin's own handler runs too, like picocloud's
 * origin applying its own change).
 */
export async function serfDissemination (n: number, events: number): Promise<Summary & { lost: number }> {
  const c = await startSerf(n)
  try {
    await sleep(2000)
    const lat: number[] = []
    let lost = 0
    for (let i = 0; i < events; i++) {
      const id = `e${i}`
      await sh('serf', ['event', `-rpc-addr=${c.rpc[i % n]}`, '-coalesce=false', 'bench', id])
      try {
        const times = await waitFor(async () => { const t = (await receipts(c)).get(id); return t !== undefined && t.length >= n && t },
          { timeoutMs: 15_000, intervalMs: 20, what: `Serf event ${id} on all ${n} agents` })
        lat.push(Math.max(...times) - Math.min(...times))
      } catch {
        // Serf's user events are best effort: one that some agent never ran is counted, not timed.
        lost++
      }
    }
    if (lat.length === 0) throw new Error(`no Serf event reached all ${n} agents`)
    return { ...summarize(lat), lost }
  } finally {
    await stopSerf(c)
  }
}

export interface Footprint { rssMiB: Summary, cpuPercent: Summary, kbitPerSecond: Summary }

/**
 * Idle footprint of Serf agents: RSS, CPU over the window (/proc/<pid>/stat), and bytes on the
 * wire: UDP gossip counted by an nftables table on the agents' bind ports (sport = sent, dport =
 * received, IP length) plus TCP push/pull from `ss` (see tcpWireBytes).
 */
export async function serfFootprint (n: number, windowMs: number, sample = 3): Promise<Footprint> {
  const c = await startSerf(n)
  const table = `pcbench${process.pid}`
  let nft = false
  try {
    await sleep(5000) // membership settles
    const agents = c.procs.slice(0, sample).map((p, i) => ({ pid: p.pid as number, port: c.binds[i] }))
    const rules = agents.flatMap(a => [`add rule inet ${table} out udp sport ${a.port} counter`, `add rule inet ${table} out udp dport ${a.port} counter`])
    await sh('nft', [`add table inet ${table}`])
    nft = true
    await sh('nft', [`add chain inet ${table} out { type filter hook output priority 0 ; policy accept ; }`])
    for (const r of rules) await sh('nft', [r])
    const udp = async (): Promise<number[]> => {
      const out = JSON.parse(await sh('nft', ['-j', 'list', 'chain', 'inet', table, 'out'])) as { nftables: Array<{ rule?: { expr: Array<{ counter?: { bytes: number } }> } }> }
      const counters = out.nftables.filter(x => x.rule !== undefined).map(x => x.rule?.expr.find(e => e.counter !== undefined)?.counter?.bytes ?? 0)
      return agents.map((_, i) => counters[2 * i] + counters[2 * i + 1])
    }
    const t0 = performance.now()
    const cpu0 = await Promise.all(agents.map(async a => await cpuTicks(a.pid)))
    const tcp0 = await Promise.all(agents.map(async a => await tcpWireBytes(a.pid)))
    const udp0 = await udp()
    await sleep(windowMs)
    const secs = (performance.now() - t0) / 1000
    const cpu1 = await Promise.all(agents.map(async a => await cpuTicks(a.pid)))
    const tcp1 = await Promise.all(agents.map(async a => await tcpWireBytes(a.pid)))
    const udp1 = await udp()
    return {
      rssMiB: summarize(await Promise.all(agents.map(async a => await rssMiB(a.pid)))),
      cpuPercent: summarize(agents.map((_, i) => 100 * (cpu1[i] - cpu0[i]) / CLK_TCK / secs)),
      kbitPerSecond: summarize(agents.map((_, i) => 8 * ((tcp1[i] - tcp0[i]) + (udp1[i] - udp0[i])) / 1000 / secs))
    }
  } finally {
    if (nft) await sh('nft', ['delete', 'table', 'inet', table]).catch(() => {})
    await stopSerf(c)
  }
}

interface EtcdCluster { dir: string, procs: ChildProcess[], clients: string[], log: string }

async function startEtcd (): Promise<EtcdCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-bench-etcd-'))
  const c: EtcdCluster = { dir, procs: [], clients: [], log: '' }
  try {
    const peers = await Promise.all([0, 1, 2].map(async () => await freePort()))
    const clients = await Promise.all([0, 1, 2].map(async () => await freePort()))
    const cluster = peers.map((p, i) => `m${i}=http://127.0.0.1:${p}`).join(',')
    for (let i = 0; i < 3; i++) {
      const p = spawn('etcd', ['--name', `m${i}`, '--data-dir', join(dir, `m${i}`),
        '--listen-peer-urls', `http://127.0.0.1:${peers[i]}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peers[i]}`,
        '--listen-client-urls', `http://127.0.0.1:${clients[i]}`, '--advertise-client-urls', `http://127.0.0.1:${clients[i]}`,
        '--initial-cluster', cluster, '--initial-cluster-state', 'new', '--initial-cluster-token', `bench-${process.pid}`,
        '--log-level', 'error', '--logger', 'zap'], { stdio: ['ignore', 'ignore', 'pipe'] })
      p.stderr?.on('data', d => { c.log = (c.log + String(d)).slice(-4000) })
      c.procs.push(p)
      c.clients.push(`http://127.0.0.1:${clients[i]}`)
    }
    await waitFor(async () => (await sh('etcdctl', ['--endpoints', c.clients.join(','), 'endpoint', 'health'], { timeoutMs: 5000 })
      .then(() => true, () => false)), { timeoutMs: 60_000, intervalMs: 500, what: 'a healthy 3-member etcd cluster' })
    return c
  } catch (err: any) {
    await stopEtcd(c)
    throw new Error(`${err.message}\n${c.log}`)
  }
}

async function stopEtcd (c: EtcdCluster): Promise<void> {
  await stopProcs(c.procs)
  await rm(c.dir, { recursive: true, force: true })
}

async function post (agent: Agent, url: string, body: unknown): Promise<unknown> {
  const u = new URL(url)
  const payload = JSON.stringify(body)
  return await new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, res => {
      const chunks: Buffer[] = []
      res.on('data', (d: Buffer) => chunks.push(d))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        if ((res.statusCode ?? 500) >= 400) reject(new Error(`etcd ${u.pathname}: HTTP ${res.statusCode ?? '?'} ${text}`))
        else resolve(JSON.parse(text))
      })
    })
    req.on('error', reject)
    req.end(payload)
  })
}

const b64 = (s: string): string => Buffer.from(s).toString('base64')

export interface EtcdResult { putMs: Summary, putsPerSecond: number, visibleAllMs: Summary }

/**
 * One client, sequential puts to the leader's gateway (each returns after the Raft quorum of 2/3
 * has fsynced the entry). Then "visible on all replicas": a put followed by serializable reads on
 * every member until each returns the value.
 */
export async function etcdPuts (n: number, valueBytes = 256): Promise<EtcdResult> {
  const c = await startEtcd()
  const agent = new Agent({ keepAlive: true, maxSockets: 4 })
  try {
    // Write to the leader, as a client that knows it would.
    const statuses = await Promise.all(c.clients.map(async u => await post(agent, `${u}/v3/maintenance/status`, {}) as { header: { member_id: string }, leader: string }))
    const leader = c.clients[Math.max(0, statuses.findIndex(s => s.header.member_id === s.leader))]
    const value = b64('x'.repeat(valueBytes))
    for (let i = 0; i < 20; i++) await post(agent, `${leader}/v3/kv/put`, { key: b64(`warm${i}`), value })
    const lat: number[] = []
    const t0 = performance.now()
    for (let i = 0; i < n; i++) {
      const s = performance.now()
      await post(agent, `${leader}/v3/kv/put`, { key: b64(`k${i}`), value })
      lat.push(performance.now() - s)
    }
    const putsPerSecond = n / ((performance.now() - t0) / 1000)
    const visible: number[] = []
    for (let i = 0; i < Math.min(50, n); i++) {
      const key = b64(`v${i}`)
      const s = performance.now()
      await post(agent, `${leader}/v3/kv/put`, { key, value })
      await Promise.all(c.clients.map(async u => {
        for (;;) {
          const r = await post(agent, `${u}/v3/kv/range`, { key, serializable: true }) as { kvs?: unknown[] }
          if ((r.kvs?.length ?? 0) > 0) return
        }
      }))
      visible.push(performance.now() - s)
    }
    return { putMs: summarize(lat), putsPerSecond, visibleAllMs: summarize(visible) }
  } finally {
    agent.destroy()
    await stopEtcd(c)
  }
}
