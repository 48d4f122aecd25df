/**
 * An attacking member built on the project's own stack, for the adversarial suite
 * (test/adversarial/). It owns an Ed25519 peer key that a mesh admitted, keeps a copy of its own
 * feed (a StateStore in a temp dir, so it also knows everyone else's feeds and can say what it
 * "saw"), and signs whatever it likes with its own valid key:
 *
 * - `forge`: a change made with Automerge on a copy of a feed, any content, on top of any prefix
 *   of the feed, with extra dependencies (a chosen causal past): what the feed rules forbid.
 * - `craft`: a change re-encoded field by field (any sequence number, any dependencies).
 * - `event`: membership events with a chosen (or missing) `seen`.
 * - Over libp2p (`NetAttacker`): a node from node/mesh/p2p.ts with the member's key, the sync protocol
 *   driven frame by frame (`RawSync`: announce anything, send anything, dribble, never end), and
 *   gossip of any bytes on the mesh's change topic.
 *
 * @example
 * const m = await joinAttacker([alpha, bravo])        // admitted by alpha's operator, joined
 * const fork = m.forge(d => { d.host.name = 'fork-b' }) // signed, not appended to its copy
 * await m.push(await addressOf(bravo), [fork])         // one sync carrying just that
 * const s = await m.rawSync(await addressOf(alpha))    // or frame by frame
 * await s.write(helloFrame({ mesh: m.meshId, frontier: [], evidence: [] }))
 */
import * as A from '@automerge/automerge'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { byteStream, type ByteStream } from 'it-byte-stream'
import * as varint from 'uint8-varint'
import { Uint8ArrayList } from 'uint8arraylist'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { signChangeHash, encodeSignedChange, type SignedChange } from '../../crdt/signed-changes.ts'
import { StateStore } from '../../crdt/store.ts'
import { SYNC_PROTOCOL, MAX_FRAME, syncInitiator, type SyncStats } from '../../crdt/sync.ts'
import { seenNow } from '../../crdt/membership.ts'
import { scalars, storedEvent, type MembershipEvent, type Seen } from '../../crdt/schema.ts'
import { actorForPeer, peerForActor } from '../../keys/peer-key.ts'
import { createP2PNode, type P2PNode } from '../../node/mesh/p2p.ts'
import { silentLogger } from '../../node/log.ts'
import type { TestDaemon } from './daemon.ts'
import { waitFor } from './wait.ts'

export interface ForgeOptions {
  /** Build on the first `base` changes of the feed (default: all of them). */
  base?: number
  /** Changes of other feeds applied first: the change then depends on them too. */
  extraDeps?: SignedChange[]
  message?: string
  /** Seconds since the epoch recorded in the change. */
  time?: number
}

/**
 * A change by `key`'s author made on a copy of `feed` (its own changes, oldest first), whatever
 * `fn` writes. Not applied anywhere: what a member that does not play by the rules can sign.
 */
export function forge (key: PrivateKey, feed: readonly SignedChange[], fn: (d: any) => void, opts: ForgeOptions = {}): SignedChange {
  const actor = actorForPeer(peerIdFromPrivateKey(key))
  let doc = A.init<any>({ actor })
  const base = feed.slice(0, opts.base ?? feed.length)
  ;[doc] = A.applyChanges(doc, [...base, ...(opts.extraDeps ?? [])].map(c => c.change))
  const before = A.getHeads(doc)
  doc = A.change(doc, { message: opts.message ?? 'forged', time: opts.time ?? Math.floor(Date.now() / 1000) }, fn)
  const [meta] = A.getChangesMetaSince(doc, before)
  if (meta === undefined) throw new Error('forge: fn changed nothing')
  return signChangeHash(A.getLastLocalChange(doc) as Uint8Array, meta.hash, key)
}

