/**
 * The lease, loss and endorsement rules (crdt/lease.ts) run by a deterministic simulator through
 * thousands of seeded schedules of partitions, one-way link failures, delays, paused daemons,
 * crashed daemons, power losses and drains, on 3–5 hosts whose clocks run at different rates. Each host
 * runs the real LeaseKeeper and the real pure functions, and does what the daemon does with them
 * (node/mesh/lease.ts, node/control/scheduler.ts, node/compute/fence.ts and watchdog.ts):
 *
 *   every beat        beat every peer it can reach: number, echo, and its view of the records
 *   4× per beat       declare silent peers; start a new epoch when declared and allowed; fence
 *                     when the lease is gone (pet the watchdog while it holds); claim, endorse,
 *                     withdraw; run the VM where its claim is endorsed by a majority
 *
 * The checked invariant is the one a user needs: at no moment do two QEMUs of the VM run. And
 * after everything heals, the VM runs on exactly one host. A failing schedule prints its seed.
 */
import { describe, expect, it } from 'vitest'
import {
  LeaseKeeper, epochOf, lostHosts, declarers, claimStands, endorsement, endorsedByMajority
} from '../../crdt/lease.ts'
import { rank } from '../../crdt/placement.ts'
import type { HostRecord, MeshDoc } from '../../crdt/schema.ts'

const BEAT = 1000
const VM = 'a'.repeat(64)
/** The fence kills this long before the lease ends (node/compute/fence.ts). */
const MARGIN = 200

/** mulberry32: small, seeded, good enough for schedules. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface Versioned { version: number, rec: HostRecord }

type Status = 'up' | 'paused' | 'down' | 'off'

interface SimHost {
  id: string
  rate: number
  offset: number
  status: Status
  keeper: LeaseKeeper
  view: Map<string, Versioned>
  qemu: boolean
  watchdog: number
  queue: Msg[]
  nextBeat: number
  lastBump?: number
}

interface Msg { from: string, to: string, beat?: { seq: number, echo: number }, records: Array<[string, Versioned]> }

interface Event { at: number, n: number, run: () => void }

/** Rules the simulator can break on purpose, to show that it notices. */
export interface Mutations {
  /** Declare a peer before its lease has ended (2 beats of silence against a 3-beat lease). */
  declareEarly?: boolean
  /** No watchdog: a frozen or dead daemon leaves its VM running. */
  noWatchdog?: boolean
}

/** A binary heap of events by time, then insertion order. */
class Queue {
  private readonly a: Event[] = []
  private less (i: number, j: number): boolean { const x = this.a[i]; const y = this.a[j]; return x.at < y.at || (x.at === y.at && x.n < y.n) }
  private swap (i: number, j: number): void { const t = this.a[i]; this.a[i] = this.a[j]; this.a[j] = t }
  push (e: Event): void {
    this.a.push(e)
    for (let i = this.a.length - 1; i > 0;) { const p = (i - 1) >> 1; if (!this.less(i, p)) break; this.swap(i, p); i = p }
  }

  peek (): Event | undefined { return this.a[0] }
  pop (): Event | undefined {
    const top = this.a[0]
    const last = this.a.pop()
    if (this.a.length > 0 && last !== undefined) {
      this.a[0] = last
      for (let i = 0; ;) {
        const l = 2 * i + 1; const r = l + 1; let m = i
        if (l < this.a.length && this.less(l, m)) m = l
        if (r < this.a.length && this.less(r, m)) m = r
        if (m === i) break
        this.swap(i, m); i = m
      }
    }
    return top
  }
}

class Sim {
  readonly hosts: SimHost[]
  readonly rnd: () => number
  readonly log: string[] = []
  t = 0
  private n = 0
  private readonly events = new Queue()
  readonly mutations: Mutations
  /** Directed links that drop everything: "from>to". */
  readonly cut = new Set<string>()
  maxCopies = 0
  /** Hosts that ever started the VM. */
  readonly starters = new Set<string>()
  violations: string[] = []
  /** Delay spikes: some messages take up to this long. */
  spikeMs = 3 * BEAT

