/**
 * A picocloud host: identity, replicated state, libp2p, sync, gossip and membership, started and
 * stopped in order. The local API (node/api) and the reconcilers call into this object; nothing
 * here knows about HTTP.
 *
 * @example
 * const node = await PicocloudNode.create(config, logger)
 * await node.start()
 * await node.init('ninux-roma')
 */
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { TopicValidatorResult, type PeerId, type PrivateKey, type Message } from '@libp2p/interface'
import { ensureDir } from './files.ts'
import type { DaemonConfig } from './config.ts'
import type { Logger } from './log.ts'
import { MembershipGate } from './gater.ts'
import { createP2PNode, type P2PNode } from './p2p.ts'
import { Penalties, type PeerPenalty } from './penalties.ts'
import { AuthorRateLimit } from './rate-limit.ts'
import { Liveness, Beats } from './liveness.ts'
import { DivergenceWatch, headsDigest } from './anti-entropy.ts'
import { loadOrCreatePeerKey, parsePeerId } from '../keys/peer-key.ts'
import { loadWireguardKey, wireguardPublicKeyForPeer, type WireguardKeyPair } from '../keys/wireguard.ts'
import { StateStore, type Rejection } from '../crdt/store.ts'
import { SYNC_PROTOCOL, SyncError, syncInitiator, syncResponder, type SyncStats } from '../crdt/sync.ts'
import { encodeSignedChange, decodeSignedChange, type SignedChange } from '../crdt/signed-changes.ts'
import { MAX_CHANGE_BYTES } from '../crdt/feed.ts'
import { foundMesh, admit, expel, publishHostRecord, setMeshPolicy } from '../crdt/membership.ts'
import { isActiveMember, scalars } from '../crdt/schema.ts'
import { openProgress, readProgress, sealProgress } from '../protocol/progress.ts'
import { vmName } from './drivers/hypervisor/types.ts'
import { assignOverlayAddresses, VXLAN_OVERHEAD_IPV6 } from './net/addressing.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { StatusView, HostView, IdView, NodeEvent } from '../protocol/api.ts'
import { RequestBook } from './requests.ts'
import { Scheduler } from './scheduler.ts'
import { hostResources } from './resources.ts'
import { trustAdd, trustRemove, trustList, republishKeys, type TrustAddInput, type TrustView } from './trust.ts'
import { listVms, findVm, vmView, requestView, type VmFilter, type VmView, type RequestView } from './views.ts'
import type { TrustEntry } from '../keys/trust-policy.ts'
import { ImageStore, type ImageInfo } from './drivers/images/store.ts'
import { IMAGE_PROTOCOL, serveImage, fetchImage, holders, type FetchProgress } from './images.ts'
import { startBulkServer, type BulkServer } from './bulk.ts'
import { VmReconciler } from './reconciler/vms.ts'
import { NetworkReconciler, deriveEndpoints, dataPlaneUnavailableReason, claimInterface } from './reconciler/network.ts'
import type { NetworkStatusView } from '../protocol/api.ts'
import type { HypervisorDriver } from './drivers/hypervisor/types.ts'

export const VERSION: string = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version

const BLOCK_MS = 10 * 60_000
// Divergence is found by the heads digests on beats (node/anti-entropy.ts); a sync with one random
// peer this often is only a safety net (e.g. for a peer whose beats we do not get).
const ANTI_ENTROPY_MS = 60_000
// A digest that still differs this long after a beat is a real divergence, not gossip in flight.
const DIVERGENCE_GRACE_MS = 1000
const DIAL_TIMEOUT_MS = 10_000
/** How long a restarted host waits to hear its own feed back from a peer before writing anyway. */
const WRITE_HOLD_MS = 10_000

/** One host's view of a network (`net show`). */
export interface NetPresence {
  peerId: string
  name: string
  vni: number
  bridge: string
  vxlan: string
  mtu: number
  fdb: Array<{ address: string, peerId: string | null, name: string | null }>
  taps: string[]
  dnsmasq: boolean
  error?: string
}

export interface NodeEvents {
  event: [NodeEvent]
}

export class PicocloudNode extends EventEmitter<NodeEvents> {
  readonly config: DaemonConfig
  readonly log: Logger
  readonly peerId: string
  readonly store: StateStore
  readonly wireguard: WireguardKeyPair
  readonly gate: MembershipGate
  readonly penalties = new Penalties()
  readonly liveness: Liveness
  private readonly key: PrivateKey
  private p2p?: P2PNode
  private readonly started = Date.now()
  private timers: NodeJS.Timeout[] = []
  private readonly syncing = new Map<string, Promise<SyncStats | undefined>>()
  private readonly resync = new Set<string>()
  private readonly nextDial = new Map<string, { at: number, backoff: number }>()
  readonly requests: RequestBook
  readonly scheduler: Scheduler
  readonly images: ImageStore
  hypervisor?: HypervisorDriver
  reconciler?: VmReconciler
  /** The data plane (node/reconciler/network.ts), when this host runs one. */
  network?: NetworkReconciler
  private networkOff?: string
  private networkBackend?: () => string | undefined
  /** Image fetches under way here, by VM id (also shown in `vm show`). */
  readonly progress = new Map<string, FetchProgress>()
  /** Fetch progress other hosts reported, by VM, with the host that reported it. */
  private readonly remoteProgress = new Map<string, FetchProgress & { host: string, at: number }>()
  private beats?: Beats
  private readonly divergence = new DivergenceWatch({
    ours: () => this.headsDigest(),
    sync: peer => { void this.syncWith(peerIdFromString(peer)).catch(() => {}) },
    graceMs: DIVERGENCE_GRACE_MS
  })
  private digestCache: { heads: string, digest: Uint8Array } = { heads: '', digest: new Uint8Array(0) }
  private meshStarted = false
  private stopping = false
  /** The image side channel (node/bulk.ts), when on. */
  private bulk?: BulkServer

