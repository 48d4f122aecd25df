/**
 * Placement without a controller. Every host runs these pure functions over the same replicated
 * inputs and so reaches the same answer: which hosts may take a VM (and why the others may not),
 * which of them ranks first, and — for many requests at once — an assignment that never
 * over-commits a host's capacity or an issuer's quota on a host.
 *
 * Ranking is rendezvous (highest-random-weight) hashing: a host's score for a request is
 *   sha256( utf8(requestId) || utf8(peerId) )
 * i.e. the UTF-8 bytes of the request id string (64 lower-case hex digits for real requests)
 * immediately followed by the UTF-8 bytes of the peer id string (base58btc, `12D3KooW…`), with no
 * separator (the request id has a fixed length). The 32-byte digest is read as an unsigned
 * big-endian integer; the highest score ranks first; equal scores (never seen in practice) are
 * ordered by peer id, UTF-16 code-unit order. Adding or removing a host only moves the requests
 * that host wins or loses, and nobody has to agree on anything beforehand.
 *
 * A placed VM is never displaced by a later request. `created` is chosen by the signer, so it only
 * orders requests that compete for the same room at the same stage: VMs already placed (settled
 * claims, `fixed` assignments) are served first and keep their room; new requests, however
 * backdated, get only what the placed ones leave free.
 *
 * @example
 * const { decisions, ranking } = placeOne(request, hosts)
 * const outcome = assign(requests, hosts) // [{ requestId, host, decisions }] in processing order
 * const ideal = assign(requests, hosts, { fixed: new Map([[placedId, itsHost]]) })
 * const actual = resolveClaims(requests, hosts, [{ requestId, peerId, settled: true }, …])
 */
import { createHash } from 'node:crypto'
import { admits, NO_USAGE, type TrustPolicy, type Usage, type DenyReason } from '../keys/trust-policy.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { vmResources, type VmCreateBody } from '../protocol/requests.ts'

export interface Resources { vcpus: number, memMiB: number, diskGiB: number }

export interface VmNeeds extends Resources {
  arch: string
  networks: readonly string[]
  pin?: { host?: string, labels?: Readonly<Record<string, string>> }
}

export interface PlacementRequest {
  /** The vm.create request id. */
  id: string
  issuer: string
  /**
   * Milliseconds since the epoch (the payload's `created`, chosen by the signer): processing order
   * among requests of the same stage only, never ahead of a placed VM.
   */
  created: number
  needs: VmNeeds
  /** `restart`: a placed VM leaves a host the mesh declared lost (crdt/lease.ts). @default 'none' */
  ha?: 'none' | 'restart'
}

/** One host as every peer sees it in the replicated state (plus liveness, if modelled). */
export interface HostView {
  peerId: string
  labels: Readonly<Record<string, string>>
  arch: readonly string[]
  capacity: Resources
  /** What already runs or is claimed here, all issuers together. */
  used: Resources
  policy: TrustPolicy
  /** What each key (fingerprint) already runs here. */
  usageByIssuer: Readonly<Record<string, Usage>>
  /** False when the host has been expelled from the mesh. @default true */
  member?: boolean
  /** False when the host's heartbeats have stopped. @default true */
  up?: boolean
  /** False when the host builds no private networks: no VM with a NIC goes there. @default true */
  networks?: boolean
  /** A majority of the members declared it unreachable (crdt/lease.ts). @default false */
  lost?: boolean
  /** Its operator drains it: no new VM goes there, and `restart` VMs leave it. @default false */
  drained?: boolean
}

export type HostReason = DenyReason | 'capacity-vcpus' | 'capacity-mem' | 'capacity-disk' | 'architecture' |
'pin-host' | 'pin-labels' | 'not-member' | 'down' | 'lost' | 'drained' | 'no-data-plane'

export interface HostDecision {
  peerId: string
  eligible: boolean
  reason?: HostReason
  detail?: string
}

export interface Placement {
  requestId: string
  /** One per host, sorted by peer id. */
  decisions: HostDecision[]
  /** Eligible hosts, best first. */
  ranking: string[]
}

export interface Assignment {
  requestId: string
  /** The host that runs the VM, or null when no host can take it (then every decision says why). */
  host: string | null
  decisions: HostDecision[]
}

/** Rendezvous score of `peerId` for `requestId` (see the module comment for the exact bytes). */
export function rendezvousScore (requestId: string, peerId: string): Buffer {
  return createHash('sha256').update(Buffer.from(requestId, 'utf8')).update(Buffer.from(peerId, 'utf8')).digest()
}

