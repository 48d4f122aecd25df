/**
 * Compute on one host: the image store and image transfer between hosts (the libp2p image
 * protocol and its side channel), the hypervisor driver (QEMU or libvirt) and the VM reconciler
 * that makes it match the world, and what `vm logs`, `vm console` and `vm show` read here.
 *
 * @example
 * const compute = new Compute({ config, log, store, world, mesh: meshPort, beforeStart })
 * await compute.listen()          // the image side channel
 * compute.serve(libp2p)           // the image protocol
 * await compute.start()           // once the world is known: images published, VMs reconciled
 */
import type { StateStore } from '../../crdt/store.ts'
import type { World } from '../../crdt/world.ts'
import { isActiveMember } from '../../crdt/schema.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { ImageProgress } from '../../protocol/progress.ts'
import type { Logger } from '../log.ts'
import { findVm } from '../control/index.ts'
import type { P2PNode } from '../mesh/index.ts'
import { ImageStore, type ImageInfo } from './images/store.ts'
import { IMAGE_PROTOCOL, serveImage, fetchImage, holders, type FetchProgress } from './images/transfer.ts'
import { startBulkServer, type BulkServer } from './images/bulk.ts'
import { VmReconciler } from './reconciler.ts'
import { Fence } from './fence.ts'
import { Watchdog } from './watchdog.ts'
import { vmName, type HypervisorDriver } from './hypervisor/types.ts'
import { DiskHandover, DISK_PROTOCOL, diskStream, type DiskHeader } from './disk-handover.ts'

export interface ComputeInit {
  /** `state`: the state directory; `hypervisor`: how VMs run; `imageListen`: the side channel. */
  config: { state: string, hypervisor: 'qemu' | 'libvirt' | 'none', imageListen?: string }
  log: Logger
  store: StateStore
  world: () => World
  /** What compute needs of the mesh: its libp2p node, who is connected, progress reports. */
  mesh: {
    libp2p: () => P2PNode
    connectedPeers: () => Set<string>
    publishProgress: (p: ImageProgress) => Promise<void>
    progressReported: (vm: string) => (ImageProgress & { host: string, at: number }) | undefined
  }
  /** Runs before a VM starts (its NICs need the network's bridge). */
  beforeStart: () => Promise<void>
  /** This host's lease (node/mesh/lease.ts): `--ha restart` VMs run only while it holds. `want`: see Fence. */
  lease: { expiry: () => number, now: () => number, fenceMs: number, want?: () => void }
  emit: (type: string, data?: Record<string, unknown>) => void
}

export class Compute {
  readonly images: ImageStore
  hypervisor?: HypervisorDriver
  reconciler?: VmReconciler
  fence?: Fence
  private readonly init: ComputeInit
  private readonly store: StateStore
  private readonly log: Logger
  /** Image fetches under way here, by VM id (also shown in `vm show`). */
  private readonly progress = new Map<string, FetchProgress>()
  /** The image side channel (images/bulk.ts), when on. */
  private bulk?: BulkServer
  /** Disks of moved VMs, between the host a VM leaves and the one it goes to. */
  private readonly disks: DiskHandover

  constructor (init: ComputeInit) {
    this.init = init
    this.store = init.store
    this.log = init.log
    this.images = new ImageStore({ stateDir: init.config.state })
    this.disks = new DiskHandover({ stateDir: init.config.state, log: init.log.forComponent('disks'), accept: (peer, h) => this.acceptDisk(peer, h) })
  }

