/**
 * The mesh of one host: libp2p with the membership gater, sync of the replicated state with peers
 * (on connect, on a diverging beat digest, as a safety net), gossip of changes and progress
 * reports, liveness beats, reconnection, penalties and per-author rates. It moves state between
 * hosts; what the state means is the business of the other subsystems.
 *
 * @example
 * const mesh = new Mesh({ config, log, key, store, version, emit })
 * await mesh.start()          // libp2p up, sync answered
 * await mesh.startTopics()    // once in a mesh: gossip, beats, reconnection
 */
import { EventEmitter } from 'node:events'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import type { Logger } from '../log.ts'
import { MembershipGate } from './gater.ts'
import { createP2PNode, type P2PNode } from './p2p.ts'
import { Penalties, type PeerPenalty } from './penalties.ts'
import { Gossip, type RemoteProgress } from './gossip.ts'
import { Liveness, Beats } from './liveness.ts'
import { Lease } from './lease.ts'
import { DivergenceWatch, headsDigest } from './anti-entropy.ts'
import { parsePeerId } from '../../keys/peer-key.ts'
import type { StateStore, Rejection } from '../../crdt/store.ts'
import { SYNC_PROTOCOL, SyncError, syncInitiator, syncResponder, type SyncStats } from '../../crdt/sync.ts'
import { isActiveMember } from '../../crdt/schema.ts'
import type { ImageProgress } from '../../protocol/progress.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { PeerView } from '../../protocol/api.ts'
import { routableFirst, addressRank, withoutIps, picocloudInterfaceIps } from './address-order.ts'

const BLOCK_MS = 10 * 60_000
// Divergence is found by the digests on beats (anti-entropy.ts); a sync with one random peer this
// often is only a safety net (e.g. for a peer whose beats we do not get).
const ANTI_ENTROPY_MS = 60_000
// A digest that still differs this long after a beat is a real divergence, not gossip in flight.
const DIVERGENCE_GRACE_MS = 1000
// Digests are judged at most this often per peer, whatever the beat rate (2 s while a host holds
// `restart` VMs): judged on every 2 s beat, a 10-host mesh under a stream of changes synced so often that
// a change took 45 ms to reach all (p50) instead of 25 (npm run bench -- --only dissemination).
const DIVERGENCE_EVERY_MS = 10_000
const DIAL_TIMEOUT_MS = 10_000
/** How long a restarted host waits to hear its own feed back from a peer before writing anyway. */
const WRITE_HOLD_MS = 10_000

export interface MeshConfig {
  listen: string[]
  announce: string[]
  /** Seconds between beats. */
  heartbeatInterval: number
  /** Seconds between beats while this host needs its lease. */
  leaseInterval: number
  /** Seconds between attempts to dial members we are not connected to. */
  reconnectInterval: number
}

export interface MeshInit {
  config: MeshConfig
  log: Logger
  key: PrivateKey
  store: StateStore
  version: string
  /** An event for the API's event stream. */
  emit: (type: string, data?: Record<string, unknown>) => void
  /** Whether this host runs or is given `--ha restart` VMs: it beats at the lease rate then. @default never */
  needsLease?: () => boolean
}

export interface MeshEvents {
  /** A peer connected or disconnected, or the set of hosts that are up changed. */
  peers: []
  /** This host's libp2p addresses changed (its record should say so). */
  addresses: []
}

export class Mesh extends EventEmitter<MeshEvents> {
  readonly peerId: string
  readonly gate: MembershipGate
  readonly penalties = new Penalties()
  readonly liveness: Liveness
  /** This host's lease for `--ha restart` VMs (crdt/lease.ts). */
  readonly lease: Lease
  private readonly init: MeshInit
  private readonly log: Logger
  private readonly store: StateStore
  private p2p?: P2PNode
  private beats?: Beats
  private timers: NodeJS.Timeout[] = []
  private readonly syncing = new Map<string, Promise<SyncStats | undefined>>()
  private readonly resync = new Set<string>()
  private readonly nextDial = new Map<string, { at: number, backoff: number }>()
  private readonly divergence = new DivergenceWatch({
    ours: () => this.digest(),
    sync: peer => { void this.syncWith(peerIdFromString(peer)).catch(() => {}) },
    graceMs: DIVERGENCE_GRACE_MS,
    minIntervalMs: DIVERGENCE_EVERY_MS
  })
  private digestCache: { version: number, digest: Uint8Array } = { version: -1, digest: new Uint8Array(0) }
  private readonly gossip: Gossip
  private connectedCache?: Set<string>
  private releaseWrites?: () => void
  private topicsStarted = false
  private stopping = false