function compareStrings (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/** Order `peerIds` best first for `requestId`. */
export function rank (requestId: string, peerIds: readonly string[]): string[] {
  const scored = peerIds.map(p => ({ p, s: rendezvousScore(requestId, p) }))
  scored.sort((a, b) => Buffer.compare(b.s, a.s) || compareStrings(a.p, b.p))
  return scored.map(x => x.p)
}

/** Mutable running totals while assigning many requests. */
interface Tally { used: Resources, byIssuer: Map<string, Usage> }

function freshTally (h: HostView): Tally {
  return { used: { ...h.used }, byIssuer: new Map(Object.entries(h.usageByIssuer).map(([k, u]) => [k, { ...u }])) }
}

/** `!(a <= b)` rather than `a > b`, so a NaN from a corrupt record makes a host ineligible. */
function exceeds (want: number, free: number): boolean {
  return !(want <= free)
}

/** Why a VM's pin keeps it off host `h`, or undefined when the pin admits `h` (or there is none). */
export function pinExcludes (pin: PlacementRequest['needs']['pin'], h: Pick<HostView, 'peerId' | 'labels'>): { reason: 'pin-host' | 'pin-labels', detail: string } | undefined {
  if (pin?.host !== undefined && pin.host !== h.peerId) return { reason: 'pin-host', detail: `VM is pinned to host ${pin.host}` }
  for (const [k, v] of Object.entries(pin?.labels ?? {})) {
    if (!Object.hasOwn(h.labels, k) || h.labels[k] !== v) return { reason: 'pin-labels', detail: `VM is pinned to hosts labelled ${k}=${v}` }
  }
  return undefined
}

function decide (req: PlacementRequest, h: HostView, t: Tally): HostDecision {
  const no = (reason: HostReason, detail: string): HostDecision => ({ peerId: h.peerId, eligible: false, reason, detail })
  const n = req.needs
  if (h.member === false) return no('not-member', 'host is not a member of the mesh')
  // Only `restart` VMs shun a lost host: another may wait for it to come back, as for a host that is down.
  if (h.lost === true && req.ha === 'restart') return no('lost', 'a majority of the hosts declared it unreachable')
  if (h.up === false) return no('down', 'host is not reachable')
  if (h.drained === true) return no('drained', 'its operator drains it (`picocloud host drain`)')
  const pinned = pinExcludes(n.pin, h)
  if (pinned !== undefined) return no(pinned.reason, pinned.detail)
  if (!h.arch.includes(n.arch)) return no('architecture', `host runs ${h.arch.join(', ') || 'no architecture'}, VM needs ${n.arch}`)
  if (n.networks.length > 0 && h.networks === false) return no('no-data-plane', `host builds no private networks (see its \`picocloud status\`), VM is on ${n.networks.join(', ')}`)
  const admission = admits(h.policy, req.issuer, t.byIssuer.get(req.issuer) ?? NO_USAGE, n)
  if (!admission.ok) return no(admission.reason, admission.detail)
  const free = (k: keyof Resources): number => h.capacity[k] - t.used[k]
  if (exceeds(n.vcpus, free('vcpus'))) return no('capacity-vcpus', `needs ${n.vcpus} vCPUs, ${free('vcpus')} free`)
  if (exceeds(n.memMiB, free('memMiB'))) return no('capacity-mem', `needs ${n.memMiB} MiB, ${free('memMiB')} MiB free`)
  if (exceeds(n.diskGiB, free('diskGiB'))) return no('capacity-disk', `needs ${n.diskGiB} GiB, ${free('diskGiB')} GiB free`)
  return { peerId: h.peerId, eligible: true }
}

function sortedHosts (hosts: readonly HostView[]): HostView[] {
  const sorted = [...hosts].sort((a, b) => compareStrings(a.peerId, b.peerId))
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].peerId === sorted[i - 1].peerId) {
      throw new PicocloudError(ErrorCode.BadRequest, `placement input lists host ${sorted[i].peerId} twice`)
    }
  }
  return sorted
}

/**
 * Whether a placed VM stays where it is: while its host is a member and up and still meets what
 * the VM itself asks (its pin, its architecture). The host's own trust policy, quotas and
 * capacity changing later govern new placements only: a running VM is never evicted by them (its
 * host's operator can move it away on purpose, see the scheduler's `evict`), and its resources
 * are still counted there. What the VM asks is checked again because a claim is what its author
 * says: a member that reports a VM pinned elsewhere as placed on itself must not keep it.
 */
