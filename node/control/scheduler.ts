/**
 * Placement without a controller, this host's part: from the derived world, claim the VMs this
 * host ranks first for (among hosts it believes up), confirm a claim once it has settled with no
 * better-ranked claimant, withdraw claims a better-ranked host won, and record the final rejection
 * of requests this host received that nobody can take. All of it in one signed change per pass.
 */
import { deriveWorld, allClaims, hostViews, placementRequests, settledHosts, type World } from '../../crdt/world.ts'
import { assign, resolveClaims, placeOne, pinExcludes, type Claim } from '../../crdt/placement.ts'
import type { StateStore } from '../../crdt/store.ts'
import { scalars, isActiveMember } from '../../crdt/schema.ts'
import { declarers, epochOf, lostHosts, endorsement } from '../../crdt/lease.ts'
import type { RequestBook } from './requests.ts'
import type { Logger } from '../log.ts'

const KICK_DELAY_MS = 5

export interface SchedulerInit {
  store: StateStore
  book: RequestBook
  /** Whether a peer is up as this host sees it (heartbeats, connections). */
  up: (peer: string) => boolean
  /** The lease's declare time (crdt/lease.ts): a new epoch at most this often. @default 12000 */
  declareMs?: number
  /** Whether the VM still runs on this host (its hypervisor): a `restart` claim is withdrawn only after. @default never */
  runsHere?: (vmId: string) => boolean
  log: Logger
  /** How long a claim stands unchallenged before the VM counts as placed. @default 150 */
  settleMs?: number
  /**
   * How long a VM may stay unclaimed before the host ranked next claims it (and the one after,
   * twice as long…): a host ranked first that is up but never claims cannot keep a VM unplaced.
   * @default 5000
   */
  fallbackMs?: number
}

export class Scheduler {
  private readonly init: SchedulerInit
  private readonly settleMs: number
  private readonly fallbackMs: number
  /** When this host last started a new lease epoch, and how often it may. */
  private lastEpoch = -Infinity
  private readonly epochEveryMs: number
  /** When this host first saw each VM unclaimed (its own clock: only when to claim depends on it). */
  private readonly unclaimedSince = new Map<string, { since: number, due: number }>()
  private cached?: { heads: string, world: World }
  private running: Promise<void> | undefined
  private again = false
  private timer?: NodeJS.Timeout

  constructor (init: SchedulerInit) {
    this.init = init
    this.settleMs = init.settleMs ?? 150
    this.fallbackMs = init.fallbackMs ?? 5000
    this.epochEveryMs = init.declareMs ?? 12_000
  }

  /** The world derived from the current state (cached per state version). */
  world (): World {
    const { store, book } = this.init
    const heads = `${store.version}|${this.verdictVersion}`
    if (this.cached?.heads !== heads) this.cached = { heads, world: deriveWorld(store.doc, (id, via) => book.get(id, via)) }
    return this.cached.world
  }

  private verdictVersion = 0
  /** New verification verdicts change the world without a state change. */
  verdictsChanged (): void {
    this.verdictVersion++
    this.kick()
  }

  /** Runs a pass soon; passes never overlap. */
  /**
   * Runs a pass soon. Deferred to a later turn of the event loop so that the change that caused
   * it is forwarded and reported first, and so that a burst of changes costs one pass.
   */
  kick (): void {
    if (this.running !== undefined) { this.again = true; return }
    this.running = (async () => {
      await new Promise(resolve => setTimeout(resolve, KICK_DELAY_MS))
      do {
        this.again = false
        try { await this.pass() } catch (err: any) { this.init.log.error('scheduler pass failed', { error: err.message }) }
      } while (this.again)
    })().finally(() => { this.running = undefined })
  }

  async idle (): Promise<void> { await this.running }

