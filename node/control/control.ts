/**
 * The control plane of one host: signed requests (taken in through the socket, judged wherever
 * stored), the world they make (VMs, networks, images, outcomes), placement (this host's claims),
 * the operator's trust policy, and the views the API shows of all that.
 *
 * @example
 * const control = new Control({ store, log, isUp: peer => mesh.isUp(peer) })
 * await control.start()
 * await control.submit(envelope)
 */
import type { StateStore } from '../../crdt/store.ts'
import { hostViews, placementRequests, type World, type NetEntry, type VmEntry } from '../../crdt/world.ts'
import { placeOne, pinExcludes } from '../../crdt/placement.ts'
import { isActiveMember, scalars, optString } from '../../crdt/schema.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { TrustEntry } from '../../keys/trust-policy.ts'
import type { HistoryEntry } from '../../protocol/api.ts'
import type { PinSpec } from '../../protocol/requests.ts'
import type { Logger } from '../log.ts'
import { RequestBook } from './requests.ts'
import { Scheduler, type EvictOutcome } from './scheduler.ts'
import { trustAdd, trustRemove, trustList, republishKeys, type TrustAddInput, type TrustView } from './trust.ts'
import { listVms, findVm, vmView, requestView, type VmFilter, type VmView, type RequestView, type Liveness } from './views.ts'

export interface ControlInit {
  store: StateStore
  log: Logger
  /** Whether a peer is up as this host sees it (the mesh's liveness). */
  isUp: (peer: string) => boolean
  /** When this host last heard from a peer (ms since the epoch), if ever. */
  lastSeen: (peer: string) => number | undefined
  /** Whether a VM still runs on this host (compute): a `restart` claim is withdrawn only after. */
  runsHere?: (vmId: string) => boolean
  /** The lease's declare time (crdt/lease.ts). */
  declareMs?: number
  /** Each VM's addresses on its networks (the network subsystem's allocation). */
  vmAddresses?: (world: World) => Map<string, Array<{ net: string, address: string }>>
}

export interface NetView { name: string, owner: string, subnet: unknown, mode: string, gateway: unknown, vms: string[], hosts: string[], created: string }

export class Control {
  readonly requests: RequestBook
  readonly scheduler: Scheduler
  private readonly store: StateStore
  private readonly log: Logger
  private readonly liveness: Liveness
  private readonly addressesOf?: ControlInit['vmAddresses']

  constructor (init: ControlInit) {
    const { store, log } = init
    this.addressesOf = init.vmAddresses
    this.store = store
    store.on('change', () => { for (const w of [...this.waiters]) w() })
    this.log = log
    this.liveness = { isUp: init.isUp, lastSeen: init.lastSeen }
    this.requests = new RequestBook(store, log.forComponent('requests'))
    this.scheduler = new Scheduler({ store, book: this.requests, up: init.isUp, ...(init.runsHere === undefined ? {} : { runsHere: init.runsHere }), ...(init.declareMs === undefined ? {} : { declareMs: init.declareMs }), log: log.forComponent('scheduler') })
    this.requests.onVerified = () => this.scheduler.verdictsChanged()
    this.requests.onKeysChanged = fprs => {
      if (!store.inMesh || !isActiveMember(store.doc, store.self)) return
      republishKeys(store, fprs, async f => await this.requests.mergedKey(f))
        .then(n => { if (n > 0) log.info('republished merged keys (a revocation or update from another host)', { keys: n }) })
        .catch(err => log.warn('could not republish merged keys', { error: err.message }))
    }
  }

  /** The world derived from the replicated state (cached per state version). */
  world (): World { return this.scheduler.world() }

  /**
   * Judges every stored request, then places. Other subsystems (VMs, the data plane) start only
   * after this: before it the world would lack VMs, and a restarted host would tear down networks
   * and VMs that are right.
   */
  async start (): Promise<void> {
    await this.requests.verifyPending()
    this.scheduler.kick()
  }

  /** The state changed, or hosts came and went: judge what is new and place again. */
  stateChanged (): void {
    void this.requests.verifyPending()
    this.scheduler.kick()
  }