function decideKept (req: PlacementRequest, h: HostView): HostDecision {
  // A lost host keeps what may not restart elsewhere: it shows as lost there, and is back with it.
  // A drained host keeps its `--ha none` VMs too: they would move without their disk.
  const d = decide(req, h.drained === true && req.ha !== 'restart' ? { ...h, drained: false } : h, freshTally(h))
  const policyOnly = d.eligible || !KEPT_REASONS.has(d.reason as HostReason)
  return policyOnly ? { peerId: h.peerId, eligible: true } : d
}

/** What still unseats a placed VM: everything but the host's policy, quotas and capacity. */
const KEPT_REASONS: ReadonlySet<HostReason> = new Set(['not-member', 'lost', 'drained', 'down', 'pin-host', 'pin-labels', 'architecture'])

function placeWith (req: PlacementRequest, hosts: readonly HostView[], tallies: ReadonlyMap<string, Tally>, kept = false): Placement {
  const decisions = hosts.map(h => kept ? decideKept(req, h) : decide(req, h, tallies.get(h.peerId) ?? freshTally(h)))
  return { requestId: req.id, decisions, ranking: rank(req.id, decisions.filter(d => d.eligible).map(d => d.peerId)) }
}

/** Decisions for every host and the ranking of the eligible ones, for one request in isolation. */
export function placeOne (req: PlacementRequest, hosts: readonly HostView[]): Placement {
  return placeWith(req, sortedHosts(hosts), new Map())
}

/** The order in which concurrent requests are served: created time, then id. */
export function processingOrder (requests: readonly PlacementRequest[]): PlacementRequest[] {
  const sorted = [...requests].sort((a, b) => (a.created - b.created) || compareStrings(a.id, b.id))
  // The same id is the same signed payload: serve it once.
  return sorted.filter((r, i) => i === 0 || r.id !== sorted[i - 1].id)
}

function addUsage (t: Tally, issuer: string, n: Resources): void {
  t.used = { vcpus: t.used.vcpus + n.vcpus, memMiB: t.used.memMiB + n.memMiB, diskGiB: t.used.diskGiB + n.diskGiB }
  const u = t.byIssuer.get(issuer) ?? NO_USAGE
  t.byIssuer.set(issuer, { vms: u.vms + 1, vcpus: u.vcpus + n.vcpus, memMiB: u.memMiB + n.memMiB, diskGiB: u.diskGiB + n.diskGiB })
}

/** Which hosts may take a request: undefined means any. */
type Allowed = ReadonlySet<string> | undefined

/** Who may take a request in each stage of `assignStaged`. */
interface Candidates {
  /** Hosts where the VM is already placed: tried first, before any unplaced request. */
  settled: ReadonlySet<string>
  /** Hosts that may take it otherwise (with the unplaced requests, in processing order). */
  others: Allowed
}

const NONE: ReadonlySet<string> = new Set()

/**
 * Serve requests in two stages over one set of running tallies. Stage 1: every request with a
 * settled host, in processing order, to its best-ranked settled host that is still a member and
 * up (`decideKept`), so that placed VMs are counted before anything else. Stage 2: the rest —
 * including a placed VM none of whose hosts is a member and up any more — in processing order,
 * against what stage 1 left. Stage 1 does not
 * look at stage-2 requests at all, which is what makes backdating useless.
 */
function assignStaged (requests: readonly PlacementRequest[], hosts: readonly HostView[],
  candidates: (requestId: string) => Candidates): Assignment[] {
  const sorted = sortedHosts(hosts)
  const tallies = new Map(sorted.map(h => [h.peerId, freshTally(h)]))
  const serve = (req: PlacementRequest, allowed: Allowed, kept = false): Assignment => {
    const { decisions, ranking } = placeWith(req, sorted, tallies, kept)
    const host = ranking.find(p => allowed === undefined || allowed.has(p)) ?? null
    if (host !== null) addUsage(tallies.get(host) as Tally, req.issuer, req.needs)
    return { requestId: req.id, host, decisions }
  }
  const order = processingOrder(requests)
  const placed = new Map<string, Assignment>()
  for (const req of order) {
    const { settled } = candidates(req.id)
    if (settled.size === 0) continue
    const a = serve(req, settled, true)
    if (a.host !== null) placed.set(req.id, a)
  }
  // `map` runs in order, so stage 2 is served in processing order too.
  return order.map(req => placed.get(req.id) ?? serve(req, candidates(req.id).others))
}