  private constructor (config: DaemonConfig, log: Logger, key: PrivateKey, wireguard: WireguardKeyPair, store: StateStore) {
    super()
    this.config = config
    this.log = log
    this.key = key
    this.peerId = peerIdFromPrivateKey(key).toString()
    this.wireguard = wireguard
    this.store = store
    this.gate = new MembershipGate(this.peerId, () => this.store.doc)
    this.liveness = new Liveness(config.heartbeatInterval * 1000)
    this.requests = new RequestBook(store, log.forComponent('requests'))
    this.scheduler = new Scheduler({ store, book: this.requests, up: peer => this.isUp(peer), log: log.forComponent('scheduler') })
    this.requests.onVerified = () => this.scheduler.verdictsChanged()
    this.requests.onKeysChanged = fprs => {
      if (!this.store.inMesh || !isActiveMember(this.store.doc, this.peerId)) return
      republishKeys(this.store, fprs, async f => await this.requests.mergedKey(f))
        .then(n => { if (n > 0) this.log.info('republished merged keys (a revocation or update from another host)', { keys: n }) })
        .catch(err => this.log.warn('could not republish merged keys', { error: err.message }))
    }
    this.images = new ImageStore({ stateDir: config.state })
  }

  /** A peer is up when we are connected to it or heard its beat recently (node/liveness.ts). */
  isUp (peer: string): boolean {
    if (peer === this.peerId) return true
    if (this.liveness.alive(peer)) return true
    return this.connectedPeers().has(peer)
  }

  private connectedCache?: Set<string>
  /**
   * The peers we have a connection to, gathered once per turn of the event loop: a placement pass
   * asks for every host, and libp2p builds its list of connections anew for each call.
   */
  private connectedPeers (): Set<string> {
    if (this.connectedCache === undefined) {
      this.connectedCache = new Set(this.p2p?.getConnections().map(c => c.remotePeer.toString()))
      queueMicrotask(() => { this.connectedCache = undefined })
    }
    return this.connectedCache
  }

  /** Loads (or creates, on first start) the host's identity and state. */
  static async create (config: DaemonConfig, log: Logger): Promise<PicocloudNode> {
    try {
      await ensureDir(config.state, 0o700)
    } catch (err: any) {
      if (err?.code !== 'EACCES' && err?.code !== 'EPERM') throw err
      throw new PicocloudError(ErrorCode.Config, `cannot create the state directory ${config.state}: permission denied. Run as root, or give a directory of yours with --state DIR (and --socket PATH)`, 500)
    }
    const key = await loadOrCreatePeerKey(config.state, log)
    const wg = await loadWireguardKey(config.state, key, log)
    const store = await StateStore.open({ dir: config.state, key, log: log.forComponent('state') })
    return new PicocloudNode(config, log, key, wg, store)
  }

  get libp2p (): P2PNode {
    if (this.p2p === undefined) throw new Error('node not started')
    return this.p2p
  }

  private emitEvent (type: string, data: Record<string, unknown> = {}): void {
    this.emit('event', { type, time: new Date().toISOString(), ...data })
  }

  async start (): Promise<void> {
    this.bulk = await startBulkServer(this.config.imageListen, this.log.forComponent('images'))
    this.p2p = await createP2PNode({
      privateKey: this.key,
      listen: this.config.listen,
      announce: this.config.announce,
      gater: this.gate.gater,
      version: VERSION
    })
    const p2p = this.p2p
    await p2p.handle(SYNC_PROTOCOL, ({ stream, connection }) => {
      const remote = connection.remotePeer.toString()
      syncResponder(stream, this.store, remote, this.log.forComponent('sync'), undefined, { budget: (a, n) => this.gossipRate.take(a, n) })
        .then(stats => { this.afterSync(remote, stats) })
        .catch(err => { this.syncFailed(remote, err) })
    }, { maxInboundStreams: 4, maxOutboundStreams: 4 })

    await p2p.handle(IMAGE_PROTOCOL, ({ stream, connection }) => {
      const bulk = this.bulk === undefined ? undefined : { server: this.bulk, peer: connection.remotePeer.toString() }
      void serveImage(stream, this.images, this.log.forComponent('images'), bulk)
    }, { maxInboundStreams: 8 })

    this.beats = new Beats({
      p2p,
      liveness: this.liveness,
      intervalMs: this.config.heartbeatInterval * 1000,
      isMember: peer => isActiveMember(this.store.doc, peer),
      digest: () => this.headsDigest(),
      onBeat: (peer, digest) => this.divergence.report(peer, digest),
      log: this.log.forComponent('liveness')
    })
    await this.beats.listen()

    p2p.addEventListener('peer:connect', evt => {
      const peer = evt.detail.toString()
      this.nextDial.delete(peer)
      this.emitEvent('peer.connected', { peerId: peer })
      if (this.store.inMesh) void this.syncWith(evt.detail)
    })
    p2p.addEventListener('peer:disconnect', evt => {
      this.emitEvent('peer.disconnected', { peerId: evt.detail.toString() })
      this.divergence.forget(evt.detail.toString())
      this.scheduler.kick()
    })
    p2p.addEventListener('self:peer:update', () => { void this.publishRecord() })

    this.store.on('change', ({ changes, local }) => {
      if (local) for (const c of changes) void this.pushChange(c)
      this.enforceMembership()
      void this.requests.verifyPending()
      this.scheduler.kick()
      this.reconciler?.kick()
      this.network?.kick()
      this.emitEvent('state.changed', {
        local,
        changes: changes.map(c => ({ hash: c.hash, author: c.author })),
        heads: this.store.heads()
      })
    })
    this.store.on('rejected', r => { this.onRejected(r) })
    this.store.on('equivocation', e => {
      this.emitEvent('member.equivocated', { peerId: e.author, seq: e.seq, from: e.from })
      // The author, never the host that relayed a fork: each fork alone is a valid change.
      if (e.author !== this.peerId) this.penalise(e.author, `equivocation: signed two different changes with sequence number ${e.seq}`)
    })

    await p2p.start()
    this.log.info('started', {
      peerId: this.peerId,
      listen: p2p.getMultiaddrs().map(a => a.toString()).join(','),
      mesh: this.store.meshId ?? 'none'
    })
    if (this.store.inMesh) {
      this.holdWritesUntilSynced()
      await this.startMesh()
    }
  }

