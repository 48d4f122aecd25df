/**
 * The lease's pure rules (crdt/lease.ts), each with the attack it must withstand: one hostile
 * member declaring everyone, endorsing a claim that does not stand, echoing a beat never sent.
 */
import { describe, it, expect } from 'vitest'
import {
  LeaseKeeper, leaseExpiry, confirmationsNeeded, lostHosts, declarers, claimStands, endorsement,
  endorsedByMajority, claimRef, parseClaimRef, leaseTiming
} from '../../crdt/lease.ts'
import { readHostRecord } from '../../crdt/records.ts'
import { placeOne, resolveClaims, type HostView, type PlacementRequest } from '../../crdt/placement.ts'
import { emptyPolicy } from '../../keys/trust-policy.ts'
import type { HostRecord, MeshDoc } from '../../crdt/schema.ts'

const P = (c: string): string => `12D3KooW${c.repeat(44)}`
const [A, B, C, D, E] = ['A', 'B', 'C', 'D', 'E'].map(P)
const VM = 'b'.repeat(64)
const at = '2026-12-07T10:00:00.000Z'

function doc (records: Record<string, Partial<HostRecord>>, expelled: string[] = []): Partial<MeshDoc> {
  const members: MeshDoc['members'] = {}
  const hosts: MeshDoc['hosts'] = {}
  for (const [p, r] of Object.entries(records)) {
    members[p] = { name: p, admittedBy: A, admittedAt: at, ...(expelled.includes(p) ? { expelled: { by: A, at, reason: 'x' } } : {}) }
    if (!expelled.includes(p)) hosts[p] = { name: p, addresses: [], wgPublicKey: '', version: '', updated: at, ...r }
  }
  return { members, hosts }
}

describe('lease expiry', () => {
  it('needs a strict majority with the host itself: 0 others of 1, 1 of 2, 1 of 3, 2 of 4, 2 of 5', () => {
    expect([1, 2, 3, 4, 5].map(confirmationsNeeded)).toEqual([0, 1, 1, 2, 2])
    expect(leaseExpiry([], 1, 3000)).toBe(Infinity)
    expect(leaseExpiry([undefined, undefined], 3, 3000)).toBe(-Infinity)
    // 5 members: the second most recent confirmation counts.
    expect(leaseExpiry([1000, 5000, undefined, 2000], 5, 3000)).toBe(5000)
  })

  it('a confirmation runs from when the echoed beat was sent, not from when the echo arrived', () => {
    let now = 0
    const k = new LeaseKeeper({ beatMs: 1000, now: () => now })
    const seq = k.sent()
    now = 2500 // the echo took 2.5 s to come back
    k.received(B, 1, seq)
    expect(k.expiry([A, B, C], A)).toBe(0 + 3000)
    expect(k.holds([A, B, C], A)).toBe(true)
    now = 3000
    expect(k.holds([A, B, C], A)).toBe(false)
  })

  it('a member that never echoes leaves the lease to the others: in 3 hosts one honest echo holds it, none fences', () => {
    let now = 0
    const k = new LeaseKeeper({ beatMs: 1000, now: () => now })
    const seq = k.sent()
    k.received(C, 1, 0) // C beats but never echoes
    expect(k.holds([A, B, C], A)).toBe(false)
    k.received(B, 1, seq)
    expect(k.holds([A, B, C], A)).toBe(true)
    now = 3000
    expect(k.holds([A, B, C], A)).toBe(false)
  })

  it('an echo of a beat never sent (a hostile or confused peer) confirms nothing', () => {
    let now = 0
    const k = new LeaseKeeper({ beatMs: 1000, now: () => now })
    k.sent()
    k.received(B, 1, 999)
    expect(k.expiry([A, B, C], A)).toBe(-Infinity)
    // An older echo does not move a confirmation back.
    now = 100; const s2 = k.sent()
    k.received(B, 2, s2)
    k.received(B, 3, 1)
    expect(k.expiry([A, B, C], A)).toBe(100 + 3000)
  })
})