  private async pass (): Promise<void> {
    const { store } = this.init
    if (!store.inMesh) return
    const self = store.self
    const doc = store.doc
    const world = this.world()
    const now = Date.now()
    const mine = doc.hosts?.[self]
    if (await this.newEpoch(world)) return
    const myClaims = mine?.claims ?? {}
    const epoch = epochOf(mine)
    const claimNow: string[] = []
    const confirm: string[] = []
    const withdraw: string[] = []
    const reject: Array<{ id: string, reason: string, reasons?: string }> = []
    // Endorsements of `restart` VMs' claims (crdt/lease.ts): id → peer@epoch, or null to drop.
    const endorse = new Map<string, string | null>()
    const lostNow = lostHosts(doc)
    for (const id of Object.keys(mine?.endorse ?? {})) {
      const vm = world.vms.get(id)
      if (vm === undefined || vm.desired === 'destroyed' || vm.rejected !== undefined || vm.spec.ha !== 'restart') endorse.set(id, null)
    }
    for (const vm of world.vms.values()) {
      if (vm.spec.ha !== 'restart' || vm.desired === 'destroyed' || vm.rejected !== undefined) continue
      const want = endorsement(doc, lostNow, vm.id, self, vm.host) ?? null
      if (want !== (mine?.endorse?.[vm.id] ?? null)) endorse.set(vm.id, want)
    }

    // Where unclaimed VMs would go among the hosts that are up: every up host a candidate.
    const up = (p: string): boolean => p === self || this.init.up(p)
    const hosts = hostViews(doc, up)
    const preqs = placementRequests(world.vms.values())
    const claims: Claim[] = allClaims(doc)
    // A lost or drained host's claim on a `restart` VM holds nothing: every up host is a candidate again.
    const lost = new Set(hosts.filter(h => h.lost === true || h.drained === true).map(h => h.peerId))
    // Nor does the claim of a host the VM's pin no longer admits (its owner moved it: `vm move`).
    const pinnedOut = (c: Claim): boolean => {
      const pin = world.vms.get(c.requestId)?.spec.pin
      return pin !== undefined && pinExcludes(pin, { peerId: c.peerId, labels: hosts.find(h => h.peerId === c.peerId)?.labels ?? {} }) !== undefined
    }
    const claimed = new Set(claims.filter(c => (!lost.has(c.peerId) || world.vms.get(c.requestId)?.spec.ha !== 'restart') && !pinnedOut(c)).map(c => c.requestId))
    const candidates = [...claims]
    for (const r of preqs) if (!claimed.has(r.id)) for (const h of hosts) if (h.up === true) candidates.push({ requestId: r.id, peerId: h.peerId })
    const plan = new Map(resolveClaims(preqs, hosts, candidates).map(a => [a.requestId, a.host]))

    for (const vm of world.vms.values()) {
      const claim = myClaims[vm.id]
      const gone = vm.desired === 'destroyed' || vm.rejected !== undefined
      if (claim !== undefined) {
        // A destroyed VM keeps its claim until the reconciler has really destroyed it here.
        const status = mine?.vms?.[vm.id]?.status
        if (gone && (vm.desired !== 'destroyed' || status === undefined || status === 'destroyed' || status === 'placed')) { withdraw.push(vm.id); continue }
        if (gone) continue
        // A `restart` VM goes only once it is stopped here: others endorse the next claim as soon as this one is gone.
        if (vm.host !== self && vm.host !== null) { if (vm.spec.ha !== 'restart' || this.init.runsHere?.(vm.id) !== true) withdraw.push(vm.id); continue }
        if (vm.host === self && mine?.vms?.[vm.id] === undefined && now - Date.parse(claim.at) >= this.settleMs) confirm.push(vm.id)
        continue
      }
      if (gone || vm.host !== null) { this.unclaimedSince.delete(vm.id); continue }
      // A request's expiry bounds the wait for a VM's first host only (see VmEntry.wasPlaced).
      const open = now < vm.expires || vm.wasPlaced === true
      if (plan.get(vm.id) === self && open) {
        claimNow.push(vm.id)
        continue
      }
      if (vm.claimants.length === 0 && open && this.fallbackDue(vm.id, preqs, hosts, now)) {
        this.init.log.warn('claiming a VM the better-ranked hosts left unclaimed', { vm: vm.id.slice(0, 12) })
        claimNow.push(vm.id)
        continue
      }
      // Nobody can take it, or nobody took it in time: the receiving host makes that final.
      if (vm.vias.includes(self) && vm.claimants.length === 0 && vm.wasPlaced !== true && mine?.rejections?.[vm.id] === undefined) {
        const outcome = world.requests.get(vm.id)
        if (outcome?.status === 'rejected') {
          reject.push({ id: vm.id, reason: 'no host can take it', reasons: JSON.stringify(outcome.reasons) })
        } else if (now >= vm.expires) {
          reject.push({ id: vm.id, reason: 'expired before any host could take it (eligible hosts were down)' })
        }
      }
    }
    if (claimNow.length > 0) {
      // Where the new VMs would go if every member were up. A host that is first even then has
      // nobody to wait for: no claim can outrank its own, so it places at once instead of
      // settling. (Only a host with a different view of eligibility could claim too; the usual
      // resolution of concurrent claims applies then.) Settling is for a better-ranked host
      // that seems down from here but may be up.
      const fixed = settledHosts(new Map(world.vms.entries()), claims)
      const unopposed = new Map(assign(preqs, hostViews(doc, () => true), { fixed }).map(a => [a.requestId, a.host]))
      for (const id of claimNow) if (unopposed.get(id) === self) confirm.push(id)
    }
    for (const id of [...this.unclaimedSince.keys()]) if (!world.vms.has(id)) this.unclaimedSince.delete(id)
    if (claimNow.length + confirm.length + withdraw.length + reject.length + endorse.size === 0) {
      this.armTimer(world, myClaims)
      return
    }
    const at = new Date(now).toISOString()
    await store.change(`schedule: claim ${claimNow.length}, place ${confirm.length}, withdraw ${withdraw.length}, reject ${reject.length}, endorse ${endorse.size}`, d => {
      const rec = d.host
      if (rec === undefined) return
      rec.claims ??= {}
      rec.vms ??= {}
      rec.rejections ??= {}
      for (const id of claimNow) {
        rec.claims[id] = scalars(epoch === 0 ? { at } : { at, epoch })
        delete rec.vms[id] // what this host said of it before it moved away, if anything
      }
      for (const id of confirm) rec.vms[id] = scalars({ status: 'placed', since: at })
      for (const id of withdraw) {
        delete rec.claims[id]
        delete rec.vms[id]
      }
      for (const r of reject) {
        rec.rejections[r.id] = scalars(r.reasons === undefined ? { at, reason: r.reason } : { at, reason: r.reason, reasons: r.reasons })
      }
      if (endorse.size > 0) {
        rec.endorse ??= {}
        for (const [id, ref] of endorse) { if (ref === null) delete rec.endorse[id]; else rec.endorse[id] = scalars(ref) }
      }
    })
    if (claimNow.length > 0) this.init.log.info('claimed VMs', { vms: claimNow.map(s => s.slice(0, 12)).join(',') })
    if (withdraw.length > 0) this.init.log.info('withdrew claims', { vms: withdraw.map(s => s.slice(0, 12)).join(',') })
    this.again = true
  }

