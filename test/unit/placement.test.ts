import { describe, it, expect } from 'vitest'
import fc from 'fast-check'
import { createHash } from 'node:crypto'
import {
  assign, placeOne, rank, rendezvousScore, resolveClaims, processingOrder, placementRequest, usageByIssuer,
  type HostView, type PlacementRequest, type Assignment, type Resources, type Claim
} from '../../crdt/placement.ts'
import { addEntry, emptyPolicy, findEntry, type TrustPolicy, type Usage } from '../../keys/trust-policy.ts'
import { validateBody } from '../../protocol/requests.ts'

const KEYS = ['A'.repeat(40), 'B'.repeat(40), 'C'.repeat(40)]
const PEERS = Array.from({ length: 12 }, (_, i) => `12D3KooWPeer${String.fromCharCode(65 + i)}${'x'.repeat(40)}`)
const NETS = ['lan', 'wan', 'dmz']

// ---------------------------------------------------------------- generators

const resources = (min: Resources, max: Resources): fc.Arbitrary<Resources> => fc.record({
  vcpus: fc.integer({ min: min.vcpus, max: max.vcpus }),
  memMiB: fc.integer({ min: min.memMiB, max: max.memMiB }),
  diskGiB: fc.integer({ min: min.diskGiB, max: max.diskGiB })
})

const entryArb = (fingerprint: string): fc.Arbitrary<Record<string, unknown>> => fc.record({
  fingerprint: fc.constant(fingerprint),
  maxVms: fc.option(fc.integer({ min: 1, max: 10 }), { nil: undefined }),
  maxVcpus: fc.option(fc.integer({ min: 2, max: 48 }), { nil: undefined }),
  maxMemMiB: fc.option(fc.integer({ min: 2048, max: 65536 }), { nil: undefined }),
  maxDiskGiB: fc.option(fc.integer({ min: 20, max: 1000 }), { nil: undefined }),
  networks: fc.option(fc.subarray(NETS), { nil: undefined })
}).map(e => Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined)))

const policyArb: fc.Arbitrary<TrustPolicy> = fc.subarray(KEYS, { minLength: 2 })
  .chain(keys => fc.tuple(...keys.map(entryArb)))
  .map(entries => entries.reduce((p: TrustPolicy, e) => addEntry(p, e), emptyPolicy()))

const usageArb: fc.Arbitrary<Usage> = fc.record({
  vms: fc.integer({ min: 0, max: 2 }),
  vcpus: fc.integer({ min: 0, max: 4 }),
  memMiB: fc.integer({ min: 0, max: 4096 }),
  diskGiB: fc.integer({ min: 0, max: 50 })
})

/** Mostly absent (the default), sometimes `value`, sometimes its opposite. */
const rarely = (value: boolean): fc.Arbitrary<boolean | undefined> => fc.oneof(
  { weight: 10, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constant(value) }, { weight: 1, arbitrary: fc.constant(!value) })

const hostArb = (peerId: string): fc.Arbitrary<HostView> => fc.record({
  labels: fc.record({ zone: fc.constantFrom('a', 'b'), rack: fc.constantFrom('1', '2') }, { requiredKeys: [] }),
  arch: fc.constantFrom(['x86_64'], ['x86_64'], ['aarch64'], ['x86_64', 'aarch64']),
  capacity: resources({ vcpus: 0, memMiB: 0, diskGiB: 0 }, { vcpus: 32, memMiB: 65536, diskGiB: 1000 }),
  usedShare: fc.double({ min: 0, max: 1, noNaN: true }).map(x => x * x),
  policy: policyArb,
  usageByIssuer: fc.subarray(KEYS).chain(keys => fc.tuple(...keys.map(k => usageArb.map(u => [k, u] as const))))
    .map(pairs => Object.fromEntries(pairs) as Record<string, Usage>),
  up: rarely(false),
  member: rarely(false)
}).map(({ usedShare, ...h }) => ({
  ...h,
  peerId,
  used: {
    vcpus: Math.floor(h.capacity.vcpus * usedShare),
    memMiB: Math.floor(h.capacity.memMiB * usedShare),
    diskGiB: Math.floor(h.capacity.diskGiB * usedShare)
  }
}))

const hostsArb: fc.Arbitrary<HostView[]> = fc.subarray(PEERS, { minLength: 1, maxLength: 7 })
  .chain(peers => fc.tuple(...peers.map(hostArb)))