describe('declarations', () => {
  it('a peer silent for the declare time is declared once per epoch, counted from start for a peer never heard, and gets no echo after', () => {
    let now = 0
    const k = new LeaseKeeper({ beatMs: 1000, now: () => now })
    k.received(B, 7, 0)
    expect(k.echoFor(B, 0)).toBe(7)
    now = leaseTiming(1000).declareMs - 1
    expect(k.declare([B, C], () => 0)).toEqual([])
    now = leaseTiming(1000).declareMs + 1
    expect(k.declare([B, C], () => 0)).toEqual([{ peer: B, epoch: 0 }, { peer: C, epoch: 0 }])
    expect(k.declare([B, C], () => 0)).toEqual([])
    // Heard again: still no echo at that epoch, a healed link does not revive its lease.
    k.received(B, 8, 0)
    expect(k.echoFor(B, 0)).toBe(0)
    // A new epoch of B: echoed again.
    expect(k.echoFor(B, 1)).toBe(8)
  })

  it('a host back with a new epoch gets a whole declare time to be heard before it is declared again', () => {
    let now = 0
    const k = new LeaseKeeper({ beatMs: 1000, now: () => now })
    now = 7000
    expect(k.declare([B], () => 0)).toEqual([{ peer: B, epoch: 0 }])
    now = 20_000 // B comes back at epoch 1, not heard yet
    expect(k.declare([B], () => 1)).toEqual([])
    now = 25_999
    expect(k.declare([B], () => 1)).toEqual([])
    now = 26_001
    expect(k.declare([B], () => 1)).toEqual([{ peer: B, epoch: 1 }])
  })

  it('a restarted daemon remembers its declarations from its record', () => {
    const k = new LeaseKeeper({ beatMs: 1000, now: () => 0 })
    k.received(B, 3, 0)
    k.remember(B, 2)
    expect(k.echoFor(B, 2)).toBe(0)
    expect(k.echoFor(B, 3)).toBe(3)
  })

  it('a host is lost only when a strict majority declared it at its current epoch', () => {
    const d = doc({
      [A]: { unreachable: { [C]: { epoch: 0, since: at } } },
      [B]: { unreachable: { [C]: { epoch: 0, since: '2026-12-07T10:00:05.000Z' } } },
      [C]: {},
      [D]: { unreachable: { [C]: { epoch: 0, since: at } } },
      [E]: {}
    })
    expect(declarers(d, C)).toEqual([A, B, D].sort())
    expect([...lostHosts(d).keys()]).toEqual([C])
    // Declarations of an older epoch do not count.
    const back = doc({ ...Object.fromEntries(Object.entries(d.hosts ?? {})), [C]: { epoch: 1 } })
    expect(lostHosts(back).size).toBe(0)
  })

  it('one hostile member declaring everyone makes nobody lost in a 3-host mesh; an expelled member does not count', () => {
    const hostile = doc({ [A]: {}, [B]: {}, [C]: { unreachable: { [A]: { epoch: 0, since: at }, [B]: { epoch: 0, since: at } } } })
    expect(lostHosts(hostile).size).toBe(0)
    const withExpelled = doc({ [A]: {}, [B]: { unreachable: { [A]: { epoch: 0, since: at } } }, [C]: { unreachable: { [A]: { epoch: 0, since: at } } } }, [C])
    // C is expelled: B alone is not a majority of {A, B}.
    expect(lostHosts(withExpelled).size).toBe(0)
  })

  it('a 2-host mesh never loses a host', () => {
    expect(lostHosts(doc({ [A]: {}, [B]: { unreachable: { [A]: { epoch: 0, since: at } } } })).size).toBe(0)
  })
})

