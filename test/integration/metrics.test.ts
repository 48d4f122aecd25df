/**
 * A daemon with `metrics_listen` serves Prometheus metrics; a daemon without it opens no port.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createServer } from 'node:net'
import { TestMesh, cli, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

async function scrape (port: number): Promise<{ status: number, type: string | null, body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() }
}

const value = (text: string, sample: string): number | undefined => {
  const line = text.split('\n').find(l => l.startsWith(sample + ' '))
  return line === undefined ? undefined : Number(line.slice(sample.length + 1))
}

describe('Prometheus metrics of a daemon', () => {
  let mesh: TestMesh
  let a: TestDaemon
  let port: number

  beforeAll(async () => {
    mesh = await TestMesh.create()
    port = await freePort()
    a = await mesh.daemon('alpha', `metrics_listen = "127.0.0.1:${port}"\nhypervisor = "none"`)
    const b = await mesh.daemon('bravo', 'hypervisor = "none"')
    expect((await a.cli('init', '--name', 'metrics-mesh')).code).toBe(0)
    expect((await a.cli('admit', (await b.id()).peerId)).code).toBe(0)
    expect((await b.cli('join', (await a.id()).addresses[0])).code).toBe(0)
  })
  afterAll(async () => { await mesh.stopAll() })

  it('answers /metrics in the text format with the expected metric names', async () => {
    const text = await waitFor(async () => {
      const r = await scrape(port)
      return r.status === 200 && value(r.body, 'picocloud_peers_connected') === 1 && value(r.body, 'picocloud_members') === 2 && r
    }, { timeoutMs: 20_000, what: 'metrics to show one peer and two members' })
    expect(text.type).toBe('text/plain; version=0.0.4; charset=utf-8')
    for (const name of [
      'picocloud_info', 'picocloud_uptime_seconds', 'picocloud_peers_connected', 'picocloud_members', 'picocloud_hosts_reachable',
      'picocloud_state_changes', 'picocloud_changes_applied_total', 'picocloud_changes_rejected_total',
      'picocloud_host_vms', 'picocloud_mesh_vms', 'picocloud_mesh_requests', 'picocloud_mesh_requests_rejected',
      'picocloud_requests_accepted_total', 'picocloud_requests_refused_total',
      'picocloud_image_fetched_bytes_total', 'picocloud_images_stored', 'picocloud_metrics_collector_errors'
    ]) {
      expect(text.body, name).toMatch(new RegExp(`^# TYPE ${name} (gauge|counter|summary)$`, 'm'))
    }
    expect(text.body).toMatch(/^picocloud_info\{version="[^"]+",peer_id="12D3Koo\w+",mesh="[^"]+"\} 1$/m)
    expect(value(text.body, 'picocloud_changes_applied_total{origin="local"}')).toBeGreaterThan(0)
    expect(value(text.body, 'picocloud_metrics_collector_errors')).toBe(0)
  })

  it('counts a refused request by its error code', async () => {
    const r = await a.cli('request', 'submit', '/dev/null')
    expect(r.code).not.toBe(0)
    const bad: { code: unknown } = await a.api.call('POST', '/v1/requests', { payload: '{}', signature: 'x' }).then(() => ({ code: undefined }), (err: any) => err)
    expect(bad.code).toBeTypeOf('string')
    const body = (await scrape(port)).body
    expect(value(body, `picocloud_requests_refused_total{code="${String(bad.code)}"}`)).toBeGreaterThanOrEqual(1)
  })

  it('a second daemon on the same metrics address fails at once and says what to do', async () => {
    const { writeFile } = await import('node:fs/promises')
    const { join } = await import('node:path')
    const config = join(mesh.dir, 'clash.toml')
    await writeFile(config, `metrics_listen = "127.0.0.1:${port}"\nhypervisor = "none"\n`)
    const r = await cli(join(mesh.dir, 'clash.sock'), 'daemon', '--config', config, '--state', join(mesh.dir, 'clash'), '--listen', '/ip4/127.0.0.1/tcp/0')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/cannot serve metrics on 127\.0\.0\.1:\d+: the address is in use\. Change metrics_listen/)
  })
})