export interface AssignOptions {
  /**
   * VMs already placed: request id → the host running it. Each is counted on that host before
   * any other request (while that host is a member and up; if not, it is placed like the
   * others), so new requests are decided against the room the placed VMs leave.
   * @default nothing fixed
   */
  fixed?: ReadonlyMap<string, string>
}

/**
 * Assign concurrent requests, served in `processingOrder`, each to the best-ranked host still
 * eligible once the earlier ones are counted against capacity and quotas. Every host computing
 * this over the same state gets the same result, so 20 simultaneous requests cannot over-commit.
 * `fixed` requests (placed VMs) are served first, on their own host; see `AssignOptions`.
 * The same as `resolveClaims` with a settled claim for each fixed pair and every host claiming
 * every request.
 */
export function assign (requests: readonly PlacementRequest[], hosts: readonly HostView[],
  options: AssignOptions = {}): Assignment[] {
  const fixed = options.fixed ?? new Map<string, string>()
  return assignStaged(requests, hosts, id => {
    const host = fixed.get(id)
    return { settled: host === undefined ? NONE : new Set([host]), others: undefined }
  })
}

/** A host's claim (in its own record) that it will run a request's VM. */
export interface Claim {
  requestId: string
  peerId: string
  /**
   * The claimant reports the VM beyond a bare claim (placed, starting, running, stopped…): it is
   * placed there, and no later request may take its room. @default false
   */
  settled?: boolean
}

/**
 * Settle claims made concurrently (or on both sides of a partition). First every request with a
 * settled claim, in `processingOrder`, goes to its best-ranked settled claimant that is still
 * eligible; then the others, in `processingOrder`, each to its best-ranked claimant still
 * eligible in what is left. A settled claimant stays eligible while it is a member and up,
 * whatever its policy says now; a request whose settled claimants are all expelled or down joins
 * the others. The claimants that lose withdraw (and stop the VM if they started it). A request nobody claimed gets `host: null` here — it is not rejected, merely not
 * yet claimed. Duplicate claims are harmless; one of them settled makes the pair settled.
 */
export function resolveClaims (requests: readonly PlacementRequest[], hosts: readonly HostView[], claims: readonly Claim[]): Assignment[] {
  const byRequest = new Map<string, { settled: Set<string>, others: Set<string> }>()
  for (const c of claims) {
    let s = byRequest.get(c.requestId)
    if (s === undefined) byRequest.set(c.requestId, s = { settled: new Set(), others: new Set() })
    s.others.add(c.peerId)
    if (c.settled === true) s.settled.add(c.peerId)
  }
  return assignStaged(requests, hosts, id => byRequest.get(id) ?? { settled: NONE, others: NONE })
}

/**
 * The placement input for a validated vm.create: resources from its type (built-in or `types`,
 * the mesh's own) or explicit size, networks from its NICs, and its pin. Undefined when the type
 * is unknown here, so that the caller records "unknown VM type" rather than guessing a size.
 */
export function placementRequest (id: string, issuer: string, createdIso: string, body: VmCreateBody,
  types: Readonly<Record<string, { cpus: number, memMiB: number }>> = {}): PlacementRequest | undefined {
  const size = vmResources(body, types)
  if (size === undefined) return undefined
  return {
    id,
    issuer,
    created: Date.parse(createdIso),
    needs: { ...size, arch: body.arch, networks: body.nics.map(n => n.net), ...(body.pin === undefined ? {} : { pin: body.pin }) },
    ...(body.ha === 'restart' ? { ha: 'restart' as const } : {})
  }
}

/** Sum what each key runs on a host from its VM list: the `usageByIssuer` of a HostView. */
export function usageByIssuer (vms: Iterable<{ owner: string } & Resources>): Record<string, Usage> {
  const out: Record<string, Usage> = {}
  for (const vm of vms) {
    const u = Object.hasOwn(out, vm.owner) ? out[vm.owner] : NO_USAGE
    out[vm.owner] = { vms: u.vms + 1, vcpus: u.vcpus + vm.vcpus, memMiB: u.memMiB + vm.memMiB, diskGiB: u.diskGiB + vm.diskGiB }
  }
  return out
}