const requestArb = (id: string): fc.Arbitrary<PlacementRequest> => fc.record({
  id: fc.constant(id),
  issuer: fc.constantFrom(...KEYS),
  created: fc.integer({ min: 0, max: 5 }),
  needs: fc.record({
    vcpus: fc.integer({ min: 1, max: 8 }),
    memMiB: fc.integer({ min: 256, max: 8192 }),
    diskGiB: fc.integer({ min: 1, max: 100 }),
    arch: fc.constantFrom('x86_64', 'x86_64', 'x86_64', 'aarch64'),
    networks: fc.subarray(NETS, { maxLength: 2 }),
    pin: fc.oneof(
      { weight: 6, arbitrary: fc.constant(undefined) },
      {
        weight: 1,
        arbitrary: fc.record({
          host: fc.constantFrom(...PEERS),
          labels: fc.record({ zone: fc.constantFrom('a', 'b') }, { requiredKeys: [] })
        }, { requiredKeys: [] })
      })
  }, { requiredKeys: ['vcpus', 'memMiB', 'diskGiB', 'arch', 'networks'] })
})

const requestsArb: fc.Arbitrary<PlacementRequest[]> = fc.uniqueArray(fc.stringMatching(/^[0-9a-f]{64}$/), { maxLength: 20 })
  .chain(ids => fc.tuple(...ids.map(requestArb)))