  constructor (seed: number, count: number, mutations: Mutations = {}) {
    this.rnd = prng(seed)
    this.mutations = mutations
    const ids = Array.from({ length: count }, (_, i) => `12D3KooWSimHost${String.fromCharCode(65 + i)}${'x'.repeat(30)}`)
    this.hosts = ids.map(id => {
      const h: SimHost = {
        id,
        rate: 0.98 + this.rnd() * 0.04,
        offset: this.rnd() * 1e6,
        status: 'up',
        keeper: undefined as unknown as LeaseKeeper,
        view: new Map(ids.map(p => [p, { version: 0, rec: { name: p, addresses: [], wgPublicKey: '', version: '', updated: '' } }])),
        qemu: false,
        watchdog: Infinity,
        queue: [],
        nextBeat: 0
      }
      h.keeper = this.newKeeper(h)
      return h
    })
  }

  local (h: SimHost, t = this.t): number { return t * h.rate + h.offset }
  realAt (h: SimHost, local: number): number { return (local - h.offset) / h.rate }

  newKeeper (h: SimHost): LeaseKeeper {
    return new LeaseKeeper({ beatMs: BEAT, now: () => this.local(h), ...(this.mutations.declareEarly === true ? { timing: { fenceMs: 3 * BEAT, declareMs: 2 * BEAT } } : {}) })
  }

  at (t: number, run: () => void): void {
    this.events.push({ at: t, n: this.n++, run })
  }

  run (until: number): void {
    for (;;) {
      const next = this.events.peek()
      if (next === undefined || next.at > until) { this.t = until; return }
      const e = this.events.pop() as Event
      this.t = e.at
      // The watchdog works whatever the daemon does.
      if (this.mutations.noWatchdog !== true) for (const h of this.hosts) if (h.qemu && this.t >= h.watchdog) { h.qemu = false; this.note(h, 'watchdog kills the VM') }
      e.run()
      this.check()
    }
  }

  note (h: SimHost, what: string): void {
    this.log.push(`${this.t.toFixed(0).padStart(7)} ${h.id.slice(15, 16)} ${what}`)
  }

  check (): void {
    const copies = this.hosts.filter(h => h.qemu)
    this.maxCopies = Math.max(this.maxCopies, copies.length)
    if (copies.length > 1) this.violations.push(`t=${this.t.toFixed(0)}: ${copies.map(h => h.id.slice(15, 16)).join(',')} both run the VM`)
  }

  doc (h: SimHost): Partial<MeshDoc> {
    const hosts: Record<string, HostRecord> = {}
    const members: MeshDoc['members'] = {}
    for (const [p, v] of h.view) { hosts[p] = v.rec; members[p] = { name: p, admittedBy: p, admittedAt: '' } }
    return { members, hosts }
  }

  write (h: SimHost, fn: (rec: HostRecord) => void): void {
    const cur = h.view.get(h.id) as Versioned
    const rec = structuredClone(cur.rec)
    fn(rec)
    h.view.set(h.id, { version: cur.version + 1, rec })
    // Changes are pushed at once, as gossip does.
    for (const o of this.hosts) if (o !== h) this.send(h, o, undefined)
  }

  send (from: SimHost, to: SimHost, beat: Msg['beat']): void {
    if (this.cut.has(`${from.id}>${to.id}`)) return
    const delay = this.rnd() < 0.03 ? this.rnd() * this.spikeMs : 1 + this.rnd() * 40
    const msg: Msg = { from: from.id, to: to.id, beat, records: [...from.view].map(([p, v]) => [p, v]) }
    this.at(this.t + delay, () => { this.deliver(to, msg) })
  }

  deliver (h: SimHost, m: Msg): void {
    if (h.status === 'down' || h.status === 'off') return
    if (h.status === 'paused') { h.queue.push(m); return }
    if (m.beat !== undefined) h.keeper.received(m.from, m.beat.seq, m.beat.echo)
    let changed = false
    for (const [p, v] of m.records) {
      if (p === h.id) continue
      if (v.version > (h.view.get(p)?.version ?? -1)) { h.view.set(p, v); changed = true }
    }
    if (changed) this.decide(h)
  }

  beat (h: SimHost): void {
    if (h.status !== 'up') return
    const seq = h.keeper.sent()
    for (const o of this.hosts) {
      if (o === h) continue
      this.send(h, o, { seq, echo: h.keeper.echoFor(o.id, epochOf(h.view.get(o.id)?.rec)) })
    }
  }

