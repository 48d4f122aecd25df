/**
 * Beats at two rates (node/mesh/liveness.ts): hosts without `restart` VMs beat at the idle rate,
 * a host that needs its lease beats on every tick and is answered at once, and the interval each
 * beat announces decides how its sender's silence is judged (crdt/lease.ts `declareMsFor`). Two
 * Beats instances over in-memory connections, driven tick by tick with explicit times.
 */
import { describe, it, expect } from 'vitest'
import { pushable } from 'it-pushable'
import { Beats, Liveness, decodeBeat, encodeBeat, BEAT_BYTES, MIN_BEAT_MS, MAX_BEAT_MS, type BeatLease } from '../../node/mesh/liveness.ts'
import { LeaseKeeper, DECLARE_BEATS } from '../../crdt/lease.ts'
import { silentLogger } from '../../node/log.ts'

const IDLE = 10_000
const FAST = 2_000

interface Side {
  name: string
  beats: Beats
  keeper: LeaseKeeper
  liveness: Liveness
  /** Beats this side read, with the interval each announced. */
  read: Array<{ from: string, intervalMs: number, echo: number }>
  needsLease: boolean
  handler?: (args: any) => void
  conn?: any
}

function side (name: string, clock: { now: number }): Side {
  const s: Side = { name, read: [], needsLease: false } as any
  s.keeper = new LeaseKeeper({ beatMs: FAST, idleBeatMs: IDLE, now: () => clock.now })
  s.liveness = new Liveness(IDLE)
  const lease: BeatLease = {
    sent: () => s.keeper.sent(),
    current: () => s.keeper.current(),
    echoFor: peer => s.keeper.echoFor(peer, 0),
    received: (peer, seq, echo, intervalMs) => {
      s.read.push({ from: peer, intervalMs, echo })
      s.keeper.received(peer, seq, echo, intervalMs)
    }
  }
  const p2p = {
    handle: async (_proto: string, handler: (args: any) => void) => { s.handler = handler },
    getConnections: () => s.conn === undefined ? [] : [s.conn]
  }
  s.beats = new Beats({
    p2p: p2p as any,
    liveness: s.liveness,
    intervalMs: IDLE,
    leaseMs: FAST,
    needsLease: () => s.needsLease,
    isMember: () => true,
    digest: () => new Uint8Array(8),
    onBeat: () => {},
    lease,
    log: silentLogger
  })
  return s
}

/** Connects a and b: each side's outbound stream feeds the other's handler. */
function link (a: Side, b: Side): void {
  const conn = (from: Side, to: Side): any => ({
    status: 'open',
    remotePeer: { toString: () => to.name },
    abort: () => {},
    newStream: async () => {
      const inbound = pushable<Uint8Array>()
      to.handler?.({ stream: { source: inbound }, connection: to.conn })
      return { sink: async (source: AsyncIterable<Uint8Array>) => { for await (const c of source) inbound.push(c) } }
    }
  })
  a.conn = conn(a, b)
  b.conn = conn(b, a)
}

/** Lets the in-memory streams deliver what was pushed. */
async function flush (): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise(resolve => setImmediate(resolve))
}

async function pair () {
  const clock = { now: 1_000_000 }
  const a = side('A', clock)
  const b = side('B', clock)
  await a.beats.listen()
  await b.beats.listen()
  link(a, b)
  // First ticks open the streams (each stream carries a first beat).
  a.beats.beat(clock.now)
  b.beats.beat(clock.now)
  await flush()
  return { clock, a, b }
}