function shuffle<T> (xs: readonly T[], seed: number): T[] {
  const out = [...xs]
  let s = seed >>> 0
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    const j = s % (i + 1)
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

// ---------------------------------------------------------------- invariant checks

/**
 * No new placement over-commits a host: capacity, quotas, trust and networks hold for what is
 * placed anew, counted on top of what the host runs (`used`) and the placed VMs it keeps (`kept`:
 * "requestId/peerId" of settled claims, which stay whatever the host's policy or capacity say now).
 */
function checkNoOvercommit (requests: PlacementRequest[], hosts: HostView[], result: Assignment[], kept: ReadonlySet<string> = new Set()): void {
  const byId = new Map(requests.map(r => [r.id, r]))
  for (const h of hosts) {
    const all = result.filter(a => a.host === h.peerId)
    const mine = all.map(a => byId.get(a.requestId)!)
    const fresh = all.filter(a => !kept.has(`${a.requestId}/${h.peerId}`)).map(a => byId.get(a.requestId)!)
    if (all.length > 0) {
      expect(h.up).not.toBe(false)
      expect(h.member).not.toBe(false)
    }
    if (fresh.length === 0) continue
    const sum = (k: keyof Resources): number => h.used[k] + mine.reduce((s, r) => s + r.needs[k], 0)
    expect(sum('vcpus')).toBeLessThanOrEqual(h.capacity.vcpus)
    expect(sum('memMiB')).toBeLessThanOrEqual(h.capacity.memMiB)
    expect(sum('diskGiB')).toBeLessThanOrEqual(h.capacity.diskGiB)
    for (const key of KEYS) {
      if (!fresh.some(r => r.issuer === key)) continue
      const placed = mine.filter(r => r.issuer === key)
      const entry = findEntry(h.policy, key)
      expect(entry, 'only trusted keys are placed').toBeDefined()
      const u = h.usageByIssuer[key] ?? { vms: 0, vcpus: 0, memMiB: 0, diskGiB: 0 }
      const total = (k: keyof Resources): number => placed.reduce((s, r) => s + r.needs[k], 0)
      if (entry!.maxVms !== undefined) expect(u.vms + placed.length).toBeLessThanOrEqual(entry!.maxVms)
      if (entry!.maxVcpus !== undefined) expect(u.vcpus + total('vcpus')).toBeLessThanOrEqual(entry!.maxVcpus)
      if (entry!.maxMemMiB !== undefined) expect(u.memMiB + total('memMiB')).toBeLessThanOrEqual(entry!.maxMemMiB)
      if (entry!.maxDiskGiB !== undefined) expect(u.diskGiB + total('diskGiB')).toBeLessThanOrEqual(entry!.maxDiskGiB)
      if (entry!.networks !== undefined) {
        for (const r of fresh.filter(r => r.issuer === key)) for (const n of r.needs.networks) expect(entry!.networks).toContain(n)
      }
    }
  }
}

/** Whether a host keeps a VM it has placed: member, up, and what the VM asks (pin, architecture). */
function keeps (r: PlacementRequest, h: HostView): boolean {
  const pin = r.needs.pin
  return h.member !== false && h.up !== false && h.arch.includes(r.needs.arch) &&
    (pin?.host === undefined || pin.host === h.peerId) &&
    Object.entries(pin?.labels ?? {}).every(([k, v]) => h.labels[k] === v)
}

/** "requestId/peerId" of every settled claim. */
const keptPairs = (claims: readonly Claim[]): Set<string> => new Set(claims.filter(c => c.settled === true).map(c => `${c.requestId}/${c.peerId}`))

// ---------------------------------------------------------------- tests

describe('rendezvous ranking', () => {
  it('scores sha256(utf8(requestId) || utf8(peerId)), compared big-endian', () => {
    const id = '0'.repeat(64)
    expect(rendezvousScore(id, 'peer').toString('hex'))
      .toBe(createHash('sha256').update(`${id}peer`).digest('hex'))
    // Fixed vector, so that an implementation in another language can check its byte order.
    expect(rendezvousScore('abc', '12D3KooW').toString('hex')).toBe(createHash('sha256').update('abc12D3KooW').digest('hex'))
    const ranked = rank(id, PEERS)
    const scores = ranked.map(p => rendezvousScore(id, p).toString('hex'))
    expect([...scores].sort().reverse()).toEqual(scores)
  })

  it('is independent of input order and stable when a losing host leaves', () => {
    fc.assert(fc.property(fc.stringMatching(/^[0-9a-f]{64}$/), fc.subarray(PEERS, { minLength: 2 }), fc.nat(), (id, peers, seed) => {
      const r = rank(id, peers)
      expect(rank(id, shuffle(peers, seed))).toEqual(r)
      const loser = r[r.length - 1]
      expect(rank(id, peers.filter(p => p !== loser))[0]).toBe(r[0])
    }))
  })
})

describe('placeOne', () => {
  const policy = addEntry(emptyPolicy(), { fingerprint: KEYS[0], maxVms: 2, networks: ['lan'] })
  const host = (peerId: string, over: Partial<HostView> = {}): HostView => ({
    peerId,
    labels: { zone: 'a' },
    arch: ['x86_64'],
    capacity: { vcpus: 8, memMiB: 8192, diskGiB: 100 },
    used: { vcpus: 0, memMiB: 0, diskGiB: 0 },
    policy,
    usageByIssuer: {},
    ...over
  })
  const req = (over: Partial<PlacementRequest['needs']> = {}, issuer = KEYS[0]): PlacementRequest => ({
    id: 'f'.repeat(64), issuer, created: 0, needs: { vcpus: 2, memMiB: 2048, diskGiB: 10, arch: 'x86_64', networks: ['lan'], ...over }
  })

  it('explains every ineligible host', () => {
    const hosts = [
      host(PEERS[0]),
      host(PEERS[1], { policy: emptyPolicy() }),
      host(PEERS[2], { usageByIssuer: { [KEYS[0]]: { vms: 2, vcpus: 0, memMiB: 0, diskGiB: 0 } } }),
      host(PEERS[3], { used: { vcpus: 7, memMiB: 0, diskGiB: 0 } }),
      host(PEERS[4], { used: { vcpus: 0, memMiB: 7000, diskGiB: 0 } }),
      host(PEERS[5], { capacity: { vcpus: 8, memMiB: 8192, diskGiB: 5 } }),
      host(PEERS[6], { arch: ['aarch64'] }),
      host(PEERS[7], { up: false }),
      host(PEERS[8], { member: false }),
      host(PEERS[9], { labels: { zone: 'b' } })
    ]
    const p = placeOne(req({ pin: { labels: { zone: 'a' } } }), shuffle(hosts, 7))
    expect(p.decisions.map(d => [d.peerId, d.reason ?? 'eligible'])).toEqual([
      [PEERS[0], 'eligible'], [PEERS[1], 'not-trusted'], [PEERS[2], 'quota-vms'], [PEERS[3], 'capacity-vcpus'],
      [PEERS[4], 'capacity-mem'], [PEERS[5], 'capacity-disk'], [PEERS[6], 'architecture'], [PEERS[7], 'down'],
      [PEERS[8], 'not-member'], [PEERS[9], 'pin-labels']
    ])
    expect(p.ranking).toEqual([PEERS[0]])
    expect(placeOne(req({ networks: ['wan'] }), [host(PEERS[0])]).decisions[0].reason).toBe('network-not-allowed')
    expect(placeOne(req({ pin: { host: PEERS[1] } }), [host(PEERS[0]), host(PEERS[1])]).decisions.map(d => d.reason))
      .toEqual(['pin-host', undefined])
  })

  it('refuses a host listed twice', () => {
    expect(() => placeOne(req(), [host(PEERS[0]), host(PEERS[0])])).toThrow(/twice/)
  })

  it('places 20 simultaneous requests on hosts with room for 10, never more', () => {
    const hosts = [PEERS[0], PEERS[1], PEERS[2]].map((p, i) => host(p, {
      policy: addEntry(emptyPolicy(), { fingerprint: KEYS[0] }),
      capacity: { vcpus: [8, 6, 6][i], memMiB: 65536, diskGiB: 1000 }
    }))
    const requests = Array.from({ length: 20 }, (_, i): PlacementRequest => ({
      ...req(), id: createHash('sha256').update(`vm${i}`).digest('hex'), created: 1000
    }))
    const out = assign(requests, hosts)
    expect(out.filter(a => a.host !== null)).toHaveLength(10)
    for (const a of out.filter(x => x.host === null)) {
      expect(a.decisions.map(d => d.reason)).toEqual(['capacity-vcpus', 'capacity-vcpus', 'capacity-vcpus'])
    }
    checkNoOvercommit(requests, hosts, out)
  })
})

describe('assign (property)', () => {
  it('is deterministic whatever the order of hosts and requests', () => {
    fc.assert(fc.property(requestsArb, hostsArb, fc.nat(), (requests, hosts, seed) => {
      expect(assign(shuffle(requests, seed), shuffle(hosts, seed + 1))).toEqual(assign(requests, hosts))
    }), { numRuns: 200 })
  })

  it('never over-commits capacity or quota, places each VM at most once, respects pins, explains refusals', () => {
    fc.assert(fc.property(requestsArb, hostsArb, (requests, hosts) => {
      const out = assign(requests, hosts)
      expect(out.map(a => a.requestId)).toEqual(processingOrder(requests).map(r => r.id))
      expect(new Set(out.map(a => a.requestId)).size).toBe(out.length)
      const peerIds = new Set(hosts.map(h => h.peerId))
      const byId = new Map(requests.map(r => [r.id, r]))
      for (const a of out) {
        expect(a.decisions.map(d => d.peerId)).toEqual([...peerIds].sort())
        const r = byId.get(a.requestId)!
        if (a.host === null) {
          for (const d of a.decisions) {
            expect(d.eligible).toBe(false)
            expect(d.reason).toBeDefined()
            expect(d.detail).toMatch(/\S/)
          }
        } else {
          expect(peerIds.has(a.host)).toBe(true)
          expect(a.decisions.find(d => d.peerId === a.host)?.eligible).toBe(true)
          if (r.needs.pin?.host !== undefined) expect(a.host).toBe(r.needs.pin.host)
          const h = hosts.find(x => x.peerId === a.host)!
          for (const [k, v] of Object.entries(r.needs.pin?.labels ?? {})) expect(h.labels[k as 'zone']).toBe(v)
          expect(h.arch).toContain(r.needs.arch)
        }
      }
      checkNoOvercommit(requests, hosts, out)
    }), { numRuns: 500 })
  })

  it('for a single request, picks the top of placeOne\'s ranking', () => {
    fc.assert(fc.property(requestsArb.filter(r => r.length > 0), hostsArb, (requests, hosts) => {
      const p = placeOne(requests[0], hosts)
      expect(assign([requests[0]], hosts)[0].host).toBe(p.ranking[0] ?? null)
      expect([...p.ranking].sort()).toEqual(p.decisions.filter(d => d.eligible).map(d => d.peerId))
      expect(rank(requests[0].id, p.ranking)).toEqual(p.ranking)
    }), { numRuns: 200 })
  })
})

describe('resolveClaims (property)', () => {
  const claimsArb = (requests: PlacementRequest[], hosts: HostView[]): fc.Arbitrary<Array<{ requestId: string, peerId: string }>> =>
    fc.subarray(requests.flatMap(r => hosts.map(h => ({ requestId: r.id, peerId: h.peerId }))))

  it('keeps one claimant per request, never over-commits, and agrees with assign when everyone claims', () => {
    fc.assert(fc.property(
      fc.tuple(requestsArb, hostsArb).chain(([rs, hs]) => fc.tuple(fc.constant(rs), fc.constant(hs), claimsArb(rs, hs), fc.nat())),
      ([requests, hosts, claims, seed]) => {
        const out = resolveClaims(requests, hosts, claims)
        expect(resolveClaims(shuffle(requests, seed), shuffle(hosts, seed), shuffle(claims, seed))).toEqual(out)
        for (const a of out) {
          if (a.host !== null) expect(claims).toContainEqual({ requestId: a.requestId, peerId: a.host })
        }
        checkNoOvercommit(requests, hosts, out)
        const everyone = requests.flatMap(r => hosts.map(h => ({ requestId: r.id, peerId: h.peerId })))
        expect(resolveClaims(requests, hosts, everyone)).toEqual(assign(requests, hosts))
      }), { numRuns: 200 })
  })

  it('after a partition, the better-ranked of two claimants keeps the VM', () => {
    const policy = addEntry(emptyPolicy(), { fingerprint: KEYS[0] })
    const hosts = PEERS.slice(0, 4).map((peerId): HostView => ({
      peerId, labels: {}, arch: ['x86_64'], capacity: { vcpus: 4, memMiB: 4096, diskGiB: 40 }, used: { vcpus: 0, memMiB: 0, diskGiB: 0 }, policy, usageByIssuer: {}
    }))
    const r: PlacementRequest = { id: '1'.repeat(64), issuer: KEYS[0], created: 0, needs: { vcpus: 1, memMiB: 512, diskGiB: 1, arch: 'x86_64', networks: [] } }
    const order = rank(r.id, hosts.map(h => h.peerId))
    const out = resolveClaims([r], hosts, [{ requestId: r.id, peerId: order[2] }, { requestId: r.id, peerId: order[1] }])
    expect(out[0].host).toBe(order[1])
    expect(resolveClaims([r], hosts, [])[0].host).toBeNull()
  })
})

describe('placed VMs are never displaced (review issue 12, point 10)', () => {
  const MINUTE = 60_000
  const T = Date.parse('2026-01-01T12:00:00.000Z')
  const [H, G] = [PEERS[0], PEERS[1]]
  const host = (peerId: string, over: Partial<HostView> = {}): HostView => ({
    peerId,
    labels: {},
    arch: ['x86_64'],
    capacity: { vcpus: 4, memMiB: 8192, diskGiB: 100 },
    used: { vcpus: 0, memMiB: 0, diskGiB: 0 },
    policy: addEntry(addEntry(emptyPolicy(), { fingerprint: KEYS[0] }), { fingerprint: KEYS[1] }),
    usageByIssuer: {},
    ...over
  })
  const vm = (name: string, created: number, issuer: string, vcpus = 4): PlacementRequest => ({
    id: createHash('sha256').update(name).digest('hex'), issuer, created, needs: { vcpus, memMiB: 1024, diskGiB: 10, arch: 'x86_64', networks: [] }
  })
  // The victim has run on H since T; the attacker signs at T + 5 min but writes T − 50 min.
  const victim = vm('victim', T, KEYS[0])
  const attacker = vm('attacker', T - 50 * MINUTE, KEYS[1])
  const hostOf = (out: Assignment[], r: PlacementRequest): string | null => out.find(a => a.requestId === r.id)?.host ?? null
  const reasonOn = (out: Assignment[], r: PlacementRequest, peer: string): string | undefined =>
    out.find(a => a.requestId === r.id)?.decisions.find(d => d.peerId === peer)?.reason

  it('a placed VM stays when its host stops trusting the key, narrows its networks, quota or capacity; new ones do not come', () => {
    const onLan = { ...victim, needs: { ...victim.needs, networks: ['lan'] } }
    const settled: Claim[] = [{ requestId: onLan.id, peerId: H, settled: true }]
    const changes: Array<[string, Partial<HostView>]> = [
      ['trust removed', { policy: addEntry(emptyPolicy(), { fingerprint: KEYS[1] }) }],
      ['networks narrowed', { policy: addEntry(emptyPolicy(), { fingerprint: KEYS[0], networks: ['dmz'] }) }],
      ['quota lowered', { policy: addEntry(emptyPolicy(), { fingerprint: KEYS[0], maxVms: 1 }) }],
      ['capacity lowered', { capacity: { vcpus: 1, memMiB: 512, diskGiB: 1 } }]
    ]
    const later = vm('later', T + MINUTE, KEYS[0], 1)
    for (const [what, over] of changes) {
      const out = resolveClaims([onLan, later], [host(H, over)], [...settled, { requestId: later.id, peerId: H }])
      expect(hostOf(out, onLan), what).toBe(H)
      expect(hostOf(out, later), what).toBeNull() // a new VM of that key is judged by the new rules
    }
    // What the VM itself asks still holds: a claim is only what its author says.
    const pinned = { ...onLan, needs: { ...onLan.needs, pin: { labels: { zone: 'roof' } } } }
    expect(hostOf(resolveClaims([pinned], [host(H, { labels: { zone: 'roof' } })], settled), pinned)).toBe(H)
    expect(hostOf(resolveClaims([pinned], [host(H, { labels: { zone: 'cellar' } })], settled), pinned)).toBeNull()
    const elsewhere = { ...onLan, needs: { ...onLan.needs, pin: { host: G } } }
    expect(hostOf(resolveClaims([elsewhere], [host(H), host(G)], settled), elsewhere)).toBeNull() // H's settled claim is void
    const arm = { ...onLan, needs: { ...onLan.needs, arch: 'aarch64' } }
    expect(hostOf(resolveClaims([arm], [host(H)], settled), arm)).toBeNull()
    // Only an expelled or down host loses it.
    expect(hostOf(resolveClaims([onLan], [host(H, { member: false })], settled), onLan)).toBeNull()
    expect(hostOf(resolveClaims([onLan], [host(H, { up: false })], settled), onLan)).toBeNull()
  })

  it('a host that builds no private networks takes no VM with a NIC, but keeps one placed before', () => {
    const onLan = { ...victim, needs: { ...victim.needs, networks: ['lan'] } }
    const bare = vm('bare', T, KEYS[0], 1)
    const out = resolveClaims([onLan, bare], [host(H, { networks: false })], [{ requestId: onLan.id, peerId: H }, { requestId: bare.id, peerId: H }])
    expect(hostOf(out, onLan)).toBeNull()
    expect(reasonOn(out, onLan, H)).toBe('no-data-plane')
    expect(out.find(a => a.requestId === onLan.id)?.decisions[0].detail).toMatch(/builds no private networks.*VM is on lan/)
    expect(hostOf(out, bare)).toBe(H)
    // Its data plane broke after the VM was placed: the VM stays (its network may come back).
    expect(hostOf(resolveClaims([onLan], [host(H, { networks: false })], [{ requestId: onLan.id, peerId: H, settled: true }]), onLan)).toBe(H)
  })

  it('a backdated request does not take a full host from the VM settled there', () => {
    // Only H exists, with room for one: the attacker gets nothing, even if H also claimed it.
    const claims: Claim[] = [{ requestId: victim.id, peerId: H, settled: true }, { requestId: attacker.id, peerId: H }]
    const out = resolveClaims([attacker, victim], [host(H)], claims)
    expect(hostOf(out, victim)).toBe(H)
    expect(hostOf(out, attacker)).toBeNull()
    expect(reasonOn(out, attacker, H)).toBe('capacity-vcpus')
    // With a second host, the attacker goes there.
    const two = resolveClaims([attacker, victim], [host(H), host(G)], [...claims, { requestId: attacker.id, peerId: G }])
    expect(hostOf(two, victim)).toBe(H)
    expect(hostOf(two, attacker)).toBe(G)
    // Without the settled marker (two bare claims) `created` still decides: that is the old bug.
    expect(hostOf(resolveClaims([attacker, victim], [host(H)], claims.map(c => ({ ...c, settled: false }))), attacker)).toBe(H)
  })

  it('a backdated request does not take a per-key quota from the VM settled there', () => {
    // Same key for both, maxVms 1 on H, plenty of room: the quota is what they compete for.
    const policy = addEntry(emptyPolicy(), { fingerprint: KEYS[0], maxVms: 1 })
    const big = { capacity: { vcpus: 64, memMiB: 65536, diskGiB: 1000 }, policy }
    const mine = vm('victim', T, KEYS[0], 1)
    const late = vm('attacker', T - 50 * MINUTE, KEYS[0], 1)
    const claims: Claim[] = [{ requestId: mine.id, peerId: H, settled: true }, { requestId: late.id, peerId: H }]
    const out = resolveClaims([late, mine], [host(H, big)], claims)
    expect(hostOf(out, mine)).toBe(H)
    expect(hostOf(out, late)).toBeNull()
    expect(reasonOn(out, late, H)).toBe('quota-vms')
    const two = resolveClaims([late, mine], [host(H, big), host(G, big)], [...claims, { requestId: late.id, peerId: G }])
    expect([hostOf(two, mine), hostOf(two, late)]).toEqual([H, G])
  })

  it('assign counts fixed (placed) VMs first, so decisions for new requests see the room left', () => {
    const fixed = new Map([[victim.id, H]])
    const out = assign([attacker, victim], [host(H)], { fixed })
    expect(hostOf(out, victim)).toBe(H)
    expect(hostOf(out, attacker)).toBeNull()
    expect(reasonOn(out, attacker, H)).toBe('capacity-vcpus')
    expect(hostOf(assign([attacker, victim], [host(H), host(G)], { fixed }), attacker)).toBe(G)
    // Nothing fixed: the old behaviour, processing order alone.
    expect(hostOf(assign([attacker, victim], [host(H)]), attacker)).toBe(H)
    expect(assign([attacker, victim], [host(H)], {})).toEqual(assign([attacker, victim], [host(H)]))
    // A fixed host that can no longer take the VM (down) does not pin it: it is placed like the others.
    expect(hostOf(assign([victim], [host(H, { up: false }), host(G)], { fixed }), victim)).toBe(G)
  })

  it('between two settled claimants the better-ranked eligible one wins; a better unsettled claim does not', () => {
    const r = vm('partitioned', T, KEYS[0], 1)
    const order = rank(r.id, PEERS.slice(0, 4))
    const hosts = PEERS.slice(0, 4).map(p => host(p))
    const settled = (p: string): Claim => ({ requestId: r.id, peerId: p, settled: true })
    expect(resolveClaims([r], hosts, [settled(order[3]), settled(order[1])])[0].host).toBe(order[1])
    expect(resolveClaims([r], hosts, [settled(order[3]), { requestId: r.id, peerId: order[0] }])[0].host).toBe(order[3])
    // The better settled one went down: the other settled one keeps the VM.
    const down = hosts.map(h => h.peerId === order[1] ? { ...h, up: false } : h)
    expect(resolveClaims([r], down, [settled(order[3]), settled(order[1])])[0].host).toBe(order[3])
    // Every settled claimant is down: an unsettled claimant may take over, after the placed VMs.
    const allDown = hosts.map(h => h.peerId === order[3] ? { ...h, up: false } : h)
    expect(resolveClaims([r], allDown, [settled(order[3]), { requestId: r.id, peerId: order[2] }])[0].host).toBe(order[2])
  })

  /** Requests and hosts, claims on any (request, host) pair, some of them settled. */
  const scenarioArb = fc.tuple(requestsArb, hostsArb).chain(([rs, hs]) => fc.tuple(
    fc.constant(rs), fc.constant(hs),
    fc.subarray(rs.flatMap(r => hs.map(h => ({ requestId: r.id, peerId: h.peerId }))))
      .chain(cs => fc.tuple(...cs.map(c => fc.boolean().map((settled): Claim => ({ ...c, settled }))))),
    fc.integer({ min: 0, max: rs.length }),
    fc.nat()))

  const settledHosts = (claims: readonly Claim[], id: string): Set<string> =>
    new Set(claims.filter(c => c.requestId === id && c.settled === true).map(c => c.peerId))

  it('property: new unsettled requests, whatever their created time, never move a settled VM', () => {
    fc.assert(fc.property(scenarioArb, fc.array(fc.integer({ min: 0, max: 100 * MINUTE })), ([requests, hosts, claims, split], backdate) => {
      // The first `split` requests exist already; the others arrive late, backdated by any amount,
      // with bare claims only (a new request cannot have been placed yet).
      const old = requests.slice(0, split)
      const late = requests.slice(split).map((r, i) => ({ ...r, created: r.created - (backdate[i] ?? 0) }))
      const lateIds = new Set(late.map(r => r.id))
      const oldClaims = claims.filter(c => !lateIds.has(c.requestId))
      const allClaims = claims.map(c => lateIds.has(c.requestId) ? { ...c, settled: false } : c)
      const before = new Map(resolveClaims(old, hosts, oldClaims).map(a => [a.requestId, a]))
      const after = resolveClaims([...late, ...old], hosts, allClaims)
      checkNoOvercommit([...late, ...old], hosts, after, keptPairs(allClaims))
      const afterById = new Map(after.map(a => [a.requestId, a]))
      for (const r of old) {
        const settled = settledHosts(oldClaims, r.id)
        const b = before.get(r.id)!
        if (b.host !== null && settled.has(b.host)) expect(afterById.get(r.id)).toEqual(b)
        // It keeps the best-ranked of its settled hosts that is a member and up, whatever their
        // policy, capacity or the other VMs there.
        const best = rank(r.id, hosts.filter(h => settled.has(h.peerId) && keeps(r, h)).map(h => h.peerId))[0]
        if (best !== undefined) expect(afterById.get(r.id)?.host).toBe(best)
      }
    }), { numRuns: 300 })
  })

  it('property: deterministic whatever the order of hosts, requests and claims; assign({ fixed }) agrees', () => {
    fc.assert(fc.property(scenarioArb, ([requests, hosts, claims, , seed]) => {
      const out = resolveClaims(requests, hosts, claims)
      expect(resolveClaims(shuffle(requests, seed), shuffle(hosts, seed + 1), shuffle(claims, seed + 2))).toEqual(out)
      for (const a of out) {
        if (a.host !== null) expect(claims.map(c => [c.requestId, c.peerId])).toContainEqual([a.requestId, a.host])
      }
      checkNoOvercommit(requests, hosts, out, keptPairs(claims))
      // One settled host per request, every host claiming every request: the same as assign with those fixed.
      const fixed = new Map<string, string>()
      for (const c of [...claims].sort((x, y) => x.peerId < y.peerId ? -1 : x.peerId > y.peerId ? 1 : 0)) if (c.settled === true && !fixed.has(c.requestId)) fixed.set(c.requestId, c.peerId)
      const everyone: Claim[] = requests.flatMap(r => hosts.map(h => ({ requestId: r.id, peerId: h.peerId, settled: fixed.get(r.id) === h.peerId })))
      const ideal = assign(requests, hosts, { fixed })
      expect(resolveClaims(requests, hosts, everyone)).toEqual(ideal)
      const shuffledFixed = new Map(shuffle([...fixed], seed))
      expect(assign(shuffle(requests, seed), shuffle(hosts, seed + 1), { fixed: shuffledFixed })).toEqual(ideal)
      checkNoOvercommit(requests, hosts, ideal, new Set([...fixed].map(([r, p]) => `${r}/${p}`)))
    }), { numRuns: 300 })
  })
})

describe('glue', () => {
  it('turns a validated vm.create into a placement request', () => {
    const body = validateBody('vm.create', { name: 'web', image: 'debian-12', type: 'medium', nics: [{ net: 'lan' }], pin: { labels: { zone: 'a' } } })
    expect(placementRequest('ab'.repeat(32), KEYS[0], '2025-05-01T12:00:00.000Z', body)).toEqual({
      id: 'ab'.repeat(32),
      issuer: KEYS[0],
      created: Date.parse('2025-05-01T12:00:00.000Z'),
      needs: { vcpus: 2, memMiB: 4096, diskGiB: 10, arch: 'x86_64', networks: ['lan'], pin: { labels: { zone: 'a' } } }
    })
    const custom = validateBody('vm.create', { name: 'gpu', image: 'debian-12', type: 'gpu-box' })
    expect(placementRequest('cd'.repeat(32), KEYS[0], '2025-05-01T12:00:00.000Z', custom)).toBeUndefined()
    expect(placementRequest('cd'.repeat(32), KEYS[0], '2025-05-01T12:00:00.000Z', custom, { 'gpu-box': { cpus: 8, memMiB: 32768 } })?.needs.vcpus).toBe(8)
  })

  it('sums usage per key', () => {
    expect(usageByIssuer([
      { owner: KEYS[0], vcpus: 1, memMiB: 512, diskGiB: 5 },
      { owner: KEYS[1], vcpus: 2, memMiB: 1024, diskGiB: 10 },
      { owner: KEYS[0], vcpus: 3, memMiB: 512, diskGiB: 5 }
    ])).toEqual({
      [KEYS[0]]: { vms: 2, vcpus: 4, memMiB: 1024, diskGiB: 10 },
      [KEYS[1]]: { vms: 1, vcpus: 2, memMiB: 1024, diskGiB: 10 }
    })
  })
})
