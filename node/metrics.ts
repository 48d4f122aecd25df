/**
 * Prometheus metrics, off by default: `metrics_listen = "127.0.0.1:9778"` in the config (or
 * `picocloud daemon --metrics-listen ADDR:PORT`) serves the text exposition format 0.0.4 at
 * `GET /metrics` with a plain node:http server. No client library: a handful of gauges and counters
 * do not need one.
 *
 * Components register a collector: a function that returns metric families when scraped (values
 * are read at scrape time from the component's own counters, so nothing is kept twice).
 *
 * @example
 * // a reconciler, wherever it lives, with a `stats` like VmReconciler's:
 * metricsOf(node).register(reconcileCollector('net', () => netReconciler.stats))
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { PicocloudHost } from './host.ts'
import type { Logger } from './log.ts'
import { parseListenAddress } from './config.ts'
import { vmStatus } from './control/index.ts'

export type MetricType = 'gauge' | 'counter' | 'summary' | 'untyped'
export type Labels = Record<string, string>

export interface Sample {
  labels?: Labels
  value: number
  /** Suffix of the sample name (`_sum`, `_count` of a summary). */
  suffix?: string
}

export interface MetricFamily {
  name: string
  help: string
  type: MetricType
  samples: Sample[]
}

export type Collector = () => MetricFamily[] | Promise<MetricFamily[]>

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/

const escapeHelp = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
const escapeLabel = (s: string): string => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')

export function formatValue (v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}

/** One family in the text format: `# HELP`, `# TYPE`, then its samples, one a line. */
export function formatFamily (f: MetricFamily): string {
  if (!NAME_RE.test(f.name)) throw new Error(`bad metric name ${JSON.stringify(f.name)}`)
  const lines = [`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`]
  for (const s of f.samples) {
    const entries = Object.entries(s.labels ?? {})
    for (const [k] of entries) if (!LABEL_RE.test(k) || k.startsWith('__')) throw new Error(`bad label name ${JSON.stringify(k)} on ${f.name}`)
    const labels = entries.length === 0 ? '' : `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`
    lines.push(`${f.name}${s.suffix ?? ''}${labels} ${formatValue(s.value)}`)
  }
  return lines.join('\n') + '\n'
}

/** Families with the same name (from different collectors) are merged; the output ends in a newline. */
export function formatExposition (families: MetricFamily[]): string {
  const byName = new Map<string, MetricFamily>()
  for (const f of families) {
    const seen = byName.get(f.name)
    if (seen === undefined) byName.set(f.name, { ...f, samples: [...f.samples] })
    else seen.samples.push(...f.samples)
  }
  return [...byName.values()].map(formatFamily).join('')
}

/** A family from a map of label value → number (e.g. VMs by status). */
export function byLabel (name: string, help: string, type: MetricType, label: string, counts: Map<string, number> | Record<string, number>): MetricFamily {
  const entries = counts instanceof Map ? [...counts] : Object.entries(counts)
  return { name, help, type, samples: entries.sort(([a], [b]) => a.localeCompare(b)).map(([v, n]) => ({ labels: { [label]: v }, value: n })) }
}

export const single = (name: string, help: string, type: MetricType, value: number, labels?: Labels): MetricFamily =>
  ({ name, help, type, samples: [{ value, ...(labels === undefined ? {} : { labels }) }] })

export class MetricsRegistry {
  private readonly collectors: Collector[] = []

  register (c: Collector): void { this.collectors.push(c) }

  /** Every collector's families, rendered; a collector that throws is reported, not fatal. */
  async render (): Promise<string> {
    const families: MetricFamily[] = []
    let failed = 0
    for (const c of this.collectors) {
      try {
        families.push(...await c())
      } catch {
        failed++
      }
    }
    families.push(single('picocloud_metrics_collector_errors', 'Collectors that failed during this scrape.', 'gauge', failed))
    return formatExposition(families)
  }
}

const registries = new WeakMap<object, MetricsRegistry>()

/** The registry of a node (or any owner): components that hold the node register here. */
export function metricsOf (owner: object): MetricsRegistry {
  let r = registries.get(owner)
  if (r === undefined) { r = new MetricsRegistry(); registries.set(owner, r) }
  return r
}