  peersChanged (): void { this.scheduler.kick() }

  async submit (envelope: unknown): Promise<RequestView> {
    const { id } = await this.requests.submit(envelope)
    await this.requests.verifyPending()
    return this.request(id)
  }

  /**
   * A request's view once its status is no longer `unless`, or after `waitMs` (a long poll: the
   * CLI and scripts wait for an outcome without asking every few milliseconds). Each change of the
   * state is looked at once; nothing else wakes it.
   */
  /** Long polls waiting for the next change of the state (one listener on the store for all). */
  private readonly waiters = new Set<() => void>()

  async requestWhen (id: string, unless: string | undefined, waitMs: number): Promise<RequestView> {
    const deadline = Date.now() + waitMs
    for (;;) {
      const view = this.request(id)
      const left = deadline - Date.now()
      if (unless === undefined || view.status !== unless || left <= 0) return view
      await new Promise<void>(resolve => {
        const done = (): void => { clearTimeout(timer); this.waiters.delete(done); resolve() }
        const timer = setTimeout(done, left)
        this.waiters.add(done)
      })
    }
  }

  request (id: string): RequestView {
    const world = this.world()
    const matches = [...world.requests.keys()].filter(k => k === id || (id.length >= 8 && k.startsWith(id)))
    if (matches.length !== 1) {
      throw new PicocloudError(ErrorCode.NotFound, matches.length === 0 ? `no request ${id} in the state of this host` : `${matches.length} requests start with ${id}; give more of the id`, 404)
    }
    return requestView(this.store.doc, world.requests.get(matches[0]) as NonNullable<ReturnType<typeof world.requests.get>>)
  }

  vms (filter: VmFilter): VmView[] {
    const world = this.world()
    return listVms(this.store.doc, world, filter, this.liveness, this.addressesOf?.(world))
  }

  vm (ref: string, owner?: string): VmView & { history: RequestView[] } {
    const world = this.world()
    const vm = findVm(world, ref, owner)
    const history = vm.requests.map(id => world.requests.get(id)).filter(r => r !== undefined).map(r => requestView(this.store.doc, r))
    return { ...vmView(this.store.doc, vm, this.liveness, this.addressesOf?.(this.world())), history }
  }