  /** What the daemon does on a change and on its timers. */
  decide (h: SimHost): void {
    if (h.status !== 'up') return
    const members = this.hosts.map(x => x.id)
    const others = members.filter(p => p !== h.id)
    const own = (): HostRecord => (h.view.get(h.id) as Versioned).rec
    for (const [p, d] of Object.entries(own().unreachable ?? {})) h.keeper.remember(p, d.epoch)
    // Lease: declarations (node/mesh/lease.ts).
    const fresh = h.keeper.declare(others, p => epochOf(h.view.get(p)?.rec))
    const stale = Object.entries(own().unreachable ?? {}).filter(([p, d]) => d.epoch < epochOf(h.view.get(p)?.rec)).map(([p]) => p)
    if (fresh.length + stale.length > 0) {
      this.write(h, rec => {
        rec.unreachable ??= {}
        for (const p of stale) delete rec.unreachable[p]
        for (const f of fresh) rec.unreachable[f.peer] = { epoch: f.epoch, since: new Date(this.t).toISOString() }
      })
      for (const f of fresh) this.note(h, `declares ${f.peer.slice(15, 16)}@${f.epoch}`)
    }
    let doc = this.doc(h)
    let lost = lostHosts(doc)
    const standing = (p: string): boolean => claimStands(doc, lost, VM, p)
    const drained = (p: string): boolean => doc.hosts?.[p]?.drained !== undefined
    // crdt/world.ts: an endorsed standing claim wins unless its host is drained; else the ranking.
    const winnerOf = (): string | null => {
      const claimants = members.filter(p => standing(p) && !drained(p))
      const endorsed = claimants.find(p => endorsedByMajority(doc, VM, p))
      return endorsed ?? rank(VM, claimants)[0] ?? null
    }
    // A new epoch (node/control/scheduler.ts newEpoch): once the VM is not running here, at most once per declare time.
    if (declarers(doc, h.id).length > 0 && !h.qemu && this.local(h) - (h.lastBump ?? -Infinity) >= h.keeper.timing.declareMs) {
      {
        h.lastBump = this.local(h)
        this.write(h, rec => { rec.epoch = epochOf(rec) + 1; if (rec.claims !== undefined) delete rec.claims[VM] })
        this.note(h, `epoch ${epochOf(own())}`)
        doc = this.doc(h)
        lost = lostHosts(doc)
      }
    }
    // Fence (node/compute/fence.ts): kill without the lease, pet the watchdog while it holds.
    const expiry = h.keeper.expiry(members, h.id)
    const holdsLease = this.local(h) < expiry - MARGIN
    if (!holdsLease && h.qemu) { h.qemu = false; this.note(h, 'fenced') }
    h.watchdog = holdsLease && Number.isFinite(expiry) ? this.realAt(h, expiry - MARGIN) : Infinity
    // Placement: claim when nobody's claim stands and this host ranks first among the hosts it hears.
    let winner = winnerOf()
    if (winner === null && !lost.has(h.id) && !drained(h.id)) {
      const heard = members.filter(p => p === h.id || (h.keeper.lastHeard(p) ?? -Infinity) > this.local(h) - 3 * BEAT)
      if (rank(VM, heard.filter(p => !lost.has(p) && !drained(p)))[0] === h.id) {
        this.write(h, rec => { rec.claims = { ...rec.claims, [VM]: { at: '', epoch: epochOf(rec) } } })
        this.note(h, 'claims')
        doc = this.doc(h)
        winner = winnerOf()
      }
    }
    // Withdraw a claim that lost, once the VM is stopped here.
    if (standing(h.id) && winner !== h.id && winner !== null) {
      if (h.qemu) { h.qemu = false; this.note(h, 'stops its copy: another claim won') }
      this.write(h, rec => { if (rec.claims !== undefined) delete rec.claims[VM] })
      this.note(h, 'withdraws')
      doc = this.doc(h)
    }
    // Endorse.
    const want = endorsement(doc, lostHosts(doc), VM, h.id, winnerOf())
    if (want !== own().endorse?.[VM]) {
      this.write(h, rec => { rec.endorse ??= {}; if (want === undefined) delete rec.endorse[VM]; else rec.endorse[VM] = want })
      doc = this.doc(h)
    }
    // Reconcile.
    const mayRun = holdsLease && winnerOf() === h.id && standing(h.id) && endorsedByMajority(doc, VM, h.id)
    if (mayRun && !h.qemu) { h.qemu = true; h.watchdog = this.realAt(h, expiry - MARGIN); this.starters.add(h.id); this.note(h, 'starts the VM') }
    if (!mayRun && h.qemu) { h.qemu = false; this.note(h, 'stops the VM') }
  }

