import { describe, it, expect, vi, afterEach } from 'vitest'
import { isSilent, Liveness, SILENT_INTERVALS } from '../../node/mesh/liveness.ts'
import { headsDigest, sameDigest, DivergenceWatch, DIGEST_BYTES } from '../../node/mesh/anti-entropy.ts'

describe('liveness', () => {
  it('a peer is alive for three intervals after its last beat, then down', () => {
    const l = new Liveness(1000)
    l.heard('p', 10_000)
    expect(l.alive('p', 10_000 + SILENT_INTERVALS * 1000)).toBe(true)
    expect(l.alive('p', 10_001 + SILENT_INTERVALS * 1000)).toBe(false)
    expect(l.alive('never-heard', 10_000)).toBe(false)
  })

  it('a connection is silent only after our beats went out for longer than the allowance with nothing heard', () => {
    const allowance = SILENT_INTERVALS * 1000
    // Just started beating: not judged yet, even with nothing heard.
    expect(isSilent(0, undefined, 1000, allowance)).toBe(false)
    expect(isSilent(0, undefined, 1000, allowance + 1)).toBe(true)
    // Heard recently: alive.
    expect(isSilent(0, 5000, 1000, 5000 + allowance)).toBe(false)
    expect(isSilent(0, 5000, 1000, 5001 + allowance)).toBe(true)
  })
})

describe('heads digests', () => {
  it('equal sets of heads give equal digests whatever their order; different heads differ', () => {
    const a = headsDigest(['aa', 'bb', 'cc'])
    expect(a.length).toBe(DIGEST_BYTES)
    expect(sameDigest(a, headsDigest(['cc', 'aa', 'bb']))).toBe(true)
    expect(sameDigest(a, headsDigest(['aa', 'bb']))).toBe(false)
    expect(sameDigest(headsDigest([]), headsDigest(['aa']))).toBe(false)
  })
})

describe('divergence watch', () => {
  afterEach(() => { vi.useRealTimers() })

  function setup (ours: string[]) {
    vi.useFakeTimers()
    const state = { ours }
    const synced: string[] = []
    const w = new DivergenceWatch({ ours: () => headsDigest(state.ours), sync: p => synced.push(p), graceMs: 1000 })
    return { state, synced, w }
  }

  it('a peer reporting our own digest causes no sync', () => {
    const { synced, w } = setup(['h1'])
    w.report('p', headsDigest(['h1']))
    vi.advanceTimersByTime(5000)
    expect(synced).toEqual([])
  })

  it('a digest that still differs after the grace period makes us sync with that peer, once', () => {
    const { synced, w } = setup(['h1'])
    w.report('p', headsDigest(['h2']))
    w.report('p', headsDigest(['h2']))
    vi.advanceTimersByTime(999)
    expect(synced).toEqual([])
    vi.advanceTimersByTime(1)
    expect(synced).toEqual(['p'])
  })

  it('no sync when gossip closed the difference within the grace period', () => {
    const { state, synced, w } = setup(['h1'])
    w.report('p', headsDigest(['h2']))
    state.ours = ['h2'] // the change arrived by gossip
    vi.advanceTimersByTime(2000)
    expect(synced).toEqual([])
  })

  it('a disconnected peer is forgotten: its pending check is cancelled', () => {
    const { synced, w } = setup(['h1'])
    w.report('p', headsDigest(['h2']))
    w.forget('p')
    vi.advanceTimersByTime(2000)
    expect(synced).toEqual([])
  })
})