  /** Topics, beats and reconnection: everything that needs a mesh. */
  private async startMesh (): Promise<void> {
    if (this.meshStarted) return
    this.meshStarted = true
    const pubsub = this.libp2p.services.pubsub
    const changes = this.changesTopic()
    pubsub.topicValidators.set(changes, async (from, msg) => await this.validateChangeMessage(from, msg))
    pubsub.addEventListener('message', evt => {
      const msg = evt.detail
      if (msg.topic === progress) {
        // Accepted by the topic validator below: well formed, signed by `host`, a member.
        const r = readProgress(msg.data)
        if (r !== undefined) {
          const { progress: p, host } = r
          this.remoteProgress.set(p.vm, { sha256: p.sha256, received: p.received, total: p.total, peer: p.peer, host, at: Date.now() })
        }
      }
    })
    const progress = this.progressTopic()
    pubsub.topicValidators.set(progress, async (_from, msg) => {
      const r = await openProgress(msg.data)
      if (r === undefined) return TopicValidatorResult.Reject
      // From a host expelled a moment ago, forwarded in good faith: dropped, nobody penalised.
      return isActiveMember(this.store.doc, r.host) ? TopicValidatorResult.Accept : TopicValidatorResult.Ignore
    })
    pubsub.subscribe(changes)
    pubsub.subscribe(progress)

    void this.reconnect()
    await this.publishRecord()
    this.beats?.start()
    this.every(this.config.reconnectInterval * 1000, () => { void this.reconnect() })
    this.every(ANTI_ENTROPY_MS, () => { void this.antiEntropy() })
    // Liveness changes without a state change: let placement see hosts come and go (a pass
    // only when the set of hosts that are up changed).
    let upBefore = ''
    this.every(1000, () => {
      const up = Object.keys(this.store.doc.members ?? {}).filter(p => this.isUp(p)).sort().join()
      if (up !== upBefore) { upBefore = up; this.scheduler.kick() }
    })
    void this.reconnect()
    // The reconcilers start only once every stored request has been judged: before that the
    // world would lack VMs, and a restarted host would tear down networks and VMs that are right.
    await this.requests.verifyPending()
    this.scheduler.kick()
    await this.publishImages()
    await this.startNetwork()
    await this.startHypervisor()
    this.beats?.beat()
  }

  private every (ms: number, fn: () => void): void {
    const t = setInterval(fn, ms)
    t.unref()
    this.timers.push(t)
  }

  // Version 2: messages without gossipsub signatures (node/p2p.ts), progress reports signed by
  // their host. A host of version 1 shares no topic with this one, so neither penalises the other's
  // messages as invalid; in a mesh of mixed versions, changes cross between them by sync.
  private changesTopic (): string { return `/picocloud/${this.store.meshId}/changes/2` }
  private progressTopic (): string { return `/picocloud/${this.store.meshId}/progress/2` }

  private async validateChangeMessage (from: PeerId, msg: Message): Promise<TopicValidatorResult> {
    if (msg.data.length > MAX_CHANGE_BYTES + 4 + 64) {
      this.penalise(from.toString(), `a change of ${msg.data.length} bytes (at most ${MAX_CHANGE_BYTES}) on gossip`)
      return TopicValidatorResult.Reject
    }
    let signed: SignedChange
    try {
      signed = decodeSignedChange(msg.data)
    } catch (err: any) {
      this.penalise(from.toString(), `undecodable change on gossip: ${err.message}`)
      return TopicValidatorResult.Reject
    }
    const r = await this.store.receive([signed], from.toString(), (author, bytes) => this.gossipRate.take(author, bytes))
    for (const author of r.throttled ?? []) this.throttled(author)
    if (r.rejected.some(x => x.blame === 'sender')) return TopicValidatorResult.Reject
    if (r.applied.length > 0) return TopicValidatorResult.Accept
    if (r.pending > 0 && r.duplicates === 0) void this.syncWith(from)
    return TopicValidatorResult.Ignore
  }

  /** An author over its gossip rate: an offence of the author's (at most one a minute), not the relayer's. */
  private throttled (author: string): void {
    const last = this.lastThrottle.get(author) ?? 0
    if (Date.now() - last < 60_000) return
    this.lastThrottle.set(author, Date.now())
    if (author !== this.peerId) this.penalise(author, 'writes faster than the per-author gossip limit (64 KiB/s, 4 MiB burst)')
  }

  private readonly gossipRate = new AuthorRateLimit()
  private readonly lastThrottle = new Map<string, number>()

  private async pushChange (c: SignedChange): Promise<void> {
    if (!this.meshStarted) return
    try {
      await this.libp2p.services.pubsub.publish(this.changesTopic(), encodeSignedChange(c))
    } catch (err: any) {
      this.log.debug('could not publish change', { error: err.message })
    }
  }