/** The shape reconcilers keep their timings in (node/compute/reconciler.ts `stats`). */
export interface ReconcileStatsLike { passes: number, errors: number, lastMs: number, totalMs: number }

/** Passes, errors and durations of one reconciler, labelled by component. */
export function reconcileCollector (component: string, stats: () => ReconcileStatsLike | undefined): Collector {
  return () => {
    const s = stats()
    if (s === undefined) return []
    const labels = { component }
    return [
      { name: 'picocloud_reconcile_duration_seconds', help: 'Time spent in reconcile passes.', type: 'summary', samples: [{ suffix: '_sum', labels, value: s.totalMs / 1000 }, { suffix: '_count', labels, value: s.passes }] },
      single('picocloud_reconcile_last_duration_seconds', 'Duration of the last reconcile pass.', 'gauge', s.lastMs / 1000, labels),
      single('picocloud_reconcile_errors_total', 'Reconcile passes or actions that failed.', 'counter', s.errors, labels)
    ]
  }
}

function count<T> (items: Iterable<T>, key: (t: T) => string | undefined): Map<string, number> {
  const m = new Map<string, number>()
  for (const t of items) {
    const k = key(t)
    if (k !== undefined) m.set(k, (m.get(k) ?? 0) + 1)
  }
  return m
}

/**
 * The node's own metrics: membership, peers, VMs, requests, changes, images, reconcilers. Counters
 * of changes start when this is called (at daemon start).
 */
export function registerNodeMetrics (node: PicocloudHost, registry: MetricsRegistry = metricsOf(node)): MetricsRegistry {
  const changes = { local: 0, remote: 0 }
  const rejected = { misbehaviour: 0, other: 0 }
  node.store.on('change', ({ changes: cs, local }) => { changes[local ? 'local' : 'remote'] += cs.length })
  node.store.on('rejected', r => { rejected[r.misbehaviour ? 'misbehaviour' : 'other']++ })
  const started = Date.now()

  registry.register(() => {
    const doc = node.store.doc
    const status = node.status()
    const peers = new Set(status.peers.map(p => p.peerId))
    const members = Object.values(doc.members ?? {}).filter(m => m.expelled === undefined).length
    const hosts = node.membership.hosts()
    return [
      single('picocloud_info', 'This daemon: version, peer id and mesh (value 1).', 'gauge', 1, { version: status.version, peer_id: node.peerId, mesh: node.store.meshId ?? '' }),
      single('picocloud_uptime_seconds', 'Seconds since the daemon started.', 'gauge', Math.round((Date.now() - started) / 1000)),
      single('picocloud_peers_connected', 'Peers with an open libp2p connection to this host.', 'gauge', peers.size),
      single('picocloud_members', 'Members of the mesh (not expelled), this host included.', 'gauge', members),
      single('picocloud_hosts_reachable', 'Members connected or heard recently, this host included.', 'gauge', hosts.filter(h => h.reachable).length),
      single('picocloud_penalised_peers', 'Peers with a misbehaviour score.', 'gauge', node.mesh.penaltyList().length),
      single('picocloud_state_changes', 'Signed changes in the replicated state.', 'gauge', node.store.changeCount),
      single('picocloud_state_pending_changes', 'Received changes waiting for their dependencies.', 'gauge', node.store.pendingCount),
      single('picocloud_state_log_bytes', 'Size of the change log on disk.', 'gauge', node.store.logBytes),
      byLabel('picocloud_changes_applied_total', 'Changes applied to the state since start, by origin (local: made here; remote: received).', 'counter', 'origin', changes),
      byLabel('picocloud_changes_rejected_total', 'Received changes rejected since start (misbehaviour: bad signature, forbidden write, equivocation).', 'counter', 'kind', rejected)
    ]
  })

  registry.register(() => {
    if (!node.store.inMesh) return []
    const world = node.control.world()
    const vms = [...world.vms.values()]
    const here = vms.filter(v => v.host === node.peerId)
    const requests = [...world.requests.values()]
    const rejections = new Map<string, number>()
    for (const r of requests) {
      if (r.status !== 'rejected') continue
      for (const reason of new Set(r.reasons.map(x => x.reason))) rejections.set(reason, (rejections.get(reason) ?? 0) + 1)
    }
    return [
      byLabel('picocloud_host_vms', 'VMs placed on this host, by status.', 'gauge', 'status', count(here, v => vmStatus(v).status)),
      byLabel('picocloud_mesh_vms', 'VMs of the whole mesh, by status (destroyed and rejected included).', 'gauge', 'status', count(vms, v => vmStatus(v).status)),
      byLabel('picocloud_mesh_requests', 'Signed requests in the replicated state, by outcome as this host sees it.', 'gauge', 'status', count(requests, r => r.status)),
      byLabel('picocloud_mesh_requests_rejected', 'Rejected requests in the replicated state, by reason (a request counts once per distinct reason).', 'gauge', 'reason', rejections),
      byLabel('picocloud_mesh_networks', 'Private networks of the mesh.', 'gauge', 'state', { active: world.nets.size }),
      byLabel('picocloud_mesh_images', 'Images in the mesh catalogue.', 'gauge', 'state', { active: world.images.size })
    ]
  })

  registry.register(() => {
    const s = node.control.requests.submitted
    return [
      single('picocloud_requests_accepted_total', 'Requests submitted through this host\'s socket and accepted into the state.', 'counter', s.accepted),
      byLabel('picocloud_requests_refused_total', 'Requests submitted through this host\'s socket and refused, by error code (e.g. BAD_SIGNATURE, REQUEST_EXPIRED).', 'counter', 'code', s.refused)
    ]
  })

  registry.register(async () => {
    const held = await node.compute.images.list()
    return [
      single('picocloud_image_fetched_bytes_total', 'Image bytes received from peers since start.', 'counter', node.compute.images.stats.downloadedBytes),
      single('picocloud_images_stored', 'Images in this host\'s store.', 'gauge', held.length),
      single('picocloud_images_stored_bytes', 'Bytes of the images in this host\'s store.', 'gauge', held.reduce((a, i) => a + i.size, 0))
    ]
  })

  registry.register(reconcileCollector('vm', () => node.compute.reconciler?.stats))
  registry.register(reconcileCollector('net', () => node.network.stats()))
  return registry
}