  constructor (init: MeshInit) {
    super()
    this.init = init
    this.log = init.log
    this.store = init.store
    this.peerId = peerIdFromPrivateKey(init.key).toString()
    this.gate = new MembershipGate(this.peerId, () => this.store.doc)
    this.liveness = new Liveness(init.config.heartbeatInterval * 1000)
    this.lease = new Lease({ store: this.store, beatMs: init.config.leaseInterval * 1000, idleBeatMs: init.config.heartbeatInterval * 1000, log: this.log.forComponent('lease'), emit: init.emit })
    this.gossip = new Gossip({
      store: this.store,
      key: init.key,
      peerId: this.peerId,
      log: this.log,
      penalise: (peer, reason) => this.penalise(peer, reason),
      sync: peer => { void this.syncWith(peer) }
    })
  }

  get libp2p (): P2PNode {
    if (this.p2p === undefined) throw new Error('the mesh is not started')
    return this.p2p
  }

  /** libp2p up: the gater, sync answered, beats listened for, state changes pushed. */
  async start (): Promise<void> {
    const { config, key, version } = this.init
    this.p2p = await createP2PNode({ privateKey: key, listen: config.listen, announce: config.announce, gater: this.gate.gater, version })
    const p2p = this.p2p
    await p2p.handle(SYNC_PROTOCOL, ({ stream, connection }) => {
      const remote = connection.remotePeer.toString()
      syncResponder(stream, this.store, remote, this.log.forComponent('sync'), undefined, { budget: (a, n) => this.gossip.rate.take(a, n) })
        .then(stats => { this.afterSync(remote, stats) })
        .catch(err => { this.syncFailed(remote, err) })
    }, { maxInboundStreams: 4, maxOutboundStreams: 4 })

    this.beats = new Beats({
      p2p,
      liveness: this.liveness,
      intervalMs: config.heartbeatInterval * 1000,
      leaseMs: config.leaseInterval * 1000,
      needsLease: () => this.init.needsLease?.() ?? false,
      isMember: peer => isActiveMember(this.store.doc, peer),
      digest: () => this.digest(),
      onBeat: (peer, digest) => this.divergence.report(peer, digest),
      lease: this.lease.beats,
      log: this.log.forComponent('liveness')
    })
    await this.beats.listen()

    p2p.addEventListener('peer:connect', evt => {
      const peer = evt.detail.toString()
      this.nextDial.delete(peer)
      this.init.emit('peer.connected', { peerId: peer })
      this.emit('peers')
      if (this.store.inMesh) void this.syncWith(evt.detail)
    })
    p2p.addEventListener('peer:disconnect', evt => {
      this.init.emit('peer.disconnected', { peerId: evt.detail.toString() })
      this.divergence.forget(evt.detail.toString())
      this.emit('peers')
    })
    p2p.addEventListener('self:peer:update', () => { this.emit('addresses') })

    // Membership is enforced by the composition root (node/host.ts), off the path of the change.
    this.store.on('change', ({ changes, local }) => {
      if (local) for (const c of changes) void this.gossip.publishChange(c)
    })
    this.store.on('rejected', r => { this.onRejected(r) })
    this.store.on('equivocation', e => {
      this.init.emit('member.equivocated', { peerId: e.author, seq: e.seq, from: e.from })
      // The author, never the host that relayed a fork: each fork alone is a valid change.
      if (e.author !== this.peerId) this.penalise(e.author, `equivocation: signed two different changes with sequence number ${e.seq}`)
    })
    await p2p.start()
    this.log.info('started', { peerId: this.peerId, listen: this.addresses().join(','), mesh: this.store.meshId ?? 'none' })
  }

  /** Gossip topics, beats, reconnection and anti-entropy: everything that needs a mesh. */
  async startTopics (): Promise<void> {
    if (this.topicsStarted) return
    this.topicsStarted = true
    this.gossip.start(this.libp2p)
    void this.reconnect()
    this.beats?.start()
    this.every(this.init.config.leaseInterval * 1000, () => { void this.lease.tick().catch(err => this.log.warn('lease tick failed', { error: err.message })) })
    this.every(this.init.config.reconnectInterval * 1000, () => { void this.reconnect() })
    this.every(ANTI_ENTROPY_MS, () => { void this.antiEntropy() })
    // Liveness changes without a state change: let placement see hosts come and go (only when
    // the set of hosts that are up changed).
    let upBefore = ''
    this.every(1000, () => {
      const up = Object.keys(this.store.doc.members ?? {}).filter(p => this.isUp(p)).sort().join()
      if (up !== upBefore) { upBefore = up; this.emit('peers') }
    })
  }

  /** Sends a beat now (after start-up, so peers see this host at once). */
  beat (): void { this.beats?.beatNow() }

  /** This host just came to need its lease: beat at the lease rate from now on, starting now. */
  leaseNeeded (): void { this.beats?.beatNow() }

  private every (ms: number, fn: () => void): void {
    const t = setInterval(fn, ms)
    t.unref()
    this.timers.push(t)
  }

