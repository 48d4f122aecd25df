/**
 * The data plane of one host, as the daemon runs it: whether this host can build private networks
 * at all (root, WireGuard, the tools), the network reconciler when it can, the WireGuard endpoints
 * it announces, and what `status` and `net show` say of it.
 *
 * @example
 * const plane = new DataPlane({ config, state, announce, store, world, wgPrivateKey, addresses, log })
 * await plane.start()
 */
import { join } from 'node:path'
import type { StateStore } from '../../crdt/store.ts'
import type { World } from '../../crdt/world.ts'
import { isActiveMember } from '../../crdt/schema.ts'
import type { NetworkStatusView } from '../../protocol/api.ts'
import type { Logger } from '../log.ts'
import type { NetworkConfig } from './config.ts'
import { assignOverlayAddresses, VXLAN_OVERHEAD_IPV6 } from './addressing.ts'
import { NetworkReconciler, deriveEndpoints, dataPlaneUnavailableReason, claimInterface } from './reconciler.ts'

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

export interface DataPlaneInit {
  config: NetworkConfig
  /** The state directory (runtime files go in `<state>/net`). */
  stateDir: string
  /** Addresses the operator announces (config), before the ones libp2p listens on. */
  announce: string[]
  store: StateStore
  world: () => World
  wgPrivateKey: string
  /** This host's libp2p addresses (WireGuard endpoints are derived from them unless configured). */
  addresses: () => string[]
  log: Logger
}

export class DataPlane {
  private readonly init: DataPlaneInit
  private reconciler?: NetworkReconciler
  /** Why this host runs no data plane, when it does not. */
  private off?: string
  private backend?: () => string | undefined

  constructor (init: DataPlaneInit) {
    this.init = init
  }

  /** Starts the reconciler when this host can build networks; otherwise says why not. */
  async start (): Promise<void> {
    if (this.reconciler !== undefined || this.off !== undefined) return
    const cfg = this.init.config
    const log = this.init.log
    if (cfg.mode === 'none') { this.off = 'network = "none" in the config'; return }
    if (process.getuid?.() !== 0) {
      this.off = cfg.mode === 'auto'
        ? 'not running as root (network = "auto"); run as root for private networks'
        : 'network = "linux" needs root (devices, WireGuard, dnsmasq)'
      if (cfg.mode === 'auto') log.info('no data plane on this host', { reason: this.off })
      else log.warn('no data plane on this host: private networks will not reach VMs here', { reason: this.off })
      return
    }
    const { realExec } = await import('../exec.ts')
    const why = await dataPlaneUnavailableReason(realExec)
    if (why !== undefined) {
      this.off = why
      log.warn('no data plane on this host: private networks will not reach VMs here', { reason: why })
      return
    }
    const holder = await claimInterface(cfg.wgIfname).catch(() => undefined)
    if (holder !== undefined) {
      this.off = `another picocloud daemon (pid ${holder}) runs the data plane on ${cfg.wgIfname} on this machine; give this one its own wireguard_interface (and wireguard_port), or network = "none"`
      log.warn('no data plane on this host', { reason: this.off })
      return
    }
    const { linuxNetworkDriver } = await import('./drivers/linux.ts')
    const driver = linuxNetworkDriver({ exec: realExec, log, tmpDir: this.init.stateDir })
    this.backend = driver.backend
    this.reconciler = new NetworkReconciler({
      store: this.init.store,
      world: this.init.world,
      driver,
      config: cfg,
      wgPrivateKey: this.init.wgPrivateKey,
      runtimeDir: join(this.init.stateDir, 'net'),
      log
    })
    this.reconciler.start()
  }

  /** Whether this host builds private networks; undefined until `start` has found out. */
  available (): boolean | undefined {
    if (this.reconciler !== undefined) return true
    return this.off !== undefined ? false : undefined
  }

  kick (): void { this.reconciler?.kick() }

  /** Runs a pass that sees the current state and waits for it (e.g. before a VM needs its bridge). */
  async settle (): Promise<void> { await this.reconciler?.settle() }

  /** The WireGuard port and the endpoints this host announces: configured, else from its libp2p addresses. */
  wireguard (): { port: number, endpoints: string[] } {
    const cfg = this.init.config
    return {
      port: cfg.wgPort,
      endpoints: cfg.endpoints.length > 0 ? [...cfg.endpoints] : deriveEndpoints([...this.init.announce, ...this.init.addresses()], cfg.wgPort)
    }
  }

  /** Where a network is built: each host's own view, from its record (published when it changes). */
  presence (netId: string): NetPresence[] {
    const { store } = this.init
    const doc = store.doc
    const byAddr = new Map<string, string>()
    if (store.meshId !== undefined) {
      const peers = Object.keys(doc.members ?? {}).filter(p => isActiveMember(doc, p))
      for (const [p, a] of assignOverlayAddresses(store.meshId, peers)) byAddr.set(a, p)
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

  status (): NetworkStatusView {
    const cfg = this.init.config
    const r = this.reconciler
    const last = r?.last
    const doc = this.init.store.doc
    const desired = last?.desired
    const peerOf = new Map((desired?.wireguard.peers ?? []).map(p => [p.publicKey, p.peerId]))
    return {
      mode: r === undefined ? 'none' : 'linux',
      ...(this.off !== undefined ? { reason: this.off } : {}),
      interface: cfg.wgIfname,
      listenPort: cfg.wgPort,
      endpoints: this.wireguard().endpoints,
      overlayAddress: desired?.wireguard.address ?? null,
      mtu: desired === undefined ? null : desired.wireguard.mtu - VXLAN_OVERHEAD_IPV6,
      ...(this.backend?.() !== undefined ? { backend: this.backend() } : {}),
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

  /** The reconciler's timings, for metrics. */
  stats (): NetworkReconciler['stats'] | undefined { return this.reconciler?.stats }

  stop (): void { this.reconciler?.stop() }
}