/** Changes forged one on top of the other (each `fns[i]` on the feed plus the ones before it). */
export function forgeChain (key: PrivateKey, feed: readonly SignedChange[], fns: Array<(d: any) => void>, opts: ForgeOptions = {}): SignedChange[] {
  const out: SignedChange[] = []
  for (const fn of fns) out.push(forge(key, [...feed.slice(0, opts.base ?? feed.length), ...out], fn, { ...opts, base: undefined }))
  return out
}

/**
 * `change` decoded, edited by `edit` (sequence number, dependencies, operations…), encoded again
 * and signed by `key`: a change Automerge itself would never make.
 */
export function craft (key: PrivateKey, change: SignedChange, edit: (d: A.DecodedChange) => void): SignedChange {
  const d = A.decodeChange(change.change)
  edit(d)
  const { hash: _hash, ...rest } = d
  const bytes = A.encodeChange(rest as any)
  const hash = A.decodeChange(bytes).hash
  return signChangeHash(bytes, hash, key)
}

/** A copy of `s` with its signature broken (one bit flipped). */
export function badSignature (s: SignedChange): SignedChange {
  const signature = s.signature.slice()
  signature[7] ^= 1
  return { change: s.change, signature }
}

/** The same change signed by another key (its actor still names the author). */
export function signedBy (s: SignedChange, key: PrivateKey): SignedChange {
  return signChangeHash(s.change, A.decodeChange(s.change).hash, key)
}

export const peerOf = (key: PrivateKey): string => peerIdFromPrivateKey(key).toString()
export const randomPeer = async (): Promise<string> => peerOf(await generateKeyPair('Ed25519'))

/** A membership event as a member writes it, with the `seen` it chooses. */
export function event (e: { op: 'admit', peer: string, name?: string } | { op: 'expel', peer: string, reason?: string } |
{ op: 'policy', admit: 'any-member' | 'expellers', expellers: string[] }, seen: Seen, at = new Date()): MembershipEvent {
  const when = at.toISOString()
  if (e.op === 'admit') return { op: 'admit', peer: e.peer, name: e.name ?? '', at: when, seen }
  if (e.op === 'expel') return { op: 'expel', peer: e.peer, reason: e.reason ?? '', at: when, seen }
  return { op: 'policy', admit: e.admit, expellers: e.expellers, at: when, seen }
}

/** A writer for `StateStore.change`/`forge` that appends membership events. */
export const pushEvents = (...events: MembershipEvent[]) => (d: any): void => {
  d.events ??= []
  for (const e of events) d.events.push(storedEvent(e))
}

/** The `seen` of `store` with some feeds left out (a member pretending not to know them). */
export function seenWithout (store: StateStore, ...peers: string[]): Seen {
  const s = seenNow(store)
  for (const p of peers) delete s[p]
  return s
}

// ——— the sync protocol frame by frame (crdt/sync.ts) ———

export const FRAME = { HELLO: 1, CHANGES: 2, END: 3, ERROR: 4, EVIDENCE: 5 } as const

export function frame (type: number, body: Uint8Array = new Uint8Array()): Uint8Array {
  const out = new Uint8Array(body.length + 1)
  out[0] = type
  out.set(body, 1)
  return out
}

export interface HelloBody { mesh: string, frontier: Array<[string, number, string]>, evidence: string[] }

export const helloFrame = (h: HelloBody): Uint8Array => frame(FRAME.HELLO, new TextEncoder().encode(JSON.stringify(h)))

/** One CHANGES frame holding `items` (encoded signed changes, or any bytes). */
export function itemsFrame (type: number, items: Uint8Array[]): Uint8Array {
  const size = items.reduce((n, i) => n + 4 + i.length, 0)
  const body = new Uint8Array(size)
  const view = new DataView(body.buffer)
  let off = 0
  for (const i of items) { view.setUint32(off, i.length); off += 4; body.set(i, off); off += i.length }
  return frame(type, body)
}