  /** Timers of a host: beats at the interval ± 10 %, decisions 4× per beat (on its own clock). */
  startTimers (h: SimHost): void {
    const beatLoop = (): void => {
      if (h.status === 'off' || h.status === 'down') return
      this.beat(h)
      this.at(this.t + (BEAT * (0.9 + this.rnd() * 0.2)) / h.rate, beatLoop)
    }
    const tick = (): void => {
      if (h.status === 'off' || h.status === 'down') return
      this.decide(h)
      this.at(this.t + BEAT / 4 / h.rate, tick)
    }
    this.at(this.t + this.rnd() * BEAT, beatLoop)
    this.at(this.t + this.rnd() * BEAT / 4, tick)
  }

  pause (h: SimHost, ms: number): void {
    if (h.status !== 'up') return
    h.status = 'paused'
    this.note(h, `paused for ${ms.toFixed(0)} ms`)
    this.at(this.t + ms, () => {
      if (h.status !== 'paused') return
      h.status = 'up'
      this.note(h, 'resumed')
      // What waited in the sockets is read first, then the timers catch up.
      const q = h.queue.splice(0)
      for (const m of q) this.deliver(h, m)
    })
  }

  /** The daemon dies (power: the VM and the watchdog too) and comes back after `ms`. */
  crash (h: SimHost, ms: number, power: boolean): void {
    if (h.status === 'down' || h.status === 'off') return
    h.status = power ? 'off' : 'down'
    h.queue = []
    if (power) { h.qemu = false; h.watchdog = Infinity }
    this.note(h, power ? `loses power for ${ms.toFixed(0)} ms` : `daemon crashes for ${ms.toFixed(0)} ms`)
    this.at(this.t + ms, () => {
      h.status = 'up'
      h.keeper = this.newKeeper(h)
      this.note(h, 'restarts')
      this.startTimers(h)
    })
  }

  heal (): void {
    this.cut.clear()
    this.spikeMs = 40
  }
}

/** One random schedule: faults for 60 beats, then everything heals. */
function schedule (seed: number, mutations: Mutations = {}): Sim {
  const r = prng(seed * 7919 + 1)
  const sim = new Sim(seed, 3 + Math.floor(r() * 3), mutations)
  for (const h of sim.hosts) sim.startTimers(h)
  // Let the VM be placed before the faults begin.
  sim.run(8 * BEAT)
  const faults = 1 + Math.floor(r() * 6)
  for (let i = 0; i < faults; i++) {
    const at = 8 * BEAT + r() * 60 * BEAT
    const ms = (1 + r() * 12) * BEAT
    const h = sim.hosts[Math.floor(r() * sim.hosts.length)]
    const kind = Math.floor(r() * 7)
    sim.at(at, () => {
      if (kind === 0) {
        // A partition: one side against the rest, both ways.
        const side = new Set(sim.hosts.filter(() => r() < 0.5).map(x => x.id))
        const links: string[] = []
        for (const a of sim.hosts) for (const b of sim.hosts) if (a !== b && side.has(a.id) !== side.has(b.id)) links.push(`${a.id}>${b.id}`)
        for (const l of links) sim.cut.add(l)
        sim.note(h, `partition ${[...side].map(p => p.slice(15, 16)).join('')} | rest for ${ms.toFixed(0)} ms`)
        sim.at(sim.t + ms, () => { for (const l of links) sim.cut.delete(l) })
      } else if (kind === 1) {
        // One direction only.
        const o = sim.hosts.find(x => x !== h) as SimHost
        sim.cut.add(`${h.id}>${o.id}`)
        sim.note(h, `link to ${o.id.slice(15, 16)} drops for ${ms.toFixed(0)} ms`)
        sim.at(sim.t + ms, () => { sim.cut.delete(`${h.id}>${o.id}`) })
      } else if (kind === 5) {
        // One link, both ways: each side still hears the others.
        const o = sim.hosts.find(x => x !== h && r() < 0.5) ?? sim.hosts.find(x => x !== h) as SimHost
        const links = [`${h.id}>${o.id}`, `${o.id}>${h.id}`]
        for (const l of links) sim.cut.add(l)
        sim.note(h, `link with ${o.id.slice(15, 16)} down for ${ms.toFixed(0)} ms`)
        sim.at(sim.t + ms, () => { for (const l of links) sim.cut.delete(l) })
      } else if (kind === 6) {
        // The operator drains the host for a while (host drain, then host undrain).
        if (h.status !== 'up') return
        sim.write(h, rec => { rec.drained = { at: '', reason: 'sim' } })
        sim.note(h, `drained for ${ms.toFixed(0)} ms`)
        sim.at(sim.t + ms, () => { if (h.status === 'up') sim.write(h, rec => { delete rec.drained }) })
      } else if (kind === 2) sim.pause(h, ms)
      else sim.crash(h, ms, kind === 4)
    })
  }
  sim.run(70 * BEAT)
  sim.heal()
  sim.run(130 * BEAT)
  return sim
}

