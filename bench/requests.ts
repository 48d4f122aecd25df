/**
 * Signed requests:
 * - verifications per second on one core: validateEnvelope (canonical JSON, schema, OpenPGP
 *   Ed25519 detached signature) with an in-memory public key lookup;
 * - submit-to-placed with real daemons (hypervisor = "none"): POST /v1/requests on one host until
 *   that host reports the request `placed`; the settle period is the scheduler's (node/control/scheduler.ts);
 * - sustained rate: requests submitted round-robin at a fixed rate; the mesh keeps up when every
 *   request is placed and the last one's latency is no worse than the median (no backlog).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type * as openpgp from 'openpgp'
import { generateKey, loadPrivateKey, signDetached, keyVerifier } from '../keys/keyring.ts'
import { buildPayload, sealEnvelope, validateEnvelope, type Envelope } from '../protocol/envelope.ts'
import { TestMesh, type TestDaemon } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'
import type { RequestView } from '../node/control/views.ts'
import { MAX_REQUEST_WAIT_S } from '../protocol/api.ts'
import { summarize, type Summary } from './stats.ts'
import { formMesh, sleep } from './procs.ts'

export async function verificationsPerSecond (seconds: number, rounds: number): Promise<Summary> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-bench-verify-'))
  try {
    const { fingerprint } = await generateKey(dir, { userIds: ['Bench <bench@example.org>'], type: 'ed25519' })
    const key = await loadPrivateKey(dir, fingerprint)
    const pub = key.toPublic()
    const verify = keyVerifier(async fpr => fpr === fingerprint ? pub : undefined)
    const now = Date.now()
    const envelopes: Envelope[] = []
    for (let i = 0; i < 200; i++) {
      const payload = buildPayload('vm.create', { name: `web${i}`, image: 'debian-12', type: 'small', nics: [{ net: 'lan' }], labels: { tier: 'web' } }, { mesh: 'bench-mesh', issuer: fingerprint, now })
      envelopes.push(await sealEnvelope(payload, async d => await signDetached(key, d)))
    }
    const check = async (i: number): Promise<unknown> => await validateEnvelope(envelopes[i % envelopes.length], { meshId: 'bench-mesh', now, seen: () => false, verify })
    for (let i = 0; i < 50; i++) await check(i)
    const rates: number[] = []
    for (let r = 0; r < rounds; r++) {
      let n = 0
      const t0 = performance.now()
      const until = t0 + seconds * 1000
      while (performance.now() < until) await check(n++)
      rates.push(n / ((performance.now() - t0) / 1000))
    }
    return summarize(rates)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export const REQUEST_MESH_CONFIG = 'hypervisor = "none"\nvcpus = 4096\nmem_mib = 4194304\ndisk_gib = 100000\nheartbeat_interval = 1\nreconnect_interval = 1\n'

interface Requester { sign: (name: string) => Promise<Envelope> }

async function requester (dir: string, mesh: string, ds: TestDaemon[]): Promise<Requester> {
  const { fingerprint, publicKey } = await generateKey(dir, { userIds: ['Bench <bench@example.org>'], type: 'ed25519' })
  const key: openpgp.PrivateKey = await loadPrivateKey(dir, fingerprint)
  for (const d of ds) await d.api.call('POST', '/v1/trust', { publicKey })
  // Every host must see every host's trust entry before placement decisions are comparable.
  await waitFor(async () => {
    const views = await Promise.all(ds.map(async d => await d.hosts()))
    return views.every(v => v.length >= ds.length)
  }, { timeoutMs: 30_000, what: 'host records everywhere' })
  await sleep(1000)
  return {
    sign: async (name: string) => {
      const payload = buildPayload('vm.create', { name, image: 'tiny', type: 'small' }, { mesh, issuer: fingerprint, now: Date.now() })
      return await sealEnvelope(payload, async d => await signDetached(key, d))
    }
  }
}

/**
 * Submits and waits until the request is placed, by long polls the daemon answers when the
 * status changes (as the CLI waits): polling every few milliseconds loaded the daemons being
 * measured, each poll deriving their world again.
 */
async function submitAndWait (d: TestDaemon, env: Envelope, timeoutMs = 20_000): Promise<number> {
  const t0 = performance.now()
  let r = await d.api.call<RequestView>('POST', '/v1/requests', env)
  const deadline = Date.now() + timeoutMs
  while (r.status !== 'placed') {
    if (r.status === 'rejected') throw new Error(`request rejected: ${JSON.stringify(r.reasons).slice(0, 300)}`)
    const left = deadline - Date.now()
    if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for request ${r.id.slice(0, 12)} placed (${r.status})`)
    r = await d.api.call<RequestView>('GET', `/v1/requests/${r.id}?unless=${r.status}&wait=${Math.min(MAX_REQUEST_WAIT_S, Math.ceil(left / 1000))}`)
  }
  return performance.now() - t0
}

export interface RequestMeshResult { placedMs: Summary, sustained: Array<{ perSecond: number, placedMs: Summary, keptUp: boolean }> }

/** One mesh of `hosts` daemons for both request benchmarks. */
export async function requestMesh (hosts: number, samples: number, rates: number[], seconds: number): Promise<RequestMeshResult> {
  const mesh = await TestMesh.create()
  const dir = await mkdtemp(join(tmpdir(), 'pc-bench-req-'))
  try {
    const ds = await formMesh(mesh, hosts, REQUEST_MESH_CONFIG)
    const meshId = (await ds[0].status()).mesh?.id as string
    const user = await requester(dir, meshId, ds)
    const lat: number[] = []
    for (let i = 0; i < samples + 2; i++) {
      const ms = await submitAndWait(ds[i % hosts], await user.sign(`p${i}`))
      if (i >= 2) lat.push(ms) // the first two warm up the daemons' code paths
    }
    const sustained: RequestMeshResult['sustained'] = []
    for (const rate of rates) {
      const n = Math.max(1, Math.round(rate * seconds))
      const envs = await Promise.all(Array.from({ length: n }, async (_, i) => await user.sign(`r${rate}-${i}`)))
      const start = performance.now()
      const done = envs.map(async (env, i) => {
        const at = start + (i * 1000) / rate
        await sleep(Math.max(0, at - performance.now()))
        return await submitAndWait(ds[i % hosts], env, 60_000)
      })
      const results = await Promise.allSettled(done)
      const ok = results.filter(r => r.status === 'fulfilled').map(r => r.value)
      const s = summarize(ok)
      // No backlog: everything placed, and the tail of the run no slower than 2× the median.
      const last = ok.slice(-Math.max(1, Math.floor(n / 10)))
      const keptUp = ok.length === n && summarize(last).p50 <= 2 * s.p50 + 50
      sustained.push({ perSecond: rate, placedMs: s, keptUp })
      if (!keptUp) break
      await sleep(1000)
    }
    return { placedMs: summarize(lat), sustained }
  } finally {
    await mesh.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}