describe('beats at two rates', () => {
  it('a beat carries its sender\'s interval; a hostile interval is clamped', () => {
    const b = decodeBeat(encodeBeat({ digest: new Uint8Array(8).fill(7), seq: 5, echo: 4, intervalMs: 2000 }))
    expect(b).toMatchObject({ seq: 5, echo: 4, intervalMs: 2000 })
    expect(encodeBeat({ digest: new Uint8Array(8), seq: 1, echo: 0, intervalMs: 1 }).length).toBe(BEAT_BYTES)
    expect(decodeBeat(encodeBeat({ digest: new Uint8Array(8), seq: 1, echo: 0, intervalMs: 0 })).intervalMs).toBe(MIN_BEAT_MS)
    expect(decodeBeat(encodeBeat({ digest: new Uint8Array(8), seq: 1, echo: 0, intervalMs: 0xffffffff })).intervalMs).toBe(MAX_BEAT_MS)
  })

  it('hosts without restart VMs beat at the idle rate: one beat per connection in 10 s of 2 s ticks', async () => {
    const { clock, a, b } = await pair()
    b.read.length = 0
    for (let t = 0; t < 5; t++) {
      clock.now += FAST
      a.beats.beat(clock.now)
    }
    await flush()
    // One beat in the five ticks (the idle interval is 10 s ± 10 %: the sixth tick at the latest).
    clock.now += FAST
    a.beats.beat(clock.now)
    await flush()
    expect(b.read.filter(r => r.from === 'A').length).toBe(1)
    expect(b.read.every(r => r.intervalMs === IDLE)).toBe(true)
    // And nothing was answered: both beat at the same rate.
    expect(a.read.length).toBe(1) // only b's first beat
  })

  it('with equal rates (lease_interval = heartbeat_interval) an idle host still beats on every tick', async () => {
    const clock = { now: 1_000_000 }
    const a = side('A', clock)
    const b = side('B', clock)
    ;(a.beats as any).init.intervalMs = FAST
    await a.beats.listen()
    await b.beats.listen()
    link(a, b)
    a.beats.beat(clock.now)
    await flush()
    b.read.length = 0
    // Ticks at the fast rate ± 10 %: the earliest tick must not find the beat "not yet due".
    for (let t = 0; t < 10; t++) {
      clock.now += FAST * 0.9
      a.beats.beat(clock.now)
    }
    await flush()
    expect(b.read.length).toBe(10)
  })

  it('a host that needs its lease beats on every tick, each beat is answered at once, and its lease holds', async () => {
    const { clock, a, b } = await pair()
    a.needsLease = true
    b.read.length = 0
    a.read.length = 0
    a.beats.beatNow()
    await flush()
    // B answered A's fast beat at once, echoing it: A holds its lease in a 2-host mesh.
    expect(b.read.map(r => r.intervalMs)).toEqual([FAST])
    expect(a.read.length).toBe(1)
    expect(a.read[0].echo).toBeGreaterThan(0)
    expect(a.keeper.holds(['A', 'B'], 'A')).toBe(true)
    for (let t = 0; t < 3; t++) {
      clock.now += FAST
      a.beats.beat(clock.now)
      await flush()
      // Still held 2 s after the last answer... and every tick renewed it.
      expect(a.keeper.holds(['A', 'B'], 'A')).toBe(true)
    }
    expect(b.read.length).toBe(4)
    expect(a.read.length).toBe(4)
    // B judges A by the fast rate: declared after 6 fast intervals, not 6 idle ones.
    expect(b.keeper.declareMsFor('A')).toBe(DECLARE_BEATS * FAST)
    expect(b.liveness.intervalOf('A')).toBe(FAST)
  })

  it('a host that stops needing its lease says so at once, so peers judge it by the idle rate again', async () => {
    const { clock, a, b } = await pair()
    a.needsLease = true
    a.beats.beatNow()
    await flush()
    expect(b.keeper.declareMsFor('A')).toBe(DECLARE_BEATS * FAST)
    a.needsLease = false
    clock.now += FAST
    a.beats.beat(clock.now)
    await flush()
    expect(b.keeper.declareMsFor('A')).toBe(DECLARE_BEATS * IDLE)
    expect(b.liveness.intervalOf('A')).toBe(IDLE)
    // Silent for 5 fast intervals after that: not declared (it would have been at the fast rate).
    clock.now += 6 * FAST + 1
    expect(b.keeper.declare(['A'], () => 0)).toEqual([])
  })
})