  /**
   * Syncs with one peer; concurrent requests for the same peer share one run (and one rerun).
   * Failures are logged, not thrown, unless `strict` (joining needs to know why).
   */
  async syncWith (peer: PeerId, strict = false): Promise<SyncStats | undefined> {
    const id = peer.toString()
    const running = this.syncing.get(id)
    if (running !== undefined && !strict) {
      this.resync.add(id)
      return await running.catch(() => undefined)
    }
    const run = (async () => {
      try {
        const stream = await this.libp2p.dialProtocol(peer, SYNC_PROTOCOL, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
        const stats = await syncInitiator(stream, this.store, id, undefined, { budget: (a, n) => this.gossipRate.take(a, n) })
        this.afterSync(id, stats)
        return stats
      } catch (err: any) {
        this.syncFailed(id, err)
        if (strict) throw err
        return undefined
      } finally {
        this.syncing.delete(id)
        if (this.resync.delete(id) && !this.stopping) void this.syncWith(peer)
      }
    })()
    this.syncing.set(id, run)
    return await run
  }

  /**
   * After a restart this host writes nothing until it has synced with a peer (or WRITE_HOLD_MS have
   * passed, or it is alone): a peer may hold changes of our own feed that our log lost (a disk
   * fault, a state directory restored from a backup), and writing before learning them would reuse
   * a sequence number, which every host would take for equivocation.
   */
  private holdWritesUntilSynced (): void {
    const others = Object.entries(this.store.doc.members).filter(([p, m]) => p !== this.peerId && m.expelled === undefined).length
    if (others === 0) return
    let release: () => void = () => {}
    const gate = new Promise<void>(resolve => { release = resolve })
    const timer = setTimeout(() => {
      this.log.warn('no peer answered a sync since start; writing again without hearing this host\'s own feed back', { seconds: WRITE_HOLD_MS / 1000 })
      release()
    }, WRITE_HOLD_MS)
    timer.unref()
    this.releaseWrites = () => { clearTimeout(timer); release(); this.releaseWrites = undefined }
    this.store.holdWritesUntil(gate)
  }

  private releaseWrites?: () => void

  /** A sync that ended because the peer broke the protocol (more than it announced, garbage…) counts against it. */
  private syncFailed (peer: string, err: any): void {
    this.log.debug('sync failed', { peer, error: err?.message })
    // An invalid change or evidence was already counted when the store refused it.
    if (err instanceof SyncError && err.misbehaviour && err.code !== 'INVALID' && err.code !== 'BAD_EVIDENCE') this.penalise(peer, `sync: ${err.message}`)
  }

  private afterSync (peer: string, stats: SyncStats): void {
    this.releaseWrites?.()
    for (const author of new Set(stats.received.throttled ?? [])) this.throttled(author)
    if (stats.received.applied.length > 0 || stats.sent > 0) {
      this.log.debug('synced', { peer, received: stats.received.applied.length, sent: stats.sent })
    }
  }

  private onRejected (r: Rejection & { from?: string }): void {
    this.emitEvent('change.rejected', { hash: r.hash, author: r.author, from: r.from, reason: r.reason })
    if (r.blame === 'sender' && r.from !== undefined) this.penalise(r.from, r.reason)
  }

  private penalise (peer: string, reason: string): void {
    const crossed = this.penalties.add(peer, reason)
    this.log.warn('penalised peer', { peer, reason, score: this.penalties.get(peer)?.score })
    if (crossed) {
      this.log.warn('blocking peer for misbehaviour', { peer, minutes: BLOCK_MS / 60_000 })
      this.gate.block(peer, BLOCK_MS)
      void this.hangUpPeer(peer)
    }
  }

  private async hangUpPeer (peer: string): Promise<void> {
    for (const conn of this.p2p?.getConnections() ?? []) {
      if (conn.remotePeer.toString() === peer) await conn.close().catch(() => conn.abort(new Error('expelled')))
    }
  }

  /** After any state change: drop connections to peers that are no longer members. */
  private enforceMembership (): void {
    if (this.p2p === undefined) return
    for (const conn of this.p2p.getConnections()) {
      const peer = conn.remotePeer.toString()
      if (!this.gate.allowed(peer)) {
        this.log.info('disconnecting a peer that is not a member (expelled?)', { peer })
        void this.hangUpPeer(peer)
      }
    }
    const me = this.store.doc.members?.[this.peerId]
    if (me?.expelled !== undefined) {
      this.log.error('this host was expelled from the mesh', { by: String(me.expelled.by), reason: String(me.expelled.reason) })
    }
  }

  /** Dials members we are not connected to, with exponential backoff per peer. */
  private async reconnect (): Promise<void> {
    if (this.stopping || !this.store.inMesh) return
    const now = Date.now()
    const doc = this.store.doc
    const connected = new Set(this.libp2p.getConnections().map(c => c.remotePeer.toString()))
    await Promise.all(Object.keys(doc.members).map(async peer => {
      if (peer === this.peerId || connected.has(peer) || !this.gate.allowed(peer)) return
      const next = this.nextDial.get(peer)
      if (next !== undefined && next.at > now) return
      const addrs = (doc.hosts[peer]?.addresses ?? []).flatMap(a => { try { return [multiaddr(a)] } catch { return [] } })
      if (addrs.length === 0) return
      const backoff = Math.min((next?.backoff ?? 500) * 2, 30_000)
      this.nextDial.set(peer, { at: now + backoff, backoff })
      try {
        await this.libp2p.dial(addrs, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      } catch (err: any) {
        this.log.debug('could not reach member', { peer, error: err.message })
      }
    }))
  }

  /** The digest of our heads that beats carry, recomputed only when the heads move. */
  private headsDigest (): Uint8Array {
    const key = String(this.store.version)
    if (key !== this.digestCache.heads) this.digestCache = { heads: key, digest: headsDigest(this.store.digestInput()) }
    return this.digestCache.digest
  }

  private async antiEntropy (): Promise<void> {
    const peers = this.libp2p.getPeers()
    if (peers.length === 0) return
    await this.syncWith(peers[Math.floor(Math.random() * peers.length)]).catch(() => {})
  }

  private addresses (): string[] {
    return this.p2p?.getMultiaddrs().map(a => a.toString()) ?? []
  }

  private async publishRecord (): Promise<void> {
    if (!this.store.inMesh || !isActiveMember(this.store.doc, this.peerId)) return
    try {
      await publishHostRecord(this.store, {
        name: this.config.name,
        addresses: this.addresses(),
        wgPublicKey: this.wireguard.publicKey,
        version: VERSION
      })
      const endpoints = this.wgEndpoints()
      const rec = this.store.doc.hosts[this.peerId]
      if (rec?.wgPort !== this.config.network.wgPort || JSON.stringify(rec?.wgEndpoints ?? null) !== JSON.stringify(endpoints)) {
        await this.store.change('publish WireGuard endpoints', d => {
          if (d.host === undefined) return
          d.host.wgPort = this.config.network.wgPort
          d.host.wgEndpoints = scalars(endpoints)
        })
      }
      const res = await hostResources(this.config)
      const cur = this.store.doc.hosts[this.peerId]?.resources
      if (JSON.stringify(cur) !== JSON.stringify(res)) {
        await this.store.change('publish resources', d => { if (d.host !== undefined) d.host.resources = scalars(res) })
      }
    } catch (err: any) {
      this.log.warn('could not publish host record', { error: err.message })
    }
  }

  // ——— operations (called by the local API) ———

  id (): IdView {
    return { peerId: this.peerId, addresses: this.addresses(), name: this.config.name, wgPublicKey: this.wireguard.publicKey }
  }

  async init (name: string | undefined): Promise<StatusView> {
    const meshName = name ?? `${this.config.name}-mesh`
    await foundMesh(this.store, {
      name: meshName,
      host: { name: this.config.name, addresses: this.addresses(), wgPublicKey: this.wireguard.publicKey, version: VERSION, updated: new Date().toISOString() }
    })
    this.log.info('founded mesh', { mesh: this.store.meshId, name: meshName })
    this.emitEvent('mesh.founded', { mesh: this.store.meshId, name: meshName })
    await this.startMesh()
    return this.status()
  }

  async admit (peerKey: string, name?: string): Promise<{ peerId: string, changed: boolean }> {
    const peer = parsePeerId(peerKey).toString()
    if (peer === this.peerId) throw new PicocloudError(ErrorCode.BadPeerKey, 'that is this host\'s own peer key; run `picocloud id` on the newcomer and admit the key it prints')
    const r = await admit(this.store, peer, name)
    if (r.changed) {
      this.log.info('admitted host', { peer, name })
      this.emitEvent('member.admitted', { peerId: peer, name })
    }
    return { peerId: peer, ...r }
  }

  async expel (peerKey: string, reason = ''): Promise<{ peerId: string, changed: boolean }> {
    const peer = this.resolvePeer(peerKey)
    const r = await expel(this.store, peer, reason)
    if (r.changed) {
      this.log.info('expelled host', { peer, reason })
      this.emitEvent('member.expelled', { peerId: peer, reason })
    }
    return { peerId: peer, ...r }
  }

  /** A peer id, or the unique name of a member. */
  resolvePeer (text: string): string {
    const doc = this.store.doc
    const byName = Object.entries(doc.members ?? {}).filter(([p, m]) => String(m.name) === text || doc.hosts?.[p]?.name === text)
    if (byName.length === 1) return byName[0][0]
    if (byName.length > 1) throw new PicocloudError(ErrorCode.BadPeerKey, `${byName.length} hosts are named ${JSON.stringify(text)}; use the peer id`)
    return parsePeerId(text).toString()
  }

  async join (address: string): Promise<StatusView> {
    if (this.store.inMesh) {
      throw new PicocloudError(ErrorCode.AlreadyInMesh, `this host is already in mesh ${this.store.meshId} (${this.store.doc.mesh.name}); a host belongs to one mesh`, 409)
    }
    let ma: Multiaddr
    try {
      ma = multiaddr(address.trim())
    } catch {
      throw new PicocloudError(ErrorCode.BadAddress, `not a multiaddr: ${JSON.stringify(address)} (expected an address printed by \`picocloud id\` on a member, like /ip4/192.0.2.1/tcp/9777/p2p/12D3KooW…)`)
    }
    const peerText = ma.getPeerId()
    if (peerText === null) {
      throw new PicocloudError(ErrorCode.BadAddress, `${address} names no peer: it must end in /p2p/<peer id> (copy it from \`picocloud id\` on the member)`)
    }
    const peer = parsePeerId(peerText)
    if (peer.toString() === this.peerId) throw new PicocloudError(ErrorCode.BadAddress, 'that address is this host itself; give the address of a member of the mesh')
    this.gate.joining.add(peer.toString())
    this.store.joining = ''
    try {
      await this.libp2p.dial(ma, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      await this.joinSync(peer)
    } catch (err: any) {
      throw new PicocloudError(ErrorCode.JoinFailed,
        `could not join through ${peer.toString()}: ${err.message}. Check that the address is reachable and that an operator of that host ran \`picocloud admit ${this.peerId}\``, 502)
    } finally {
      this.store.joining = undefined
      this.gate.joining.delete(peer.toString())
    }
    if (!this.store.inMesh) {
      await this.hangUpPeer(peer.toString())
      throw new PicocloudError(ErrorCode.JoinFailed,
        `${peer.toString()} did not send a mesh: the connection was refused or it is not in a mesh. Ask its operator to run \`picocloud admit ${this.peerId}\`, then try again`, 502)
    }
    if (!isActiveMember(this.store.doc, this.peerId)) {
      throw new PicocloudError(ErrorCode.JoinFailed, `the mesh does not list this host as a member; ask an operator to run \`picocloud admit ${this.peerId}\``, 403)
    }
    this.log.info('joined mesh', { mesh: this.store.meshId, via: peer.toString() })
    this.emitEvent('mesh.joined', { mesh: this.store.meshId, via: peer.toString() })
    await this.startMesh()
    return this.status()
  }

  /**
   * The first sync of a join. A stream reset while the member is busy with the new connection
   * (its own sync towards us, which we refuse until we are in the mesh) is retried; a refusal
   * (not in a mesh, another mesh) is final.
   */
  private async joinSync (peer: PeerId): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.syncWith(peer, true)
        return
      } catch (err: any) {
        if (attempt >= 3 || err instanceof SyncError || this.libp2p.getConnections(peer).length === 0) throw err
        this.log.debug('join sync failed; trying again', { peer: peer.toString(), attempt, error: err.message })
        await new Promise(resolve => setTimeout(resolve, 200 * attempt))
      }
    }
  }