export const changesFrame = (changes: SignedChange[]): Uint8Array => itemsFrame(FRAME.CHANGES, changes.map(c => encodeSignedChange(c)))

/** The frontier of a store as a HELLO lists it. */
export const frontierOf = (store: StateStore): Array<[string, number, string]> => store.frontier().map(e => [e.author, e.seq, e.hash16])

/** A hash prefix as a HELLO carries it. */
export const hash16 = (s: SignedChange): string => A.decodeChange(s.change).hash.slice(0, 16)

/**
 * One sync stream driven by hand: length-prefixed frames (or raw bytes) written and read as the
 * test says. The peer's side is the real responder of a daemon.
 */
export class RawSync {
  readonly stream: Stream
  private readonly bytes: ByteStream<Stream>
  bytesWritten = 0

  constructor (stream: Stream) {
    this.stream = stream
    this.bytes = byteStream(stream)
  }

  async write (f: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.bytes.write(new Uint8ArrayList(varint.encode(f.length), f), { signal })
    this.bytesWritten += f.length
  }

  /** Bytes without a length prefix (a length announced earlier, then dribbled). */
  async writeRaw (b: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.bytes.write(b, { signal })
    this.bytesWritten += b.length
  }

  async read (signal?: AbortSignal): Promise<{ type: number, body: Uint8Array }> {
    const len = new Uint8ArrayList()
    let n = -1
    while (n < 0) {
      len.append(await this.bytes.read({ bytes: 1, signal }))
      try { n = varint.decode(len) } catch (err) { if (!(err instanceof RangeError)) throw err }
    }
    const buf = (await this.bytes.read({ bytes: n, signal })).subarray()
    return { type: buf[0], body: buf.subarray(1) }
  }

  /** Reads the peer's HELLO (parsed) and then its frames up to END. */
  async readHelloAndChanges (signal?: AbortSignal): Promise<{ hello: HelloBody, frames: Array<{ type: number, body: Uint8Array }> }> {
    const first = await this.read(signal)
    if (first.type !== FRAME.HELLO) throw new Error(`expected HELLO, got frame ${first.type}: ${new TextDecoder().decode(first.body).slice(0, 200)}`)
    const hello = JSON.parse(new TextDecoder().decode(first.body)) as HelloBody
    const frames: Array<{ type: number, body: Uint8Array }> = []
    for (;;) {
      const f = await this.read(signal)
      if (f.type === FRAME.END) break
      frames.push(f)
    }
    return { hello, frames }
  }

  /** `changes` in CHANGES frames of at most 1 MiB (as crdt/sync.ts batches them), then END. */
  async sendChanges (changes: SignedChange[], end = true): Promise<void> {
    let batch: SignedChange[] = []
    let size = 0
    for (const c of changes) {
      const n = c.change.length + c.signature.length + 8
      if (batch.length > 0 && size + n > MAX_FRAME) { await this.write(changesFrame(batch)); batch = []; size = 0 }
      batch.push(c); size += n
    }
    if (batch.length > 0) await this.write(changesFrame(batch))
    if (end) await this.write(frame(FRAME.END))
  }

  /** True once the peer has reset or closed the stream (a write fails or the stream is no longer open). */
  get cut (): boolean {
    return this.stream.status !== 'open' || (this.stream.writeStatus !== 'ready' && this.stream.writeStatus !== 'writing')
  }

  abort (): void { this.stream.abort(new Error('done')) }
}

const peerForActorString = (actor: string): string => peerForActor(actor).toString()

// ——— a member on the network ———

/** A libp2p node that lets everything through its own gater, as mesh.test.ts's rogue. */
export async function rogueNode (key: PrivateKey): Promise<P2PNode> {
  const n = await createP2PNode({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], announce: [], gater: {}, version: 'rogue' })
  await n.start()
  return n
}

export class NetAttacker {
  readonly key: PrivateKey
  readonly peerId: string
  readonly dir: string
  readonly store: StateStore
  readonly node: P2PNode
  private subscribed = false

