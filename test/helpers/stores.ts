/**
 * In-process replicated states for tests: StateStores in a temp dir, joined and synced with the
 * real sync protocol (crdt/sync.ts) over an in-memory duplex.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { duplexPair } from 'it-pair/duplex'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { StateStore, type StoreInit } from '../../crdt/store.ts'
import { syncInitiator, syncResponder, type SyncStats } from '../../crdt/sync.ts'
import { foundMesh, admit } from '../../crdt/membership.ts'
import { silentLogger } from '../../node/log.ts'

/** A temp dir base where durable writes are cheap (tmpfs) when the machine has one. */
export const FAST_TMP = existsSync('/dev/shm') ? '/dev/shm' : tmpdir()

export const hostRecord = (name: string): { name: string, addresses: string[], wgPublicKey: string, version: string, updated: string } =>
  ({ name, addresses: [], wgPublicKey: '', version: 't', updated: new Date().toISOString() })

/** A libp2p-like stream over one end of an in-memory duplex. */
function stream (d: any): Stream {
  return Object.assign(d, {
    close: async () => {},
    closeRead: async () => {},
    closeWrite: async () => {},
    abort: () => {},
    id: 's',
    protocol: '/picocloud/sync/2.0.0',
    direction: 'outbound',
    timeline: { open: Date.now() },
    metadata: {},
    status: 'open',
    readStatus: 'ready',
    writeStatus: 'ready',
    log: Object.assign(() => {}, { error: () => {}, trace: () => {}, enabled: false })
  }) as unknown as Stream
}

/** Runs one sync (both directions) between `a` (initiator) and `b`. */
export async function sync (a: StateStore, b: StateStore): Promise<{ a: SyncStats, b: SyncStats }> {
  const [x, y] = duplexPair<any>()
  const [sa, sb] = await Promise.all([syncInitiator(stream(x), a, b.self), syncResponder(stream(y), b, a.self, silentLogger)])
  return { a: sa, b: sb }
}

export class Stores {
  dir = ''
  private readonly open: StateStore[] = []
  private n = 0

  /** `base`: where the temp dir goes (e.g. /dev/shm, where a durable write costs nothing). @default os.tmpdir() */
  async setup (base = tmpdir()): Promise<void> { this.dir = await mkdtemp(join(base, 'pc-stores-')) }

  async store (opts: { key?: PrivateKey, name?: string } & Partial<StoreInit> = {}): Promise<StateStore> {
    const dir = join(this.dir, opts.name ?? `s${this.n++}`)
    await mkdir(dir, { recursive: true })
    const s = await StateStore.open({ ...opts, dir, key: opts.key ?? await generateKeyPair('Ed25519'), log: opts.log ?? silentLogger })
    this.open.push(s)
    return s
  }

  /** Reopens a store from its state dir (after closing it). */
  async reopen (s: StateStore, key: PrivateKey, extra: Partial<StoreInit> = {}): Promise<StateStore> {
    await s.close().catch(() => {})
    this.open.splice(this.open.indexOf(s), 1)
    const r = await StateStore.open({ log: silentLogger, ...extra, dir: s.stateDir, key })
    this.open.push(r)
    return r
  }

  /** A founder and `n - 1` admitted, joined hosts, all synced. Keys come back too. */
  async mesh (n: number): Promise<{ stores: StateStore[], keys: PrivateKey[] }> {
    const keys = await Promise.all(Array.from({ length: n }, async () => await generateKeyPair('Ed25519')))
    const stores: StateStore[] = []
    for (const key of keys) stores.push(await this.store({ key }))
    const [f, ...rest] = stores
    await foundMesh(f, { name: 'test', host: hostRecord('h0') })
    for (let i = 0; i < rest.length; i++) await admit(f, rest[i].self, `h${i + 1}`)
    for (const s of rest) await joinMesh(s, f)
    for (const s of rest) await sync(s, f)
    return { stores, keys }
  }

  async teardown (): Promise<void> {
    for (const s of this.open.splice(0)) await s.close().catch(() => {})
    await rm(this.dir, { recursive: true, force: true })
  }
}

/** `s` joins the mesh of `member` as `picocloud join` does: one sync while joining, then its record. */
export async function joinMesh (s: StateStore, member: StateStore): Promise<void> {
  s.joining = ''
  try { await sync(s, member) } finally { s.joining = undefined }
  if (!s.inMesh) throw new Error('join: no mesh received')
  await s.change('join', d => { d.host = hostRecord(s.self.slice(-6)) as any })
}