  status (): StatusView {
    const doc = this.store.doc
    const conns = this.p2p?.getConnections() ?? []
    const me = doc.members?.[this.peerId]
    return {
      peerId: this.peerId,
      name: this.config.name,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
      addresses: this.addresses(),
      stateDir: this.config.state,
      socket: this.config.socket,
      mesh: doc.mesh === undefined
        ? null
        : {
            id: doc.mesh.id,
            name: doc.mesh.name,
            founder: doc.mesh.founder,
            members: Object.values(doc.members).filter(m => m.expelled === undefined).length,
            policy: { admit: doc.mesh.policy.admit, expellers: [doc.mesh.founder, ...doc.mesh.policy.expellers] }
          },
      expelled: me?.expelled === undefined ? null : { ...me.expelled },
      peers: conns.map(c => ({
        peerId: c.remotePeer.toString(),
        name: String(doc.hosts?.[c.remotePeer.toString()]?.name ?? doc.members?.[c.remotePeer.toString()]?.name ?? ''),
        address: c.remoteAddr.toString(),
        direction: c.direction
      })),
      state: {
        heads: this.store.heads(),
        changes: this.store.changeCount,
        feeds: this.store.feeds.size,
        pending: this.store.pendingCount,
        pendingBytes: this.store.pendingBytes,
        logBytes: this.store.logBytes,
        equivocations: this.store.evidence().map(e => ({ peerId: e.author, seq: e.seq }))
      },
      penalties: this.penalties.list() as PeerPenalty[],
      network: this.networkStatus()
    }
  }