  /** A disk is taken only for a move the state names: this VM, placed here, leaving `peer` by that request. */
  private acceptDisk (peer: string, h: DiskHeader): { maxBytes: number } | { refuse: string } {
    if (this.init.config.hypervisor === 'none') return { refuse: 'this host runs no VMs' }
    const vm = this.init.world().vms.get(h.vm)
    if (vm === undefined || vm.desired === 'destroyed' || vm.rejected !== undefined) return { refuse: 'no such VM' }
    if (vm.host !== this.store.self) return { refuse: 'the VM is not placed on this host' }
    if (vm.move?.from !== peer || vm.move.request !== h.request) return { refuse: 'the state names no such move of this VM from that host' }
    // A qcow2 overlay holds at most the virtual disk's data and some metadata.
    return { maxBytes: vm.needs.diskGiB * 2 ** 30 + 256 * 2 ** 20 }
  }

  /** Opens the image side channel (`image_listen`). */
  async listen (): Promise<void> {
    this.bulk = await startBulkServer(this.init.config.imageListen, this.log.forComponent('images'))
  }

  /** Serves the image protocol on this libp2p node. */
  async serve (p2p: P2PNode): Promise<void> {
    await p2p.handle(IMAGE_PROTOCOL, ({ stream, connection }) => {
      const bulk = this.bulk === undefined ? undefined : { server: this.bulk, peer: connection.remotePeer.toString() }
      void serveImage(stream, this.images, this.log.forComponent('images'), bulk)
    }, { maxInboundStreams: 8 })
    await p2p.handle(DISK_PROTOCOL, ({ stream, connection }) => {
      void this.disks.serve(stream, connection.remotePeer.toString())
    }, { maxInboundStreams: 4 })
  }

  /** Once the world is known: publishes the images held here and starts the VM reconciler. */
  async start (): Promise<void> {
    await this.publishImages()
    await this.startHypervisor()
  }

  kick (): void {
    this.guardedNames = undefined
    // Before the reconciler looks: a first restart VM here must start acquiring the lease now.
    this.fence?.check()
    this.reconciler?.kick()
  }

  /** Whether `restart` VMs are placed here: then this host keeps its lease (beats at the lease rate). */
  needsLease (): boolean {
    return this.guarded().length > 0
  }

  /** Names of the `restart` VMs placed here, worked out again after each change (not by the fence's timer). */
  private guardedNames?: string[]
  private guarded (): string[] {
    const self = this.store.self
    this.guardedNames ??= [...this.init.world().vms.values()]
      .filter(vm => vm.host === self && vm.spec.ha === 'restart' && vm.desired !== 'destroyed').map(vm => vmName(vm.id))
    return this.guardedNames
  }

  /** Whether the VM's QEMU ran here when last looked at (or was started since). */
  runsHere (vmId: string): boolean {
    return this.reconciler?.pids.has(vmName(vmId)) ?? false
  }

  private async startHypervisor (): Promise<void> {
    const { config } = this.init
    if (config.hypervisor === 'none' || this.reconciler !== undefined) return
    const log = this.log.forComponent('vms')
    if (config.hypervisor === 'libvirt') {
      // libvirt's QEMU runs as another user (libvirt-qemu): it must traverse the state dir to
      // reach the images and overlays (0711: nothing can be listed, secrets stay 0600).
      const { chmod } = await import('node:fs/promises')
      await chmod(config.state, 0o711)
      const { LibvirtDriver } = await import('./hypervisor/libvirt.ts')
      this.hypervisor = new LibvirtDriver({ stateDir: config.state, log })
    } else {
      const { QemuDriver } = await import('./hypervisor/qemu.ts')
      this.hypervisor = new QemuDriver({ stateDir: config.state, log })
    }
    const { writeSeed } = await import('./hypervisor/seed.ts')
    const driver = this.hypervisor
    this.fence = new Fence({
      lease: this.init.lease,
      driver,
      guarded: () => this.guarded(),
      pid: name => this.reconciler?.pids.get(name),
      // The libvirt driver's QEMU belongs to libvirtd: only the daemon's own check fences it.
      ...(config.hypervisor === 'qemu' ? { watchdog: new Watchdog(log.forComponent('watchdog')) } : {}),
      log,
      emit: this.init.emit,
      changed: () => { this.reconciler?.kick(true) }
    })
    this.reconciler = new VmReconciler({
      store: this.store,
      driver: this.hypervisor,
      images: this.images,
      world: this.init.world,
      log,
      fetch: async (vmId, sha256) => { await this.fetchImageFor(vmId, sha256) },
      seed: async (vm, spec) => await writeSeed(config.state, vm, spec),
      beforeStart: this.init.beforeStart,
      leaseHeld: () => this.fence?.holds() ?? true,
      leaseAcquiring: () => this.fence?.acquiring() ?? false,
      moves: {
        send: async (peer, vmId, request) => await this.disks.send(async () => await diskStream(this.init.mesh.libp2p(), peer), vmId, request),
        received: async (name, request) => await this.disks.received(name, request),
        adopted: async (name, request) => await this.disks.adopted(name, request),
        adopt: async (name, request, spec, fromImage) => { await this.disks.adopt(name, request, spec, fromImage) }
      },
      emit: this.init.emit,
      fenceReason: `fenced: this host heard fewer than a majority of the hosts for ${this.init.lease.fenceMs / 1000} s; it runs the VM again when it hears them, unless the mesh has moved it`
    })
    this.reconciler.start()
    this.fence.start()
  }