describe('claims and endorsements', () => {
  it('a claim stands only at its host\'s current epoch and while its host is not lost', () => {
    const d = doc({ [A]: { epoch: 1, claims: { [VM]: { at, epoch: 0 } } }, [B]: { claims: { [VM]: { at } } }, [C]: {} })
    expect(claimStands(d, new Set(), VM, A)).toBe(false)
    expect(claimStands(d, new Set(), VM, B)).toBe(true)
    expect(claimStands(d, new Set([B]), VM, B)).toBe(false)
  })

  it('an endorsement stays with a standing claim even when another wins the ranking, and moves only when it is void', () => {
    const d = doc({ [A]: { endorse: { [VM]: claimRef(B, 0) } }, [B]: { claims: { [VM]: { at } } }, [C]: { claims: { [VM]: { at } } } })
    expect(endorsement(d, new Set(), VM, A, C)).toBe(claimRef(B, 0))
    expect(endorsement(d, new Set([B]), VM, A, C)).toBe(claimRef(C, 0))
    // The winner's claim does not stand: nothing to endorse.
    expect(endorsement(d, new Set([B, C]), VM, A, C)).toBeUndefined()
  })

  it('a majority of endorsements is needed; a hostile member endorsing a claim that was never made gives it nothing', () => {
    const d = doc({
      [A]: { claims: { [VM]: { at } }, endorse: { [VM]: claimRef(A, 0) } },
      [B]: { endorse: { [VM]: claimRef(A, 0) } },
      [C]: { endorse: { [VM]: claimRef(C, 0) } },
      [D]: {},
      [E]: {}
    })
    expect(endorsedByMajority(d, VM, A)).toBe(false) // 2 of 5
    expect(endorsedByMajority(doc({ ...d.hosts, [D]: { endorse: { [VM]: claimRef(A, 0) } } } as any), VM, A)).toBe(true)
    // C endorses itself without a claim: in the world a claim that does not stand is never run.
    expect(claimStands(d, new Set(), VM, C)).toBe(false)
    expect(parseClaimRef(claimRef(A, 12))).toEqual({ peer: A, epoch: 12 })
    expect(parseClaimRef('nonsense')).toBeUndefined()
  })

  it('a host record with a bad epoch, declaration or endorsement loses that field only', () => {
    const r = readHostRecord({
      name: 'x', addresses: [], wgPublicKey: '', version: '1', updated: at,
      epoch: -1,
      unreachable: { [B]: { epoch: 'x', since: at }, [C]: { epoch: 0, since: at }, 'not-a-peer': { epoch: 0, since: at } },
      endorse: { [VM]: 'A@1; DROP', ['c'.repeat(64)]: claimRef(B, 2) },
      claims: { [VM]: { at, epoch: 1.5 } },
      drained: { at: 'yesterday', reason: 'x' }
    })
    expect(r.value?.epoch).toBeUndefined()
    expect(r.value?.unreachable).toEqual({ [C]: { epoch: 0, since: at } })
    expect(r.value?.endorse).toEqual({ ['c'.repeat(64)]: claimRef(B, 2) })
    expect(r.value?.claims).toEqual({})
    expect(r.value?.drained).toBeUndefined()
    expect(r.problems.length).toBeGreaterThanOrEqual(5)
  })
})

describe('placement and lost hosts', () => {
  const host = (peerId: string, extra: Partial<HostView> = {}): HostView => ({
    peerId, labels: {}, arch: ['x86_64'], capacity: { vcpus: 8, memMiB: 8192, diskGiB: 100 }, used: { vcpus: 0, memMiB: 0, diskGiB: 0 },
    policy: emptyPolicy(), usageByIssuer: {}, ...extra
  })
  const req = (ha?: 'restart'): PlacementRequest => ({ id: VM, issuer: 'F'.repeat(40), created: 0, needs: { vcpus: 1, memMiB: 256, diskGiB: 1, arch: 'x86_64', networks: [] }, ...(ha === undefined ? {} : { ha }) })

  it('a lost host takes no new restart VM; a --ha none VM may wait for it, as for a host that is down', () => {
    expect(placeOne(req('restart'), [host(A, { lost: true })]).decisions[0]).toMatchObject({ eligible: false, reason: 'lost' })
    // (Not trusted by its empty policy: any reason but `lost`.)
    expect(placeOne(req(), [host(A, { lost: true })]).decisions[0].reason).not.toBe('lost')
  })

  it('a restart VM leaves a lost host; a --ha none VM stays there', () => {
    const hosts = [host(A, { lost: true }), host(B)]
    const claims = [{ requestId: VM, peerId: A, settled: true }]
    expect(resolveClaims([req('restart')], hosts, claims)[0].host).toBeNull()
    expect(resolveClaims([req()], hosts, claims)[0].host).toBe(A)
  })

  it('a drained host takes no new VM of any kind; its restart VMs leave it, its --ha none VMs stay', () => {
    expect(placeOne(req('restart'), [host(A, { drained: true })]).decisions[0]).toMatchObject({ eligible: false, reason: 'drained' })
    expect(placeOne(req(), [host(A, { drained: true })]).decisions[0]).toMatchObject({ eligible: false, reason: 'drained' })
    const hosts = [host(A, { drained: true }), host(B)]
    const claims = [{ requestId: VM, peerId: A, settled: true }]
    expect(resolveClaims([req('restart')], hosts, claims)[0].host).toBeNull()
    expect(resolveClaims([req()], hosts, claims)[0].host).toBe(A)
  })
})