describe('lease simulator (crdt/lease.ts)', () => {
  const SCHEDULES = Number(process.env.LEASE_SCHEDULES ?? 2000)

  it(`never runs two copies of a restart VM, and runs exactly one after healing, over ${SCHEDULES} seeded schedules`, () => {
    const failed: string[] = []
    let movedAtLeastOnce = 0
    for (let seed = 1; seed <= SCHEDULES; seed++) {
      const sim = schedule(seed)
      const running = sim.hosts.filter(h => h.qemu).length
      if (sim.starters.size > 1) movedAtLeastOnce++
      if (sim.violations.length > 0 || running !== 1) {
        failed.push(`seed ${seed}: ${sim.violations[0] ?? `${running} copies after healing`}\n${sim.log.slice(-60).join('\n')}`)
        if (failed.length >= 3) break
      }
    }
    expect(failed, failed.join('\n\n')).toEqual([])
    // The schedules really move the VM: otherwise "never two copies" would prove little.
    expect(movedAtLeastOnce).toBeGreaterThan(SCHEDULES / 10)
  }, 300_000)

  it.each([
    ['when a host declares a peer before its lease ends', { declareEarly: true }],
    ['without the watchdog', { noWatchdog: true }]
  ] as Array<[string, Mutations]>)('finds two copies %s (the simulator can fail)', (_, mutations) => {
    let found = 0
    for (let seed = 1; seed <= 500 && found === 0; seed++) if (schedule(seed, mutations).violations.length > 0) found = seed
    expect(found, 'a seed with two copies').toBeGreaterThan(0)
  }, 120_000)

  it('a VM whose host loses power runs on another host within the declare time plus a beat or two', () => {
    const sim = new Sim(42, 3)
    for (const h of sim.hosts) sim.startTimers(h)
    sim.run(8 * BEAT)
    const holder = sim.hosts.find(h => h.qemu) as SimHost
    expect(holder).toBeDefined()
    const t0 = sim.t
    sim.crash(holder, 1e9, true)
    let movedAt = Infinity
    for (let t = t0; t < t0 + 30 * BEAT && movedAt === Infinity; t += 100) {
      sim.run(t)
      if (sim.hosts.some(h => h.qemu)) movedAt = sim.t
    }
    // Declared after 6 beats of silence; claim, endorsement and start follow within about a beat.
    expect(movedAt - t0).toBeLessThan(9 * BEAT)
    expect(movedAt - t0).toBeGreaterThan(6 * BEAT * 0.97)
  })

  it('a 2-host mesh never moves the VM: a loss needs a majority', () => {
    const sim = new Sim(7, 2)
    for (const h of sim.hosts) sim.startTimers(h)
    sim.run(8 * BEAT)
    const holder = sim.hosts.find(h => h.qemu) as SimHost
    expect(holder).toBeDefined()
    sim.crash(holder, 1e9, true)
    sim.run(60 * BEAT)
    expect(sim.hosts.filter(h => h.qemu)).toEqual([])
  })
})
