/**
 * A picocloud host: the composition root. It loads the host's identity and replicated state,
 * makes the subsystems (mesh, control, compute, network), wires what each needs of the others,
 * and starts and stops them in order. Nothing else here: every behaviour lives in a subsystem
 * (docs/ARCHITECTURE.md).
 *
 * Start order: image side channel → libp2p (sync answered) → [in a mesh:] gossip and beats →
 * this host's record → every stored request judged, placement → images published, VMs reconciled
 * → data plane. Stop: the reverse.
 *
 * @example
 * const host = await PicocloudHost.create(config, logger)
 * await host.start()
 * await host.init('ninux-roma')
 */
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { ensureDir } from './files.ts'
import type { DaemonConfig } from './config.ts'
import type { Logger } from './log.ts'
import { loadOrCreatePeerKey } from '../keys/peer-key.ts'
import { loadWireguardKey, type WireguardKeyPair } from '../keys/wireguard.ts'
import { StateStore } from '../crdt/store.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { StatusView, IdView, NodeEvent } from '../protocol/api.ts'
import { Mesh, Membership } from './mesh/index.ts'
import { Control } from './control/index.ts'
import { Compute, hostResources } from './compute/index.ts'
import { DataPlane, vmAddresses } from './network/index.ts'

/** How long after a change of the state its consequences are worked out (see the constructor). */
const REACT_MS = 20

export const VERSION: string = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version

export interface HostEvents {
  event: [NodeEvent]
}

export class PicocloudHost extends EventEmitter<HostEvents> {
  readonly config: DaemonConfig
  readonly log: Logger
  readonly peerId: string
  readonly store: StateStore
  readonly wireguard: WireguardKeyPair
  readonly mesh: Mesh
  readonly membership: Membership
  readonly control: Control
  readonly compute: Compute
  readonly network: DataPlane
  private readonly started = Date.now()
  private meshStarted = false
  private stopping = false

  private constructor (config: DaemonConfig, log: Logger, key: Parameters<typeof peerIdFromPrivateKey>[0], wireguard: WireguardKeyPair, store: StateStore) {
    super()
    this.config = config
    this.log = log
    this.peerId = peerIdFromPrivateKey(key).toString()
    this.wireguard = wireguard
    this.store = store
    const emit = (type: string, data: Record<string, unknown> = {}): void => { this.emit('event', { type, time: new Date().toISOString(), ...data }) }
    this.mesh = new Mesh({ config, log, key, store, version: VERSION, emit, needsLease: () => this.compute.needsLease() })
    this.control = new Control({
      store,
      log,
      isUp: peer => this.mesh.isUp(peer),
      lastSeen: peer => this.mesh.lastSeen(peer),
      runsHere: id => this.compute.runsHere(id),
      declareMs: this.mesh.lease.keeper.timing.declareMs,
      vmAddresses
    })
    this.network = new DataPlane({
      config: config.network,
      stateDir: config.state,
      announce: config.announce,
      store,
      world: () => this.control.world(),
      wgPrivateKey: wireguard.privateKey,
      addresses: () => this.mesh.addresses(),
      log: log.forComponent('net')
    })
    this.compute = new Compute({
      config,
      log,
      store,
      world: () => this.control.world(),
      mesh: {
        libp2p: () => this.mesh.libp2p,
        connectedPeers: () => this.mesh.connectedPeers(),
        publishProgress: async p => await this.mesh.publishProgress(p),
        progressReported: vm => this.mesh.progressReported(vm)
      },
      // VM NICs go on the network's bridge: the data plane must have made it.
      beforeStart: async () => { await this.network.settle() },
      lease: { expiry: () => this.mesh.lease.expiry(), now: () => this.mesh.lease.now(), fenceMs: this.mesh.lease.keeper.timing.fenceMs, want: () => { this.mesh.leaseNeeded() } },
      emit
    })
    this.membership = new Membership({
      store,
      mesh: this.mesh,
      log,
      name: config.name,
      wgPublicKey: wireguard.publicKey,
      version: VERSION,
      wireguard: () => this.network.wireguard(),
      resources: async () => {
        // Until the data plane has started, what this host said before (no flapping on restart).
        const prev = store.doc.hosts?.[store.self]?.resources?.networks
        const networks = this.network.available() ?? (typeof prev === 'boolean' ? prev : undefined)
        return { ...await hostResources(config), ...(networks === undefined ? {} : { networks }) }
      },
      emit
    })
    // What moves whom. Every change of the state: told at once; then, after REACT_MS (and a burst
    // handled at once), judge and place, reconcile VMs and networks, drop expelled peers. A
    // received change is forwarded by gossip once its validator returns; the work it causes (the
    // view rebuilt, requests judged, plans made) must not compete, on every host at once, with
    // that forwarding, hop after hop. On 2 cores shared by 10 daemons this took the p50 of a change
    // reaching all 10 from 31 ms to 26 ms (npm run bench -- --only dissemination).
    let reacting = false
    store.on('change', ({ changes, local }) => {
      emit('state.changed', { local, changes: changes.map(c => ({ hash: c.hash, author: c.author })), heads: store.heads() })
      if (reacting) return
      reacting = true
      setTimeout(() => {
        reacting = false
        if (this.stopping) return
        this.mesh.enforceMembership()
        this.control.stateChanged()
        this.compute.kick()
        this.network.kick()
      }, REACT_MS).unref()
    })
    this.mesh.on('peers', () => this.control.peersChanged())
    this.mesh.on('addresses', () => { void this.membership.publishRecord() })
  }