  /**
   * Members declared this host unreachable (crdt/lease.ts). While their declarations stand they
   * echo none of its beats, so it starts a new epoch as soon as that is safe: when no `restart`
   * VM runs here (lost, it fenced them; otherwise none ran, or it could not hold its lease with
   * those declarations standing — test/unit/lease-sim.test.ts found that deadlock). In the same change its `restart` claims of the old epoch go (the reconciler stops what is
   * left of them) and its other claims are carried over: nobody else may take those VMs.
   */
  private async newEpoch (world: World): Promise<boolean> {
    const { store, log } = this.init
    const self = store.self
    const doc = store.doc
    if (!isActiveMember(doc, self) || declarers(doc, self).length === 0) return false
    // Not while a restart VM runs here (it holds its lease: dropping the claim would let another
    // host start it), and at most once per declare time (a host still unheard would only be
    // declared again at once).
    const running = [...world.vms.values()].some(vm => vm.spec.ha === 'restart' && this.init.runsHere?.(vm.id) === true)
    if (running || Date.now() - this.lastEpoch < this.epochEveryMs) return false
    this.lastEpoch = Date.now()
    const lost = lostHosts(doc).has(self)
    const mine = doc.hosts?.[self]
    const next = epochOf(mine) + 1
    const drop = Object.keys(mine?.claims ?? {}).filter(id => world.vms.get(id)?.spec.ha === 'restart')
    await store.change(`lease: epoch ${next}${lost ? ' (was lost)' : ''}, drop ${drop.length} restart claims`, d => {
      const rec = d.host
      if (rec === undefined) return
      rec.epoch = next
      rec.claims ??= {}
      rec.vms ??= {}
      for (const id of Object.keys(rec.claims)) {
        if (drop.includes(id)) { delete rec.claims[id]; delete rec.vms[id] } else rec.claims[id].epoch = next
      }
    })
    log.warn('starting a new lease epoch', { epoch: next, lost, dropped: drop.length })
    this.again = true
    return true
  }