  private constructor (key: PrivateKey, dir: string, store: StateStore, node: P2PNode) {
    this.key = key
    this.peerId = peerOf(key)
    this.dir = dir
    this.store = store
    this.node = node
  }

  /** A member-to-be: key, its own state dir (removed by `stop`), a started node. */
  static async create (key?: PrivateKey): Promise<NetAttacker> {
    const k = key ?? await generateKeyPair('Ed25519')
    const dir = await mkdtemp(join(tmpdir(), 'pc-attacker-'))
    const store = await StateStore.open({ dir, key: k, log: silentLogger })
    const node = await rogueNode(k)
    return new NetAttacker(k, dir, store, node)
  }

  get addresses (): string[] { return this.node.getMultiaddrs().map(a => a.toString()) }
  get meshId (): string { return this.store.meshId as string }
  get actor (): string { return actorForPeer(peerIdFromPrivateKey(this.key)) }
  get topic (): string { return `/picocloud/${this.meshId}/changes/2` }
  /** Its own feed as it holds it (the chain honest hosts are meant to have). */
  get feed (): SignedChange[] { return this.store.feeds.get(this.peerId)?.changesAfter(0) ?? [] }

  async dialSync (address: string): Promise<Stream> {
    return await this.node.dialProtocol(multiaddr(address), SYNC_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
  }

  /** An honest sync (crdt/sync.ts) of its copy with the daemon at `address`. */
  async sync (address: string): Promise<SyncStats> {
    return await syncInitiator(await this.dialSync(address), this.store, 'daemon', AbortSignal.timeout(30_000))
  }

  /** Joins through `address` (it must have been admitted) and publishes a record of itself. */
  async join (address: string, name = 'mallory'): Promise<void> {
    this.store.joining = ''
    try { await this.sync(address) } finally { this.store.joining = undefined }
    if (!this.store.inMesh) throw new Error('attacker: no mesh received on join')
    await this.append(d => {
      d.host = scalars({ name, addresses: this.addresses.map(a => `${a}/p2p/${this.peerId}`), wgPublicKey: '', version: '0.1.0', updated: new Date().toISOString() })
    })
  }

  /** A valid change of its own feed, appended to its copy (not sent). */
  async append (fn: (d: any) => void): Promise<SignedChange> {
    const s = await this.store.change('attacker', fn)
    if (s === undefined) throw new Error('attacker: change changed nothing')
    return s
  }

  /** A change on top of its own feed that is not appended (a fork, or one that breaks the rules). */
  forge (fn: (d: any) => void, opts: ForgeOptions = {}): SignedChange {
    return forge(this.key, this.feed, fn, opts)
  }

  /** A sync stream to drive by hand; HELLO not sent yet. */
  async rawSync (address: string): Promise<RawSync> {
    return new RawSync(await this.dialSync(address))
  }

  /**
   * Sends `changes` to the daemon at `address` in one sync, announcing `frontier` (default: its
   * copy's frontier, its own feed at the last change sent). Of `changes`, only those the daemon
   * lacks by its HELLO go (as an honest sender does), unless `exactly`. Returns the daemon's HELLO
   * and the error that ended the stream, if one did.
   */
  async push (address: string, changes: SignedChange[], opts: { frontier?: Array<[string, number, string]>, exactly?: boolean } = {}): Promise<{ hello: HelloBody, error?: string }> {
    const s = await this.rawSync(address)
    let frontier = opts.frontier
    if (frontier === undefined) {
      frontier = frontierOf(this.store).filter(e => e[0] !== this.peerId)
      const own = changes.map(c => A.decodeChange(c.change)).filter(d => d.actor === this.actor).sort((a, b) => b.seq - a.seq)[0]
      if (own !== undefined && own.seq >= this.feed.length) frontier.push([this.peerId, own.seq, own.hash.slice(0, 16)])
      else if (this.feed.length > 0) frontier.push([this.peerId, this.feed.length, hash16(this.feed[this.feed.length - 1])])
    }
    await s.write(helloFrame({ mesh: this.meshId, frontier, evidence: [] }))
    const { hello } = await s.readHelloAndChanges(AbortSignal.timeout(20_000))
    let send = changes
    if (opts.exactly !== true) {
      const theirs = new Map(hello.frontier.map(e => [e[0], { seq: e[1], hash16: e[2] }]))
      send = changes.filter(c => {
        const d = A.decodeChange(c.change)
        const t = theirs.get(peerForActorString(d.actor))
        return t === undefined || d.seq > t.seq || (d.seq === t.seq && d.hash.slice(0, 16) !== t.hash16)
      })
    }
    try {
      await s.sendChanges(send)
      // The responder closes its side when it is done; a refusal resets the stream.
      await s.read(AbortSignal.timeout(10_000)).catch(() => undefined)
    } catch (err: any) {
      return { hello, error: err.message }
    } finally {
      await s.stream.close().catch(() => s.abort())
    }
    return { hello }
  }

  /** Subscribes to the mesh's change topic (so that gossipsub peers take its messages). */
  async subscribe (): Promise<void> {
    if (this.subscribed) return
    this.node.services.pubsub.subscribe(this.topic)
    this.subscribed = true
  }

  /** Publishes `data` (a signed change encoded, or any bytes) on the change topic. */
  async gossip (data: Uint8Array): Promise<void> {
    await this.subscribe()
    await this.node.services.pubsub.publish(this.topic, data)
  }

  async connect (address: string): Promise<void> {
    await this.node.dial(multiaddr(address), { signal: AbortSignal.timeout(10_000) })
  }

  async stop (): Promise<void> {
    await Promise.resolve(this.node.stop()).catch(() => {})
    await this.store.close().catch(() => {})
    await rm(this.dir, { recursive: true, force: true })
  }
}

/** The libp2p address of a daemon (with its peer id). */
export async function addressOf (d: TestDaemon): Promise<string> {
  return (await d.id()).addresses[0]
}

/**
 * A new attacking member of the mesh of `daemons`: admitted by the first (the CLI, as an operator
 * would), joined through it, its record handed to every daemon and listed by each.
 */
export async function joinAttacker (daemons: TestDaemon[], name = 'mallory'): Promise<NetAttacker> {
  const m = await NetAttacker.create()
  try {
    const a = await daemons[0].cli('admit', m.peerId, '--name', name)
    if (a.code !== 0) throw new Error(`admit: ${a.stderr}`)
    await m.join(await addressOf(daemons[0]), name)
    for (const d of daemons) {
      // A daemon refuses the connection of a host it does not know to be a member yet.
      await waitFor(async () => (await d.hosts()).some(h => h.peerId === m.peerId), { timeoutMs: 20_000, what: `${d.name} to learn of the admission of ${name}` })
      const r = await m.push(await addressOf(d), m.feed)
      if (r.error !== undefined) throw new Error(`push to ${d.name}: ${r.error}`)
    }
    for (const d of daemons) {
      await waitFor(async () => (await d.hosts()).some(h => h.peerId === m.peerId && h.name === name), { timeoutMs: 20_000, what: `${d.name} to list ${name}` })
    }
  } catch (err) {
    await m.stop()
    throw err
  }
  return m
}

/** Waits until the daemon holds the attacker's feed up to its last change (or `seq`). */
export async function waitForFeed (d: TestDaemon, m: NetAttacker, seq = m.feed.length): Promise<void> {
  const head = A.decodeChange(m.feed[seq - 1].change).hash
  await waitFor(async () => (await d.status()).state.heads.includes(head), { timeoutMs: 20_000, what: `${d.name} to hold change ${seq} of ${m.peerId.slice(-6)}` })
}