  hosts (): HostView[] {
    const doc = this.store.doc
    if (doc.members === undefined) return []
    const connected = new Set(this.p2p?.getConnections().map(c => c.remotePeer.toString()) ?? [])
    const problems = this.store.state().problems
    return Object.entries(doc.members).filter(([, m]) => m.expelled === undefined).map(([peerId, stored]) => {
      const m = stored
      const rec = doc.hosts?.[peerId]
      const self = peerId === this.peerId
      const seen = self || connected.has(peerId) ? Date.now() : this.liveness.lastSeen(peerId)
      return {
        peerId,
        name: rec?.name ?? m.name,
        addresses: rec === undefined ? [] : [...rec.addresses],
        lastSeen: seen === undefined ? null : new Date(seen).toISOString(),
        reachable: self || connected.has(peerId) || this.liveness.alive(peerId),
        self,
        connected: connected.has(peerId),
        admittedBy: m.admittedBy,
        admittedAt: m.admittedAt,
        wgPublicKey: wireguardPublicKeyForPeer(peerId),
        version: rec?.version ?? null,
        problems: problems.get(peerId)?.slice(0, 50) ?? []
      }
    }).sort((a, b) => a.name.localeCompare(b.name) || a.peerId.localeCompare(b.peerId))
  }

  history (): ReturnType<StateStore['history']> {
    return this.store.history()
  }

  private async startHypervisor (): Promise<void> {
    if (this.config.hypervisor === 'none' || this.reconciler !== undefined) return
    const log = this.log.forComponent('vms')
    if (this.config.hypervisor === 'libvirt') {
      // libvirt's QEMU runs as another user (libvirt-qemu): it must traverse the state dir to
      // reach the images and overlays (0711: nothing can be listed, secrets stay 0600).
      const { chmod } = await import('node:fs/promises')
      await chmod(this.config.state, 0o711)
      const { LibvirtDriver } = await import('./drivers/hypervisor/libvirt.ts')
      this.hypervisor = new LibvirtDriver({ stateDir: this.config.state, log })
    } else {
      const { QemuDriver } = await import('./drivers/hypervisor/qemu.ts')
      this.hypervisor = new QemuDriver({ stateDir: this.config.state, log })
    }
    const { writeSeed } = await import('./drivers/hypervisor/seed.ts')
    this.reconciler = new VmReconciler({
      store: this.store,
      driver: this.hypervisor,
      images: this.images,
      world: () => this.scheduler.world(),
      log,
      fetch: async (vmId, sha256) => { await this.fetchImageFor(vmId, sha256) },
      seed: async (vm, spec) => await writeSeed(this.config.state, vm, spec),
      // VM NICs go on the network's bridge: the data plane must have made it.
      beforeStart: async () => { await this.network?.settle() }
    })
    this.reconciler.start()
  }

  private async fetchImageFor (vmId: string, sha256: string): Promise<void> {
    const connected = new Set(this.libp2p.getConnections().map(c => c.remotePeer.toString()))
    try {
      await fetchImage(this.libp2p, this.images, sha256, holders(this.store, sha256, connected), this.log.forComponent('images'), p => {
        this.progress.set(vmId, p)
        this.emitEvent('image.progress', { vm: vmId, ...p })
        void sealProgress(this.key, this.peerId, { vm: vmId, ...p }).then(async data => await this.libp2p.services.pubsub.publish(this.progressTopic(), data)).catch(() => {})
      })
    } finally {
      this.progress.delete(vmId)
    }
    await this.publishImages()
  }

  /** Publishes which images this host holds, so others can fetch them from here. */
  async publishImages (): Promise<void> {
    if (!this.store.inMesh || !isActiveMember(this.store.doc, this.peerId)) return
    const held = await this.images.list()
    const cur = this.store.doc.hosts[this.peerId]?.images ?? {}
    const want = Object.fromEntries(held.map(i => [i.sha256, { size: i.size, format: i.format }]))
    if (JSON.stringify(Object.keys(cur).sort()) === JSON.stringify(Object.keys(want).sort())) return
    await this.store.change('publish images', d => {
      const rec = d.host
      if (rec === undefined) return
      rec.images ??= {}
      for (const k of Object.keys(rec.images)) if (want[k] === undefined) delete rec.images[k]
      for (const [k, v] of Object.entries(want)) if (rec.images[k] === undefined) rec.images[k] = v
    })
  }

  /** Adds an image file (streamed through the socket) to this host's store. */
  async addImage (source: AsyncIterable<Uint8Array>, opts: { format?: 'raw' | 'qcow2', name?: string, sha256?: string }): Promise<ImageInfo> {
    const info = await this.images.add(source, { format: opts.format, name: opts.name, expectedSha256: opts.sha256 })
    this.log.info('added image', { sha256: info.sha256.slice(0, 12), bytes: info.size, format: info.format })
    await this.publishImages()
    this.reconciler?.kick()
    return info
  }

  imageList (): Array<{ name: string, sha256: string, format: string, sizeBytes: number, owner: string, arch: string, holders: string[] }> {
    const world = this.scheduler.world()
    return [...world.images.values()].sort((a, b) => a.name.localeCompare(b.name)).map(i => ({
      name: i.name,
      sha256: i.sha256,
      format: i.format,
      sizeBytes: i.sizeBytes,
      owner: i.owner,
      arch: i.arch,
      holders: Object.entries(this.store.doc.hosts ?? {}).filter(([, r]) => r.images?.[i.sha256] !== undefined).map(([p, r]) => r.name || p).sort()
    }))
  }

  /** The serial console log of a VM that runs here. */
  async vmLogs (ref: string, tailBytes: number): Promise<{ vm: string, log: string }> {
    const world = this.scheduler.world()
    const vm = findVm(world, ref)
    if (vm.host !== this.peerId || this.hypervisor === undefined) {
      const where = vm.host === null ? 'no host' : (this.store.doc.hosts?.[vm.host]?.name ?? vm.host)
      throw new PicocloudError(ErrorCode.NotAllowed, `VM ${vm.name} runs on ${where}, not here: run \`picocloud vm logs ${vm.name}\` against that host's socket`, 409)
    }
    const { open } = await import('node:fs/promises')
    const path = this.hypervisor.logPath(vmName(vm.id))
    try {
      const fh = await open(path, 'r')
      try {
        const { size } = await fh.stat()
        const start = Math.max(0, size - tailBytes)
        const buf = Buffer.alloc(size - start)
        await fh.read(buf, 0, buf.length, start)
        return { vm: vm.name, log: buf.toString('utf8') }
      } finally { await fh.close() }
    } catch (err: any) {
      if (err.code === 'ENOENT') return { vm: vm.name, log: '' }
      throw err
    }
  }

