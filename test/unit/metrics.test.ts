import { describe, it, expect, afterEach } from 'vitest'
import { request } from 'node:http'
import { formatExposition, formatFamily, formatValue, MetricsRegistry, MetricsServer, reconcileCollector, metricsOf, CONTENT_TYPE, type MetricFamily } from '../../node/metrics.ts'
import { parseListenAddress } from '../../node/config.ts'

async function get (port: number, path: string, method = 'GET'): Promise<{ status: number, type: string, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, res => {
      let body = ''
      res.on('data', d => { body += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('Prometheus text exposition format 0.0.4', () => {
  it('writes HELP, TYPE and samples with escaped labels', () => {
    const f: MetricFamily = {
      name: 'picocloud_mesh_vms',
      help: 'VMs by status.\nSecond line with a \\ backslash.',
      type: 'gauge',
      samples: [
        { labels: { status: 'running' }, value: 2 },
        { labels: { status: 'say "hi"\\\n' }, value: 0.5 }
      ]
    }
    expect(formatFamily(f)).toBe([
      '# HELP picocloud_mesh_vms VMs by status.\\nSecond line with a \\\\ backslash.',
      '# TYPE picocloud_mesh_vms gauge',
      'picocloud_mesh_vms{status="running"} 2',
      'picocloud_mesh_vms{status="say \\"hi\\"\\\\\\n"} 0.5',
      ''
    ].join('\n'))
  })

  it('writes special values as Prometheus spells them', () => {
    expect(formatValue(NaN)).toBe('NaN')
    expect(formatValue(Infinity)).toBe('+Inf')
    expect(formatValue(-Infinity)).toBe('-Inf')
    expect(formatValue(1e21)).toBe('1e+21')
    expect(formatValue(-3)).toBe('-3')
  })

  it('merges families of the same name, keeps summaries\' _sum and _count, and ends with a newline', () => {
    const reconcile = reconcileCollector('vm', () => ({ passes: 4, errors: 1, lastMs: 250, totalMs: 1000 }))() as MetricFamily[]
    const net = reconcileCollector('net', () => ({ passes: 2, errors: 0, lastMs: 10, totalMs: 30 }))() as MetricFamily[]
    const text = formatExposition([...reconcile, ...net])
    expect(text.endsWith('\n')).toBe(true)
    expect(text.match(/^# TYPE picocloud_reconcile_duration_seconds summary$/gm)).toHaveLength(1)
    expect(text).toContain('picocloud_reconcile_duration_seconds_sum{component="vm"} 1\n')
    expect(text).toContain('picocloud_reconcile_duration_seconds_count{component="vm"} 4\n')
    expect(text).toContain('picocloud_reconcile_duration_seconds_count{component="net"} 2\n')
    expect(text).toContain('picocloud_reconcile_last_duration_seconds{component="vm"} 0.25\n')
    expect(text).toContain('picocloud_reconcile_errors_total{component="vm"} 1\n')
    // every sample line parses: name{labels} value
    for (const line of text.trimEnd().split('\n')) {
      expect(line).toMatch(/^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|NaN|[+-]Inf))$/)
    }
  })

  it('refuses bad metric and label names', () => {
    expect(() => formatFamily({ name: 'bad-name', help: '', type: 'gauge', samples: [] })).toThrow(/metric name/)
    expect(() => formatFamily({ name: 'ok', help: '', type: 'gauge', samples: [{ labels: { 'bad-label': 'x' }, value: 1 }] })).toThrow(/label name/)
  })

  it('a failing collector does not break the scrape; it is counted', async () => {
    const r = new MetricsRegistry()
    r.register(() => { throw new Error('boom') })
    r.register(async () => [{ name: 'x_total', help: 'x', type: 'counter', samples: [{ value: 3 }] }])
    const text = await r.render()
    expect(text).toContain('x_total 3\n')
    expect(text).toContain('picocloud_metrics_collector_errors 1\n')
  })

  it('metricsOf gives one registry per owner', () => {
    const a = {}; const b = {}
    expect(metricsOf(a)).toBe(metricsOf(a))
    expect(metricsOf(a)).not.toBe(metricsOf(b))
  })
})

describe('metrics_listen addresses', () => {
  it('parses ADDRESS:PORT, [IPv6]:PORT and :PORT', () => {
    expect(parseListenAddress('x', '127.0.0.1:9778')).toEqual({ host: '127.0.0.1', port: 9778 })
    expect(parseListenAddress('x', '[::1]:9778')).toEqual({ host: '::1', port: 9778 })
    expect(parseListenAddress('x', ':9778')).toEqual({ host: '0.0.0.0', port: 9778 })
    expect(parseListenAddress('x', 'localhost:0')).toEqual({ host: 'localhost', port: 0 })
  })
  it('refuses what is not one', () => {
    for (const bad of ['9778', '127.0.0.1', '127.0.0.1:99999', '::1:9778', 'http://127.0.0.1:9778', '']) {
      expect(() => parseListenAddress('metrics_listen', bad), bad).toThrow(/is not ADDRESS:PORT/)
    }
  })
})

describe('the metrics server', () => {
  let server: MetricsServer | undefined
  afterEach(async () => { await server?.stop(); server = undefined })

  it('serves /metrics with the 0.0.4 content type, 404 elsewhere, 405 for POST', async () => {
    const r = new MetricsRegistry()
    r.register(() => [{ name: 'picocloud_peers_connected', help: 'peers', type: 'gauge', samples: [{ value: 2 }] }])
    server = new MetricsServer('127.0.0.1:0', r)
    const { port } = await server.start()
    const ok = await get(port, '/metrics')
    expect(ok.status).toBe(200)
    expect(ok.type).toBe(CONTENT_TYPE)
    expect(ok.body).toContain('# TYPE picocloud_peers_connected gauge\npicocloud_peers_connected 2\n')
    expect((await get(port, '/nope')).status).toBe(404)
    expect((await get(port, '/metrics', 'POST')).status).toBe(405)
  })
})