  /** A peer is up when we are connected to it or heard its beat recently (liveness.ts). */
  isUp (peer: string): boolean {
    if (peer === this.peerId) return true
    if (this.liveness.alive(peer)) return true
    return this.connectedPeers().has(peer)
  }

  /**
   * The peers we have a connection to, gathered once per turn of the event loop: a placement pass
   * asks for every host, and libp2p builds its list of connections anew for each call.
   */
  connectedPeers (): Set<string> {
    if (this.connectedCache === undefined) {
      this.connectedCache = new Set(this.p2p?.getConnections().map(c => c.remotePeer.toString()))
      queueMicrotask(() => { this.connectedCache = undefined })
    }
    return this.connectedCache
  }

  /** This host's libp2p addresses, the most dialable first (address-order.ts). */
  addresses (): string[] {
    // Listening on 0.0.0.0 includes the bridges of private networks and the WireGuard overlay.
    return routableFirst(withoutIps(this.p2p?.getMultiaddrs().map(a => a.toString()) ?? [], picocloudInterfaceIps()))
  }

  /** When this host last heard from `peer` (ms since epoch), if ever. */
  lastSeen (peer: string): number | undefined {
    if (peer === this.peerId || this.connectedPeers().has(peer)) return Date.now()
    return this.liveness.lastSeen(peer)
  }

  peers (): PeerView[] {
    const doc = this.store.doc
    return (this.p2p?.getConnections() ?? []).map(c => ({
      peerId: c.remotePeer.toString(),
      name: String(doc.hosts?.[c.remotePeer.toString()]?.name ?? doc.members?.[c.remotePeer.toString()]?.name ?? ''),
      address: c.remoteAddr.toString(),
      direction: c.direction
    }))
  }

  penaltyList (): PeerPenalty[] { return this.penalties.list() }

  /** Tells the mesh how an image fetch for a VM on this host goes. */
  async publishProgress (p: ImageProgress): Promise<void> { await this.gossip.publishProgress(p) }

  /** The last fetch progress another host reported for a VM. */
  progressReported (vm: string): RemoteProgress | undefined { return this.gossip.progressReported(vm) }

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
        const stats = await syncInitiator(stream, this.store, id, undefined, { budget: (a, n) => this.gossip.rate.take(a, n) })
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
  holdWritesUntilSynced (): void {
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

  /** A sync that ended because the peer broke the protocol (more than it announced, garbage…) counts against it. */
  private syncFailed (peer: string, err: any): void {
    this.log.debug('sync failed', { peer, error: err?.message })
    // An invalid change or evidence was already counted when the store refused it.
    if (err instanceof SyncError && err.misbehaviour && err.code !== 'INVALID' && err.code !== 'BAD_EVIDENCE') this.penalise(peer, `sync: ${err.message}`)
  }

  private afterSync (peer: string, stats: SyncStats): void {
    this.releaseWrites?.()
    for (const author of new Set(stats.received.throttled ?? [])) this.gossip.throttled(author)
    if (stats.received.applied.length > 0 || stats.sent > 0) {
      this.log.debug('synced', { peer, received: stats.received.applied.length, sent: stats.sent })
    }
  }

  private onRejected (r: Rejection & { from?: string }): void {
    this.init.emit('change.rejected', { hash: r.hash, author: r.author, from: r.from, reason: r.reason })
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
  enforceMembership (): void {
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
      this.log.error('this host was expelled from the mesh', { by: me.expelled.by, reason: me.expelled.reason })
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

  /** The digest of our state that beats carry, recomputed only when the state moves. */
  private digest (): Uint8Array {
    if (this.digestCache.version !== this.store.version) this.digestCache = { version: this.store.version, digest: headsDigest(this.store.digestInput()) }
    return this.digestCache.digest
  }

  private async antiEntropy (): Promise<void> {
    const peers = this.libp2p.getPeers()
    if (peers.length === 0) return
    await this.syncWith(peers[Math.floor(Math.random() * peers.length)]).catch(() => {})
  }

  /**
   * Dials a member and takes the mesh's state from it (the first sync of `picocloud join`).
   * Returns the member's peer id. Throws JOIN_FAILED with what to do.
   */
  async join (address: string): Promise<string> {
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
      // Another host's loopback address reaches this machine: the daemon there is not that member.
      if (addressRank(ma.toString()) === 3 && /denyOutboundEncryptedConnection|unexpected ?peer|does not match/i.test(`${err.name ?? ''} ${err.message ?? ''}`)) {
        throw new PicocloudError(ErrorCode.JoinFailed,
          `could not join through ${ma.toString()}: a loopback address reaches only the machine it is used on (here: this host, or another daemon on it), not the member. Use an address of the member that this host can reach: \`picocloud id\` on the member lists them, routable ones first`, 502)
      }
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
    return peer.toString()
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

  async stop (): Promise<void> {
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.beats?.stop()
    this.divergence.stop()
    await this.p2p?.stop()
  }
}
