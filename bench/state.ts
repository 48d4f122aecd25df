/**
 * In-process benchmarks of the replicated state (crdt/store.ts, crdt/sync.ts):
 * - durable write: StateStore.change (sign + append + fdatasync) one after another;
 * - catch-up: a host that missed N changes syncs over an in-memory duplex; frames, legs, bytes;
 * - state growth: a mesh of H hosts, V VMs and R signed requests built with real stores and real
 *   OpenPGP signatures; size on disk, load time and RSS (in a fresh process), bytes per request.
 *
 * `node bench/state.ts --load DIR KEYFILE` is the child that loads a state and prints its figures.
 */
import { copyFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import * as A from '@automerge/automerge'
import { scalars } from '../crdt/schema.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { duplexPair } from 'it-pair/duplex'
import { StateStore, CHANGE_LOG_FILE, logRecordOf } from '../crdt/store.ts'
import { ChangeLog } from '../crdt/change-log.ts'
import { SNAPSHOT_FILE } from '../crdt/snapshot.ts'
import { foundMesh, admit, publishHostRecord } from '../crdt/membership.ts'
import { syncInitiator, syncResponder } from '../crdt/sync.ts'
import { encodeSignedChange, type SignedChange } from '../crdt/signed-changes.ts'
import { generateKey, loadPrivateKey, signDetached } from '../keys/keyring.ts'
import { buildPayload, sealEnvelope, requestId } from '../protocol/envelope.ts'
import { RequestBook, VERDICTS_FILE } from '../node/control/requests.ts'
import { silentLogger } from '../node/log.ts'
import { summarize, type Summary } from './stats.ts'

const run = promisify(execFile)

const hostRecord = (name: string) => ({ name, addresses: [`/ip4/127.0.0.1/tcp/9777/p2p/${name}`], wgPublicKey: 'x'.repeat(44), version: 'bench', updated: new Date().toISOString() })

async function newStore (dir: string, name: string, key?: PrivateKey): Promise<StateStore> {
  return await StateStore.open({ dir: join(dir, name), key: key ?? await generateKeyPair('Ed25519') })
}

async function mkStoreDir (dir: string, name: string): Promise<void> {
  const { mkdir } = await import('node:fs/promises')
  await mkdir(join(dir, name), { recursive: true })
}

/** A founder and `n - 1` joined hosts, all holding the same genesis + admissions. */
async function smallMesh (dir: string, n: number): Promise<StateStore[]> {
  const stores: StateStore[] = []
  for (let i = 0; i < n; i++) { await mkStoreDir(dir, `s${i}`); stores.push(await newStore(dir, `s${i}`)) }
  const [f, ...rest] = stores
  await foundMesh(f, { name: 'bench', host: hostRecord('s0') })
  for (const s of rest) await admit(f, s.self, s.self)
  for (const s of rest) {
    s.joining = ''
    const r = await s.receive(f.changesFor(new Map()), f.self)
    if (r.rejected.length > 0 || !s.inMesh) throw new Error(`join rejected: ${r.rejected[0]?.reason ?? 'no mesh'}`)
    s.joining = undefined
    await s.change('join', d => { d.host = scalars({ ...hostRecord(s.self), updated: new Date().toISOString() }) })
  }
  return stores
}

export interface DurableResult { commitMs: Summary, commitsPerSecond: number, concurrentPerSecond: number }

/** Sequential local commits (each awaited: signed, appended, fdatasync'd), then 32 in flight. */
export async function durableWrites (n: number): Promise<DurableResult> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-bench-durable-'))
  try {
    const [s] = await smallMesh(dir, 1)
    const self = s.self
    for (let i = 0; i < 20; i++) await s.change('warm', d => { d.host!.updated = `w${i}` })
    const lat: number[] = []
    const t0 = performance.now()
    for (let i = 0; i < n; i++) {
      const t = performance.now()
      // The host record's timestamp, written as the daemon writes it (crdt/membership.ts: a scalar).
      await s.change('report', d => { d.host!.updated = scalars(new Date(Date.now() + i).toISOString()) })
      lat.push(performance.now() - t)
    }
    const commitsPerSecond = n / ((performance.now() - t0) / 1000)
    const t1 = performance.now()
    await Promise.all(Array.from({ length: n }, async (_, i) => await s.change('report', d => { d.host!.updated = scalars(`c${i}`) })))
    const concurrentPerSecond = n / ((performance.now() - t1) / 1000)
    await s.close()
    return { commitMs: summarize(lat), commitsPerSecond, concurrentPerSecond }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** Two in-memory libp2p-like streams; every chunk written is counted per direction, in order. */
function countedPair (): { a: Stream, b: Stream, legs: () => number, bytes: { ab: number, ba: number }, frames: { ab: number, ba: number } } {
  const [x, y] = duplexPair<any>()
  const order: string[] = []
  const bytes = { ab: 0, ba: 0 }
  const frames = { ab: 0, ba: 0 }
  const wrap = (d: typeof x, dir: 'ab' | 'ba'): Stream => {
    const sink = d.sink
    return {
      source: d.source,
      sink: async (src: AsyncIterable<any>) => {
        await sink((async function * () {
          for await (const chunk of src) {
            const len = chunk.byteLength as number
            bytes[dir] += len; frames[dir]++
            if (order.at(-1) !== dir) order.push(dir)
            yield chunk
          }
        })())
      },
      close: async () => {},
      closeRead: async () => {},
      closeWrite: async () => {},
      abort: () => {}
    } as unknown as Stream
  }
  return { a: wrap(x, 'ab'), b: wrap(y, 'ba'), legs: () => order.length, bytes, frames }
}

export interface CatchUpResult { missing: number, legs: number, roundTrips: number, wireBytes: number, changeBytes: number, signedBytes: number, ratio: number, applyMs: number }

/** B misses `n` changes A made to its own record (VM reports); B initiates one sync. */
export async function catchUp (n: number): Promise<CatchUpResult> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-bench-catchup-'))
  try {
    const [a, b] = await smallMesh(dir, 2)
    const before = new Map(a.frontier().map(e => [e.author, { seq: e.seq, hash16: e.hash16 }]))
    for (let i = 0; i < n; i++) {
      const id = (i % 100).toString(16).padStart(64, '0')
      await a.change('vm report', d => {
        d.host!.vms ??= {}
        d.host!.vms[id] = scalars({ status: (['starting', 'running', 'stopping', 'stopped'] as const)[i % 4], since: new Date(Date.now() + i).toISOString() })
      })
    }
    const missing = a.changesFor(before)
    const changeBytes = missing.reduce((s, c) => s + c.change.length, 0)
    const signedBytes = missing.reduce((s, c) => s + encodeSignedChange(c).length, 0)
    const p = countedPair()
    const t0 = performance.now()
    const [init] = await Promise.all([syncInitiator(p.a, b, a.self), syncResponder(p.b, a, b.self, silentLogger)])
    const applyMs = performance.now() - t0
    if (init.received.applied.length !== n || b.digestInput().join() !== a.digestInput().join()) {
      throw new Error(`catch-up did not converge: applied ${init.received.applied.length} of ${n}, rejected ${init.received.rejected.length}`)
    }
    const wireBytes = p.bytes.ab + p.bytes.ba
    await a.close(); await b.close()
    return { missing: n, legs: p.legs(), roundTrips: p.legs() / 2, wireBytes, changeBytes, signedBytes, ratio: wireBytes / changeBytes, applyMs }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export interface GrowthResult {
  hosts: number, vms: number, requests: number, changes: number,
  diskBytes: number, bytesPerRequest: number, requestChangeBytes: number,
  signMsEach: number, buildSeconds: number,
  loadMs: Summary, verifyMs: Summary, rssMiB: Summary,
  /** The snapshot written by the store at close, and how long that close took. */
  snapshotBytes: number, snapshotWriteMs: number,
  /** Load by replaying the whole log (no snapshot), then judging every request (no kept verdicts). */
  replayMs: Summary, verifyAllMs: Summary
}

/**
 * H hosts; R requests: V `vm.create` (each claimed by a host and reported starting then running)
 * and R − V `vm.stop`/`vm.start` on those VMs (each answered by a status report of the host).
 * Every request is a real OpenPGP-signed envelope stored by the host that received it; every
 * change is made and signed by its host's own store; an observer's log then holds them all.
 */
export async function stateGrowth (hosts: number, vms: number, requests: number, loads: number): Promise<GrowthResult> {
  // PICOCLOUD_BENCH_GROWTH_DIR=DIR keeps the built state in DIR and reuses it on the next run
  // (the build takes minutes); by default the state is built afresh in a temp dir and removed.
  const keep = process.env.PICOCLOUD_BENCH_GROWTH_DIR
  const dir = keep ?? await mkdtemp(join(tmpdir(), 'pc-bench-growth-'))
  try {
    const built = keep === undefined ? undefined : await readBuilt(dir, hosts, vms, requests)
    const b = built ?? await buildGrowth(dir, hosts, vms, requests)
    if (keep !== undefined && built === undefined) await writeFile(join(dir, BUILT_FILE), JSON.stringify({ hosts, vms, requests, ...b }))
    // The same log alone: what a host loads with no usable snapshot (the first start after an
    // upgrade, or a snapshot lost or damaged).
    await mkStoreDir(dir, 'obs-replay')
    await copyFile(join(dir, 'obs', CHANGE_LOG_FILE), join(dir, 'obs-replay', CHANGE_LOG_FILE))
    // What a daemon holding this log has on disk: it opened the state once, judged the requests
    // (and kept its verdicts, node/control/requests.ts) and stopped cleanly, so the store's own policy
    // wrote its snapshot (crdt/snapshot.ts) at close.
    await rm(join(dir, 'obs', SNAPSHOT_FILE), { force: true })
    await rm(join(dir, 'obs', VERDICTS_FILE), { force: true })
    const obs = await StateStore.open({ dir: join(dir, 'obs'), key: await generateKeyPair('Ed25519') })
    const book = new RequestBook(obs, silentLogger)
    await book.verifyPending()
    await book.saveVerdicts()
    const tClose = performance.now()
    await obs.close()
    const snapshotWriteMs = performance.now() - tClose
    const snapshotBytes = (await stat(join(dir, 'obs', SNAPSHOT_FILE))).size
    const diskBytes = (await stat(join(dir, 'obs', CHANGE_LOG_FILE))).size
    const load = async (sub: string): Promise<{ loadMs: number, verifyMs: number, rssMiB: number }> => {
      const { stdout } = await run(process.execPath, [import.meta.filename, '--load', join(dir, sub)], { maxBuffer: 1 << 20 })
      const r = JSON.parse(stdout) as { loadMs: number, verifyMs: number, rssMiB: number, requests: number }
      if (r.requests !== requests) throw new Error(`loaded ${r.requests} requests, expected ${requests}`)
      return r
    }
    const loadMs: number[] = []; const verifyMs: number[] = []; const rss: number[] = []; const replayMs: number[] = []; const verifyAllMs: number[] = []
    for (let i = 0; i < loads; i++) {
      const r = await load('obs')
      loadMs.push(r.loadMs); verifyMs.push(r.verifyMs); rss.push(r.rssMiB)
      const full = await load('obs-replay')
      replayMs.push(full.loadMs); verifyAllMs.push(full.verifyMs)
    }
    return {
      hosts, vms, requests, changes: b.changes, diskBytes, bytesPerRequest: diskBytes / requests, requestChangeBytes: b.requestChangeBytes,
      signMsEach: b.signMsEach, buildSeconds: b.buildSeconds, loadMs: summarize(loadMs), verifyMs: summarize(verifyMs), rssMiB: summarize(rss),
      snapshotBytes, snapshotWriteMs, replayMs: summarize(replayMs), verifyAllMs: summarize(verifyAllMs)
    }
  } finally {
    if (keep === undefined) await rm(dir, { recursive: true, force: true })
  }
}

const BUILT_FILE = 'built.json'
interface Built { changes: number, requestChangeBytes: number, signMsEach: number, buildSeconds: number }

async function readBuilt (dir: string, hosts: number, vms: number, requests: number): Promise<Built | undefined> {
  try {
    const b = JSON.parse(await readFile(join(dir, BUILT_FILE), 'utf8'))
    if (b.hosts === hosts && b.vms === vms && b.requests === requests) return b as Built
    throw new Error(`${dir} holds a state of another size; remove it first`)
  } catch (err: any) {
    if (err.code === 'ENOENT') return undefined
    throw err
  }
}

/** Builds the mesh's state into `dir`: one store per host, and the observer's log in `dir/obs`. */
async function buildGrowth (dir: string, hosts: number, vms: number, requests: number): Promise<Built> {
  const tBuild = performance.now()
  const stores = await smallMesh(dir, hosts)
  const meshId = stores[0].meshId as string
  // A user key, trusted and published by every host (as `trust add` does).
  const keyring = join(dir, 'keyring')
  const { fingerprint, publicKey } = await generateKey(keyring, { userIds: ['Bench <bench@example.org>'], type: 'ed25519' })
  const key = await loadPrivateKey(keyring, fingerprint)
  for (const s of stores) {
    await publishHostRecord(s, hostRecord(s.self))
    await s.change('trust', d => { d.host!.keys = { [fingerprint]: scalars(publicKey) } })
  }
  const tSign = performance.now()
  const envelopes: Array<{ id: string, payload: string, signature: string }> = []
  const now = Date.now()
  const vmIds: string[] = []
  for (let i = 0; i < requests; i++) {
    const payload = i < vms
      ? buildPayload('vm.create', { name: `vm${i}`, image: 'debian-12', type: 'small', nics: [{ net: 'lan' }], labels: { tier: 'web' } }, { mesh: meshId, issuer: fingerprint, now })
      : buildPayload(i % 2 === 0 ? 'vm.stop' : 'vm.start', { vm: vmIds[i % vms] }, { mesh: meshId, issuer: fingerprint, now })
    const env = await sealEnvelope(payload, async d => await signDetached(key, d))
    const id = requestId(payload)
    if (i < vms) vmIds.push(id)
    envelopes.push({ id, payload: env.payload, signature: env.signature })
  }
  const signMsEach = (performance.now() - tSign) / requests
  let requestChangeBytes = 0
  for (let i = 0; i < requests; i++) {
    const e = envelopes[i]
    const via = stores[i % hosts]
    const sc = await via.change(`request ${e.id}`, d => {
      d.requests ??= {}
      // As node/control/requests.ts stores them: immutable strings (a plain string is a text CRDT, one op per character).
      d.requests[e.id] = scalars({ payload: e.payload, signature: e.signature, at: new Date(now).toISOString() })
    }) as SignedChange
    requestChangeBytes += encodeSignedChange(sc).length
    const vm = vmIds[i % vms]
    const host = stores[(i % vms) % hosts]
    const report = async (status: 'starting' | 'running' | 'stopped'): Promise<void> => {
      await host.change(`vm ${status}`, d => {
        d.host!.vms ??= {}
        d.host!.vms[vm] = scalars({ status, since: new Date().toISOString() })
      })
    }
    if (i < vms) {
      await host.change('claim', d => { d.host!.claims ??= {}; d.host!.claims[vm] = scalars({ at: new Date().toISOString() }) })
      await report('starting'); await report('running')
    } else {
      await report(i % 2 === 0 ? 'stopped' : 'running')
    }
  }
  // The observer's durable log holds every host's changes, as receive() would have persisted
  // them (validation is measured elsewhere: catch-up); any order loads, Automerge sorts by deps.
  const all = new Map<string, Uint8Array>()
  for (const s of stores) for (const c of s.feeds.get(s.self)?.changesAfter(0) ?? []) all.set(A.decodeChange(c.change).hash as string, logRecordOf(c))
  for (const s of stores) await s.close()
  await mkStoreDir(dir, 'obs')
  const { log } = await ChangeLog.open(join(dir, 'obs', CHANGE_LOG_FILE))
  await Promise.all([...all.values()].map(async rec => await log.append(rec)))
  await log.close()
  return { changes: all.size, requestChangeBytes: requestChangeBytes / requests, signMsEach, buildSeconds: (performance.now() - tBuild) / 1000 }
}

if (process.argv[2] === '--load') {
  // StateStore.open derives only its actor from the key; no change is made, so any key will do
  // (and the process exits without close, so it writes no snapshot).
  const dir = process.argv[3]
  const key = await generateKeyPair('Ed25519')
  const t0 = performance.now()
  const store = await StateStore.open({ dir, key })
  const loadMs = performance.now() - t0
  // What a daemon does next: judge every stored request (OpenPGP verification of each, unless
  // a verdict kept by the previous run still holds).
  const book = new RequestBook(store, silentLogger)
  const t1 = performance.now()
  await book.verifyPending()
  const verifyMs = performance.now() - t1
  globalThis.gc?.()
  const status = await readFile('/proc/self/status', 'utf8')
  const rssMiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]) / 1024
  console.log(JSON.stringify({ loadMs, verifyMs, rssMiB, requests: store.doc.requests.size }))
  process.exit(0)
}