  /** Path of the serial console socket of a VM that runs here. */
  consoleSocket (ref: string): { vm: string, path: string } {
    const vm = findVm(this.scheduler.world(), ref)
    if (vm.host !== this.peerId || this.hypervisor === undefined) {
      throw new PicocloudError(ErrorCode.NotAllowed, `VM ${vm.name} does not run on this host; the console is reachable on the host that runs it`, 409)
    }
    return { vm: vm.name, path: this.hypervisor.consolePath(vmName(vm.id)) }
  }

  /** The founder sets who may admit and who may expel (replicated mesh policy). */
  async setPolicy (input: { admit?: 'any-member' | 'expellers', expellers?: string[] }): Promise<StatusView> {
    const expellers = input.expellers?.map(e => this.resolvePeer(e))
    await setMeshPolicy(this.store, { admit: input.admit, expellers })
    this.log.info('mesh policy changed', { admit: input.admit, expellers: expellers?.join(',') })
    return this.status()
  }

  /** Test hook: refuse and drop these peers until `heal` (a network partition, from this side). */
  async partition (peers: string[]): Promise<{ blocked: string[] }> {
    for (const p of peers) {
      this.gate.block(p, 24 * 3600_000)
      await this.hangUpPeer(p)
    }
    this.liveness.forget(peers)
    return { blocked: peers }
  }

  heal (): { healed: true } {
    this.gate.unblockAll()
    this.nextDial.clear()
    void this.reconnect()
    return { healed: true }
  }

  // ——— requests, VMs, networks, trust ———

  async submit (envelope: unknown): Promise<RequestView> {
    const { id } = await this.requests.submit(envelope)
    await this.requests.verifyPending()
    return this.request(id)
  }

  request (id: string): RequestView {
    const world = this.scheduler.world()
    const matches = [...world.requests.keys()].filter(k => k === id || (id.length >= 8 && k.startsWith(id)))
    if (matches.length !== 1) {
      throw new PicocloudError(ErrorCode.NotFound, matches.length === 0 ? `no request ${id} in the state of this host` : `${matches.length} requests start with ${id}; give more of the id`, 404)
    }
    return requestView(this.store.doc, world.requests.get(matches[0]) as NonNullable<ReturnType<typeof world.requests.get>>)
  }

  vms (filter: VmFilter): VmView[] {
    return listVms(this.store.doc, this.scheduler.world(), filter)
  }

  vm (ref: string, owner?: string): VmView & { history: RequestView[], progress?: FetchProgress } {
    const world = this.scheduler.world()
    const vm = findVm(world, ref, owner)
    const history = vm.requests.map(id => world.requests.get(id)).filter(r => r !== undefined).map(r => requestView(this.store.doc, r))
    const remote = this.remoteProgress.get(vm.id)
    const fresh = remote !== undefined && remote.host === vm.host && Date.now() - remote.at < 5000 && vm.report?.status === 'fetching-image'
    const progress = this.progress.get(vm.id) ?? (fresh ? { sha256: remote.sha256, received: remote.received, total: remote.total, peer: remote.peer } : undefined)
    return { ...vmView(this.store.doc, vm), history, ...(progress === undefined ? {} : { progress }) }
  }

  nets (): Array<{ name: string, owner: string, subnet: unknown, mode: string, gateway: unknown, vms: string[], hosts: string[], created: string }> {
    const world = this.scheduler.world()
    return [...world.nets.values()].sort((a, b) => a.name.localeCompare(b.name)).map(n => {
      const users = [...world.vms.values()].filter(v => v.desired !== 'destroyed' && v.rejected === undefined && v.nics.some(x => x.net === n.name))
      return {
        name: n.name,
        owner: n.owner,
        subnet: n.spec.subnet,
        mode: n.spec.mode,
        gateway: n.spec.gateway,
        vms: users.map(v => v.name),
        hosts: [...new Set(users.map(v => v.host).filter((h): h is string => h !== null))].sort(),
        created: new Date(n.created).toISOString()
      }
    })
  }

  net (name: string): ReturnType<PicocloudNode['nets']>[number] & { presence: NetPresence[] } {
    const n = this.nets().find(x => x.name === name)
    const entry = this.scheduler.world().nets.get(name)
    if (n === undefined || entry === undefined) throw new PicocloudError(ErrorCode.NotFound, `no network ${name} (see \`picocloud net list\`)`, 404)
    return { ...n, presence: this.netPresence(entry.id) }
  }

  /** Where a network is built: each host's own view, from its record (published when it changes). */
  private netPresence (netId: string): NetPresence[] {
    const doc = this.store.doc
    const meshId = this.store.meshId
    const byAddr = new Map<string, string>()
    if (meshId !== undefined) {
      const peers = Object.keys(doc.members ?? {}).filter(p => isActiveMember(doc, p))
      for (const [p, a] of assignOverlayAddresses(meshId, peers)) byAddr.set(a, p)
    }
    const out: NetPresence[] = []
    for (const [peerId, rec] of Object.entries(doc.hosts ?? {})) {
      const v = rec.nets?.[netId]
      if (v === undefined || !isActiveMember(doc, peerId)) continue
      out.push({
        peerId,
        name: rec.name,
        vni: v.vni,
        bridge: v.bridge,
        vxlan: v.vxlan,
        mtu: v.mtu,
        fdb: [...v.fdb].map(a => ({ address: a, peerId: byAddr.get(a) ?? null, name: doc.hosts?.[byAddr.get(a) ?? '']?.name ?? null })),
        taps: [...v.taps],
        dnsmasq: v.dnsmasq,
        ...(rec.netError !== undefined ? { error: rec.netError } : {})
      })
    }
    return out.sort((a, b) => a.name.localeCompare(b.name) || a.peerId.localeCompare(b.peerId))
  }

  /** Endpoints this host announces for WireGuard: configured, else from its libp2p addresses. */
  private wgEndpoints (): string[] {
    const cfg = this.config.network
    if (cfg.endpoints.length > 0) return [...cfg.endpoints]
    return deriveEndpoints([...this.config.announce, ...this.addresses()], cfg.wgPort)
  }