  /** Loads (or creates, on first start) the host's identity and state. */
  static async create (config: DaemonConfig, log: Logger): Promise<PicocloudHost> {
    try {
      await ensureDir(config.state, 0o700)
    } catch (err: any) {
      if (err?.code !== 'EACCES' && err?.code !== 'EPERM') throw err
      throw new PicocloudError(ErrorCode.Config, `cannot create the state directory ${config.state}: permission denied. Run as root, or give a directory of yours with --state DIR (and --socket PATH)`, 500)
    }
    const key = await loadOrCreatePeerKey(config.state, log)
    const wg = await loadWireguardKey(config.state, key, log)
    const store = await StateStore.open({ dir: config.state, key, log: log.forComponent('state') })
    return new PicocloudHost(config, log, key, wg, store)
  }

  async start (): Promise<void> {
    await this.compute.listen()
    await this.mesh.start()
    await this.compute.serve(this.mesh.libp2p)
    if (this.store.inMesh) {
      this.mesh.holdWritesUntilSynced()
      await this.startMesh()
    }
  }

  /** Everything that needs a mesh, in order (see the module comment). */
  private async startMesh (): Promise<void> {
    if (this.meshStarted) return
    this.meshStarted = true
    await this.mesh.startTopics()
    await this.membership.publishRecord()
    await this.control.start()
    await this.network.start()
    // Now that the data plane is up (or known to be off): placement must know which it is.
    await this.membership.publishRecord()
    await this.compute.start()
    this.mesh.beat()
  }

  id (): IdView {
    return { peerId: this.peerId, addresses: this.mesh.addresses(), name: this.config.name, wgPublicKey: this.wireguard.publicKey }
  }

  /** `picocloud init`: a mesh of one. */
  async init (name: string | undefined): Promise<StatusView> {
    if (this.store.inMesh) throw new PicocloudError(ErrorCode.AlreadyInMesh, `this host is already in mesh ${this.store.meshId}; a host belongs to one mesh`, 409)
    await this.membership.found(name ?? `${this.config.name}-mesh`)
    await this.startMesh()
    return this.status()
  }

  /** `picocloud join`: takes the mesh's state from a member, then runs as a member. */
  async join (address: string): Promise<StatusView> {
    if (this.store.inMesh) {
      throw new PicocloudError(ErrorCode.AlreadyInMesh, `this host is already in mesh ${this.store.meshId} (${this.store.doc.mesh.name}); a host belongs to one mesh`, 409)
    }
    const via = await this.mesh.join(address)
    this.log.info('joined mesh', { mesh: this.store.meshId, via })
    this.emit('event', { type: 'mesh.joined', time: new Date().toISOString(), mesh: this.store.meshId, via })
    await this.startMesh()
    return this.status()
  }

  status (): StatusView {
    const doc = this.store.doc
    const me = doc.members?.[this.peerId]
    return {
      peerId: this.peerId,
      name: this.config.name,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
      addresses: this.mesh.addresses(),
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
      peers: this.mesh.peers(),
      state: {
        heads: this.store.heads(),
        changes: this.store.changeCount,
        feeds: this.store.feeds.size,
        pending: this.store.pendingCount,
        pendingBytes: this.store.pendingBytes,
        logBytes: this.store.logBytes,
        equivocations: this.store.evidence().map(e => ({ peerId: e.author, seq: e.seq }))
      },
      penalties: this.mesh.penaltyList(),
      network: this.network.status()
    }
  }

  async stop (): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    this.control.stop()
    this.network.stop()
    await this.compute.stop()
    await this.mesh.stop()
    await this.store.close()
    this.log.info('stopped')
  }
}