  /**
   * Whether this host should claim a VM nobody has claimed: it is eligible and ranked k-th (k ≥ 1)
   * among the eligible hosts that are up, and the VM has been waiting k × fallbackMs. Claims are
   * only proposals: if the better-ranked host claims after all, the usual resolution decides.
   */
  private fallbackDue (id: string, preqs: ReturnType<typeof placementRequests>, hosts: ReturnType<typeof hostViews>, now: number): boolean {
    const entry = this.unclaimedSince.get(id)
    if (entry === undefined) { this.unclaimedSince.set(id, { since: now, due: now + this.fallbackMs }); return false }
    if (now < entry.due) return false
    const req = preqs.find(r => r.id === id)
    const rank = req === undefined ? -1 : placeOne(req, hosts.filter(h => h.up === true)).ranking.indexOf(this.init.store.self)
    // Not eligible here, or first (then the plan already claims): look again later, as hosts come and go.
    entry.due = rank > 0 ? entry.since + rank * this.fallbackMs : now + this.fallbackMs
    return rank > 0 && now >= entry.due
  }

  /** Wakes up when the next claim settles, or when a fallback claim may become due. */
  private armTimer (world: World, myClaims: Record<string, { at: string }>): void {
    let next = Infinity
    for (const { due } of this.unclaimedSince.values()) if (due > Date.now()) next = Math.min(next, due)
    for (const [id, c] of Object.entries(myClaims)) {
      const vm = world.vms.get(id)
      if (vm?.host === this.init.store.self && this.init.store.doc.hosts?.[this.init.store.self]?.vms?.[id] === undefined) {
        next = Math.min(next, Date.parse(c.at) + this.settleMs)
      }
    }
    if (next === Infinity) return
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.kick(), Math.max(0, next - Date.now()) + 5)
    this.timer.unref()
  }

  /**
   * The host operator moves away the VMs of `owner` that run here and that this host, by its
   * policy now (trust, quotas, networks), would no longer take: this host withdraws its claims,
   * the compute reconciler stops and removes them here, and the host ranked first among the
   * others claims each, as for a new VM (it starts from its image: no disk moves). A VM that no
   * other host that is up may take stays here, and is listed with why.
   */
  async evict (owner: string): Promise<EvictOutcome> {
    const { store } = this.init
    const self = store.self
    const doc = store.doc
    const world = this.world()
    const hosts = hostViews(doc, p => p === self || this.init.up(p))
    const others = hosts.filter(h => h.peerId !== self && h.up === true)
    const out: EvictOutcome = { moved: [], kept: [] }
    for (const req of placementRequests(world.vms.values())) {
      const vm = world.vms.get(req.id)!
      if (vm.host !== self || vm.owner !== owner) continue
      const here = placeOne(req, hosts).decisions.find(d => d.peerId === self)
      if (here?.eligible !== false) { out.kept.push({ id: vm.id, name: vm.name, why: 'this host still admits it' }); continue }
      if (placeOne(req, others).ranking.length === 0) { out.kept.push({ id: vm.id, name: vm.name, why: 'no other host that is up can take it' }); continue }
      out.moved.push({ id: vm.id, name: vm.name, why: here.detail ?? here.reason ?? '' })
    }
    if (out.moved.length > 0) {
      await store.change(`evict ${out.moved.length} VMs of ${owner}`, d => {
        const rec = d.host
        if (rec === undefined) return
        rec.vms ??= {}
        for (const { id } of out.moved) {
          if (rec.claims !== undefined) delete rec.claims[id]
          // Kept without a claim: the VM ran here, so another host may take it after its request expired.
          rec.vms[id] = scalars({ status: 'stopped', since: new Date().toISOString(), reason: 'moved away by the host operator (trust --evict)' })
        }
      })
      this.init.log.info('evicted VMs', { owner, vms: out.moved.map(v => v.name).join(',') })
    }
    return out
  }

  stop (): void {
    clearTimeout(this.timer)
  }
}

export interface EvictOutcome {
  /** Withdrawn here: another host will start them from their image. */
  moved: Array<{ id: string, name: string, why: string }>
  kept: Array<{ id: string, name: string, why: string }>
}