  private async fetchImageFor (vmId: string, sha256: string): Promise<void> {
    const { mesh } = this.init
    try {
      await fetchImage(mesh.libp2p(), this.images, sha256, holders(this.store, sha256, mesh.connectedPeers()), this.log.forComponent('images'), p => {
        this.progress.set(vmId, p)
        this.init.emit('image.progress', { vm: vmId, ...p })
        void mesh.publishProgress({ vm: vmId, ...p })
      })
    } finally {
      this.progress.delete(vmId)
    }
    await this.publishImages()
  }

  /** How the image fetch for a VM goes: here, or as its host reported it (fresh reports only). */
  progressOf (vm: { id: string, host: string | null, status: string }): FetchProgress | undefined {
    const local = this.progress.get(vm.id)
    if (local !== undefined) return local
    const remote = this.init.mesh.progressReported(vm.id)
    const fresh = remote !== undefined && remote.host === vm.host && Date.now() - remote.at < 5000 && vm.status === 'fetching-image'
    return fresh ? { sha256: remote.sha256, received: remote.received, total: remote.total, peer: remote.peer } : undefined
  }

  /** Publishes which images this host holds, so others can fetch them from here. */
  async publishImages (): Promise<void> {
    const self = this.store.self
    if (!this.store.inMesh || !isActiveMember(this.store.doc, self)) return
    const held = await this.images.list()
    const cur = this.store.doc.hosts[self]?.images ?? {}
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

  /** The serial console log of a VM that runs here. */
  async vmLogs (ref: string, tailBytes: number): Promise<{ vm: string, log: string }> {
    const vm = findVm(this.init.world(), ref)
    if (vm.host !== this.store.self || this.hypervisor === undefined) {
      const where = vm.host === null ? 'no host' : (this.store.doc.hosts?.[vm.host]?.name ?? vm.host)
      throw new PicocloudError(ErrorCode.NotAllowed, `VM ${vm.name} runs on ${where}, not here: run \`picocloud vm logs ${vm.name}\` against that host's socket`, 409)
    }
    const { open } = await import('node:fs/promises')
    try {
      const fh = await open(this.hypervisor.logPath(vmName(vm.id)), 'r')
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
    const vm = findVm(this.init.world(), ref)
    if (vm.host !== this.store.self || this.hypervisor === undefined) {
      throw new PicocloudError(ErrorCode.NotAllowed, `VM ${vm.name} does not run on this host; the console is reachable on the host that runs it`, 409)
    }
    return { vm: vm.name, path: this.hypervisor.consolePath(vmName(vm.id)) }
  }

  async stop (): Promise<void> {
    this.fence?.stop()
    this.reconciler?.stop()
    await this.bulk?.stop()
  }
}