  nets (): NetView[] {
    const world = this.world()
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

  /** One network, with its entry (its id names it in the hosts' records). */
  net (name: string): NetView & { entry: NetEntry } {
    const n = this.nets().find(x => x.name === name)
    const entry = this.world().nets.get(name)
    if (n === undefined || entry === undefined) throw new PicocloudError(ErrorCode.NotFound, `no network ${name} (see \`picocloud net list\`)`, 404)
    return { ...n, entry }
  }

  imageList (): Array<{ name: string, sha256: string, format: string, sizeBytes: number, owner: string, arch: string, holders: string[] }> {
    return [...this.world().images.values()].sort((a, b) => a.name.localeCompare(b.name)).map(i => ({
      name: i.name,
      sha256: i.sha256,
      format: i.format,
      sizeBytes: i.sizeBytes,
      owner: i.owner,
      arch: i.arch,
      holders: Object.entries(this.store.doc.hosts ?? {}).filter(([, r]) => r.images?.[i.sha256] !== undefined).map(([p, r]) => r.name || p).sort()
    }))
  }

  /** With `evict`, the key's VMs here that the new entry no longer admits move away (Scheduler.evict). */
  async trustAdd (input: TrustAddInput, options: { evict?: boolean } = {}): Promise<TrustEntry & { evicted?: EvictOutcome }> {
    const entry = await trustAdd(this.store, input)
    this.log.info('trusted key', { fingerprint: entry.fingerprint })
    return options.evict === true ? { ...entry, evicted: await this.scheduler.evict(entry.fingerprint) } : entry
  }

  /** Running VMs of the key stay unless `evict`: then those another host can take move away. */
  async trustRemove (fpr: string, options: { evict?: boolean } = {}): Promise<{ fingerprint: string, evicted?: EvictOutcome }> {
    const r = await trustRemove(this.store, fpr)
    this.log.info('no longer trusts key', { fingerprint: r.fingerprint })
    return options.evict === true ? { ...r, evicted: await this.scheduler.evict(r.fingerprint) } : r
  }

  async trustList (): Promise<TrustView[]> {
    const world = this.world()
    const self = this.store.self
    return await trustList(this.store, fpr => {
      const u = { vms: 0, vcpus: 0, memMiB: 0, diskGiB: 0 }
      for (const vm of world.vms.values()) {
        if (vm.host !== self || vm.owner !== fpr || vm.desired === 'destroyed') continue
        u.vms++; u.vcpus += vm.needs.vcpus; u.memMiB += vm.needs.memMiB; u.diskGiB += vm.needs.diskGiB
      }
      return u
    })
  }

  /** The host operator stops a VM that runs here (socket authority, no signature). */
  async operatorStop (ref: string, reason: string): Promise<VmView> {
    const vm = findVm(this.world(), ref)
    const self = this.store.self
    if (vm.host !== self) {
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
    return vmView(this.store.doc, findVm(this.world(), vm.id), this.liveness)
  }

  /** The audit log with who is behind each change: the host by name, and the user of a stored request. */
  history (entries: ReadonlyArray<Omit<HistoryEntry, 'authorName'>>): HistoryEntry[] {
    const doc = this.store.doc
    const world = this.world()
    return entries.map(e => {
      const m = /^request \S+ ([0-9a-f]{64})$/.exec(e.message ?? '')
      const issuer = m === null ? undefined : world.requests.get(m[1])?.issuer
      return {
        ...e,
        authorName: optString(doc.hosts?.[e.author]?.name ?? doc.members?.[e.author]?.name) ?? null,
        ...(m === null ? {} : { request: m[1] }),
        ...(issuer === undefined || issuer === '?' ? {} : { issuer })
      }
    })
  }

  /**
   * The host operator drains this host: no new VM is placed here, and its `--ha restart` VMs move
   * away (each is killed here, then started by the host next in its ranking, from its image).
   * `--ha none` VMs stay: they would move without their disk. Refused, with nothing changed, when
   * a `restart` VM here has no other host that is up and may take it.
   */
  async drain (reason: string): Promise<DrainOutcome> {
    const { store } = this
    if (!store.inMesh) throw new PicocloudError(ErrorCode.NotInMesh, 'this host is not in a mesh', 409)
    const self = store.self
    const doc = store.doc
    const world = this.world()
    const others = hostViews(doc, p => this.liveness.isUp(p)).filter(h => h.peerId !== self && h.up === true)
    const out: DrainOutcome = { moving: [], staying: [] }
    const nowhere: string[] = []
    for (const req of placementRequests(world.vms.values())) {
      const vm = world.vms.get(req.id) as VmEntry
      if (vm.host !== self) continue
      if (vm.spec.ha !== 'restart') { out.staying.push({ name: vm.name, id: vm.id, why: '--ha none: it would move without its disk; it stays here (stop it, or destroy it and create it elsewhere)' }); continue }
      const to = placeOne(req, others).ranking[0]
      if (to === undefined) nowhere.push(vm.name)
      else out.moving.push({ name: vm.name, id: vm.id, to: optString(doc.hosts?.[to]?.name) ?? to })
    }
    if (nowhere.length > 0) {
      throw new PicocloudError(ErrorCode.NotAllowed, `cannot drain: no other host that is up may take ${nowhere.join(', ')} (--ha restart); nothing changed. Add a host that trusts the owner, or stop those VMs first`, 409)
    }
    const at = new Date().toISOString()
    await store.change('host drain', d => { if (d.host !== undefined) d.host.drained = scalars({ at, reason: reason || 'no reason given' }) })
    this.log.info('host drained', { reason, moving: out.moving.length, staying: out.staying.length })
    return out
  }

  /**
   * Where VM `ref` would go with pin `pin` (none: anywhere), among the hosts that are up other
   * than its own. Asked by `vm move` before it signs anything: a move nowhere is refused there.
   */
  moveCheck (ref: string, pin: PinSpec | undefined): MoveCheck {
    const world = this.world()
    const vm = findVm(world, ref)
    if (vm.host === null || vm.desired === 'destroyed') {
      throw new PicocloudError(ErrorCode.BadRequest, `VM ${vm.name} is not placed on any host: nothing to move (it starts where placement puts it)`, 409)
    }
    const from = vm.host
    const doc = this.store.doc
    const [req] = placementRequests([vm])
    const { pin: _old, ...needs } = req.needs
    const moved = { ...req, needs: pin === undefined ? needs : { ...needs, pin } }
    const others = hostViews(doc, p => this.liveness.isUp(p)).filter(h => h.peerId !== from)
    const placed = placeOne(moved, others)
    const name = (p: string): string | undefined => optString(doc.hosts?.[p]?.name)
    const fromLabels = hostViews(doc).find(h => h.peerId === from)?.labels ?? {}
    return {
      from,
      stays: pinExcludes(pin, { peerId: from, labels: fromLabels }) === undefined,
      ...(name(from) === undefined ? {} : { fromName: name(from) }),
      to: placed.ranking.map(p => ({ peerId: p, ...(name(p) === undefined ? {} : { name: name(p) }) })),
      reasons: placed.decisions.filter(d => !d.eligible).map(d => ({ host: d.peerId, ...(name(d.peerId) === undefined ? {} : { hostName: name(d.peerId) }), reason: d.reason ?? 'ineligible', detail: d.detail ?? '' }))
    }
  }

  /** Lifts `drain`: new VMs may come here again (VMs that moved away stay where they are). */
  async undrain (): Promise<{ drained: false }> {
    const { store } = this
    if (store.doc.hosts?.[store.self]?.drained === undefined) throw new PicocloudError(ErrorCode.BadRequest, 'this host is not drained', 409)
    await store.change('host undrain', d => { if (d.host !== undefined) delete d.host.drained })
    this.log.info('host undrained')
    return { drained: false }
  }

  /**
   * The host operator lifts their own stop of a VM on this host: it runs again if its owner wants
   * it running (the owner's own stop still holds).
   */
  async operatorStart (ref: string): Promise<VmView> {
    const vm = findVm(this.world(), ref)
    const self = this.store.self
    if (vm.host !== self) {
      throw new PicocloudError(ErrorCode.NotAllowed, `VM ${vm.name} does not run on this host (it runs on ${vm.host ?? 'no host'}); a host operator may start only VMs on their own host`, 403)
    }
    const report = this.store.doc.hosts?.[self]?.vms?.[vm.id]
    if (report?.operatorStop === undefined) {
      throw new PicocloudError(ErrorCode.BadRequest, `VM ${vm.name} was not stopped by this host's operator; its owner starts it (\`picocloud vm start ${vm.name}\`)`, 409)
    }
    const at = new Date().toISOString()
    await this.store.change(`operator starts ${vm.id}`, d => {
      const rec = d.host
      if (rec === undefined) return
      rec.vms ??= {}
      rec.vms[vm.id] = scalars({ status: 'stopped', since: at, reason: 'the host operator lifted their stop' })
    })
    this.log.info('operator lifted their stop of a VM', { vm: vm.id })
    return vmView(this.store.doc, findVm(this.world(), vm.id), this.liveness)
  }

  stop (): void {
    this.scheduler.stop()
  }
}

/** Where a `vm move` could take a VM now, as this host sees the mesh (asked before signing). */
export interface MoveCheck {
  /** The host it runs on: the one its disk comes from. */
  from: string
  fromName?: string
  /** The new pin admits its own host too: it would stay there (nothing to move). */
  stays: boolean
  /** Hosts that are up and may take it with the new pin, best first. */
  to: Array<{ peerId: string, name?: string }>
  /** Why each other host may not. */
  reasons: Array<{ host: string, hostName?: string, reason: string, detail: string }>
}

export interface DrainOutcome {
  /** `--ha restart` VMs leaving, with the host ranked first to take each (as this host sees it now). */
  moving: Array<{ name: string, id: string, to: string }>
  /** VMs that stay, and why. */
  staying: Array<{ name: string, id: string, why: string }>
}