  private async startNetwork (): Promise<void> {
    if (this.network !== undefined || this.networkOff !== undefined) return
    const cfg = this.config.network
    const log = this.log.forComponent('net')
    if (cfg.mode === 'none') { this.networkOff = 'network = "none" in the config'; return }
    if (process.getuid?.() !== 0) {
      this.networkOff = cfg.mode === 'auto'
        ? 'not running as root (network = "auto"); run as root for private networks'
        : 'network = "linux" needs root (devices, WireGuard, dnsmasq)'
      if (cfg.mode === 'auto') log.info('no data plane on this host', { reason: this.networkOff })
      else log.warn('no data plane on this host: private networks will not reach VMs here', { reason: this.networkOff })
      return
    }
    const { realExec } = await import('./drivers/exec.ts')
    const why = await dataPlaneUnavailableReason(realExec)
    if (why !== undefined) {
      this.networkOff = why
      log.warn('no data plane on this host: private networks will not reach VMs here', { reason: why })
      return
    }
    const holder = await claimInterface(cfg.wgIfname).catch(() => undefined)
    if (holder !== undefined) {
      this.networkOff = `another picocloud daemon (pid ${holder}) runs the data plane on ${cfg.wgIfname} on this machine; give this one its own wireguard_interface (and wireguard_port), or network = "none"`
      log.warn('no data plane on this host', { reason: this.networkOff })
      return
    }
    const { linuxNetworkDriver } = await import('./drivers/network/linux.ts')
    const { join } = await import('node:path')
    const driver = linuxNetworkDriver({ exec: realExec, log, tmpDir: this.config.state })
    this.networkBackend = driver.backend
    this.network = new NetworkReconciler({
      store: this.store,
      world: () => this.scheduler.world(),
      driver,
      config: cfg,
      wgPrivateKey: this.wireguard.privateKey,
      runtimeDir: join(this.config.state, 'net'),
      log
    })
    this.network.start()
  }

  private networkStatus (): NetworkStatusView {
    const cfg = this.config.network
    const r = this.network
    const last = r?.last
    const doc = this.store.doc
    const desired = last?.desired
    const peerOf = new Map((desired?.wireguard.peers ?? []).map(p => [p.publicKey, p.peerId]))
    return {
      mode: r === undefined ? 'none' : 'linux',
      ...(this.networkOff !== undefined ? { reason: this.networkOff } : {}),
      interface: cfg.wgIfname,
      listenPort: cfg.wgPort,
      endpoints: this.wgEndpoints(),
      overlayAddress: desired?.wireguard.address ?? null,
      mtu: desired === undefined ? null : desired.wireguard.mtu - VXLAN_OVERHEAD_IPV6,
      ...(this.networkBackend?.() !== undefined ? { backend: this.networkBackend() } : {}),
      lastPass: last === undefined ? null : { at: new Date(last.at).toISOString(), steps: last.steps, ms: Math.round(r?.stats.lastMs ?? 0), ...(last.error !== undefined ? { error: last.error } : {}) },
      passes: r?.stats.passes ?? 0,
      errors: r?.stats.errors ?? 0,
      stepsApplied: r?.stats.steps ?? 0,
      problems: last?.problems ?? [],
      peers: (last?.actual?.wireguard?.peers ?? []).map(p => {
        const peerId = peerOf.get(p.publicKey) ?? ''
        return {
          peerId,
          name: doc.hosts?.[peerId]?.name ?? '',
          publicKey: p.publicKey,
          endpoint: p.endpoint ?? null,
          latestHandshake: p.latestHandshake === undefined || p.latestHandshake === 0 ? null : new Date(p.latestHandshake * 1000).toISOString(),
          rxBytes: p.rx ?? 0,
          txBytes: p.tx ?? 0
        }
      }),
      networks: (desired?.networks ?? []).map(n => ({ name: n.name, vni: n.vni, bridge: n.bridge.ifname, fdb: n.fdb.length, taps: n.taps.length }))
    }
  }

  async trustAdd (input: TrustAddInput): Promise<TrustEntry> {
    const entry = await trustAdd(this.store, input)
    this.log.info('trusted key', { fingerprint: entry.fingerprint })
    return entry
  }

  async trustRemove (fpr: string): Promise<{ fingerprint: string }> {
    const r = await trustRemove(this.store, fpr)
    this.log.info('no longer trusts key', { fingerprint: r.fingerprint })
    return r
  }

  async trustList (): Promise<TrustView[]> {
    const world = this.scheduler.world()
    return await trustList(this.store, fpr => {
      const u = { vms: 0, vcpus: 0, memMiB: 0, diskGiB: 0 }
      for (const vm of world.vms.values()) {
        if (vm.host !== this.peerId || vm.owner !== fpr || vm.desired === 'destroyed') continue
        u.vms++; u.vcpus += vm.needs.vcpus; u.memMiB += vm.needs.memMiB; u.diskGiB += vm.needs.diskGiB
      }
      return u
    })
  }

  /** The host operator stops a VM that runs here (socket authority, no signature). */
  async operatorStop (ref: string, reason: string): Promise<VmView> {
    const world = this.scheduler.world()
    const vm = findVm(world, ref)
    if (vm.host !== this.peerId) {
      throw new PicocloudError(ErrorCode.NotAllowed, `VM ${vm.name} does not run on this host (it runs on ${vm.host ?? 'no host'}); a host operator may stop only VMs on their own host`, 403)
    }
    const at = new Date().toISOString()
    await this.store.change(`operator stops ${vm.id}`, d => {
      const rec = d.host
      if (rec === undefined) return
      rec.vms ??= {}
      rec.vms[vm.id] = scalars({ status: 'stopped', since: at, reason: `stopped by the host operator: ${reason || 'no reason given'}`, operatorStop: { at, reason } })
    })
    this.log.info('operator stopped VM', { vm: vm.id, reason })
    return vmView(this.store.doc, findVm(this.scheduler.world(), vm.id))
  }

  async stop (): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
    this.beats?.stop()
    this.divergence.stop()
    this.scheduler.stop()
    this.reconciler?.stop()
    this.network?.stop()
    this.timers = []
    await this.bulk?.stop()
    await this.p2p?.stop()
    await this.store.close()
    this.log.info('stopped')
  }
}