/** A node:http server answering `GET /metrics` (and `/` with a pointer to it). */
export class MetricsServer {
  private server?: Server
  /** What is served; may be set after start (the daemon binds the port before the node exists). */
  registry: MetricsRegistry
  private readonly listen: string
  private readonly log?: Logger

  constructor (listen: string, registry: MetricsRegistry = new MetricsRegistry(), log?: Logger) {
    this.listen = listen
    this.registry = registry
    this.log = log
  }

  /** Listens; resolves with the address actually bound (port 0 picks a free one). */
  async start (): Promise<{ host: string, port: number }> {
    const { host, port } = parseListenAddress('metrics_listen', this.listen)
    const server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://metrics').pathname
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('only GET\n')
        return
      }
      if (path !== '/metrics') {
        res.writeHead(path === '/' ? 200 : 404, { 'content-type': 'text/plain' }).end(path === '/' ? 'picocloud: metrics at /metrics\n' : 'not found; metrics are at /metrics\n')
        return
      }
      this.registry.render().then(body => {
        res.writeHead(200, { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(body) })
        res.end(req.method === 'HEAD' ? undefined : body)
      }, (err: any) => {
        this.log?.error('metrics scrape failed', { error: err?.message ?? String(err) })
        res.writeHead(500, { 'content-type': 'text/plain' }).end('scrape failed\n')
      })
    })
    server.headersTimeout = 10_000
    server.requestTimeout = 30_000
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => { server.off('error', reject); resolve() })
    })
    this.server = server
    const a = server.address() as AddressInfo
    return { host: a.address, port: a.port }
  }

  async stop (): Promise<void> {
    const s = this.server
    if (s === undefined) return
    this.server = undefined
    s.closeAllConnections()
    await new Promise<void>(resolve => s.close(() => resolve()))
  }
}
