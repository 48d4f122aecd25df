/**
 * The replicated state, format 2.
 *
 * Every host writes exactly one Automerge document, its *feed*, and replicates everyone else's.
 * Nobody can write into another host's feed, so no two authors ever write the same key and
 * Automerge's conflict resolution never decides between authors. A feed is strictly linear (each
 * change depends on the author's previous change and nothing else), so a feed at sequence number
 * n means the same thing on every host.
 *
 *   mesh         the founder's feed only, written once in its first change (the genesis)
 *   host         the author's own record: addresses, resources, trust policy and keys, claims,
 *                VM and network reports (rewritten freely; validated where it is read)
 *   events       the author's membership acts (admit, expel, mesh policy), append-only
 *   requests/<id>  signed requests the author received from users, append-only and immutable
 *
 * Who is a member, who may admit or expel, which events and requests stand: none of this is read
 * from a merged value, it is folded from the set of verified feeds (crdt/fold.ts). What the rest
 * of the daemon reads is `MeshDoc` (crdt/view.ts): the fold's result plus every record validated.
 */

import { ImmutableString } from '@automerge/automerge'

/** The state's format; a daemon finding another one says so instead of misreading it. */
export const STATE_FORMAT = 2

export interface MeshPolicy {
  /** Who may admit a new host: any active member (default), or only the expellers. */
  admit: 'any-member' | 'expellers'
  /** Hosts that may expel members and re-admit expelled ones. The founder always may. */
  expellers: string[]
}

/** Written once by the founder in the first change of its feed. */
export interface MeshGenesis {
  format: number
  /** Derived from the founder and the nonce (crdt/membership.ts `meshIdFor`): nobody else can found it. */
  id: string
  nonce: string
  name: string
  founder: string
  created: string
}

export interface MeshInfo extends MeshGenesis {
  /** The founder's latest mesh policy (crdt/fold.ts). */
  policy: MeshPolicy
}

/**
 * What an author had seen of each feed when it wrote a membership event: `seq:hash` of the last
 * change it held of that feed (the hash cut to 16 hex digits). It places the event in causal
 * order: an expulsion voids the target's changes after what the expeller had seen of it.
 */
export type Seen = Record<string, string>

/**
 * `seen` as stored: one string of "peer=seq:hash" entries sorted by peer, one Automerge op instead
 * of one per feed (a change applies about three times faster at 30 feeds). crdt/records.ts reads
 * this and the map older daemons wrote.
 */
export function storedSeen (seen: Seen): string {
  return Object.keys(seen).sort().map(p => `${p}=${seen[p]}`).join(' ')
}

/**
 * A membership event as it goes into a feed (see `storedSeen`), every string an ImmutableString.
 * Typed as the event it encodes: a feed's events are only ever read through readEvent.
 */
export function storedEvent (e: MembershipEvent): MembershipEvent {
  return scalars({ ...e, seen: storedSeen(e.seen) }) as unknown as MembershipEvent
}

export type MembershipEvent =
  | { op: 'admit', peer: string, name: string, at: string, seen: Seen }
  | { op: 'expel', peer: string, reason: string, at: string, seen: Seen }
  | { op: 'policy', admit: MeshPolicy['admit'], expellers: string[], at: string, seen: Seen }

export interface HostResources {
  arch: string[]
  vcpus: number
  memMiB: number
  diskGiB: number
  labels: Record<string, string>
  /** How VMs run on this host; `none` = placement only (a control-plane host, or tests). */
  hypervisor?: string
  /**
   * Whether this host builds private networks (root, WireGuard and the tools, network not "none").
   * False: not eligible for VMs with NICs. Absent (older daemons): taken as able.
   */
  networks?: boolean
}

/** A host's claim that it will run a VM (the vm.create request id names the VM). */
export interface HostClaim {
  at: string
  /** The claimant's epoch when it claimed (crdt/lease.ts): a claim from an older epoch is void. @default 0 */
  epoch?: number
}

/** A member's declaration that it has not heard a peer for the lease's declare time (crdt/lease.ts). */
export interface Unreachable {
  /** The peer's epoch it declares: final for that epoch, never taken back. */
  epoch: number
  since: string
}

export const VM_STATUSES = ['claimed', 'placed', 'pending', 'fetching-image', 'starting', 'running',
  'stopping', 'stopped', 'failed', 'fenced', 'destroyed'] as const
export type VmStatus = typeof VM_STATUSES[number]

/** What a host reports about a VM it runs. */
export interface HostVm {
  status: VmStatus
  reason?: string
  since: string
  /** Set when the host's operator stopped it (through the local socket). */
  operatorStop?: { at: string, reason: string }
  /** The `vm.move` request whose disk this host (the one the VM left) handed to the new host. */
  handedOver?: string
}

/** A request the host that received it found nobody could take: final. */
export interface HostRejection {
  at: string
  reason: string
  /** Each host's decision at the time, JSON of `Reason[]` (crdt/world.ts), kept as one string. */
  reasons?: string
}

/** One network as a host has built it (node/network/reconciler.ts). */
export interface HostNetStatus {
  vni: number
  bridge: string
  vxlan: string
  mtu: number
  /** Overlay addresses of the hosts this one floods the network to (its FDB entries). */
  fdb: string[]
  /** VM ports (taps) of this host on the bridge. */
  taps: string[]
  /** dnsmasq serves the network here (DHCP / router advertisements). */
  dnsmasq: boolean
}

export interface HostImage { size: number, format: string }

export interface HostRecord {
  name: string
  /** libp2p addresses (with /p2p/<peer id>) where this host can be dialled. */
  addresses: string[]
  /** Informational: the key every host uses is derived from the peer id (keys/wireguard.ts). */
  wgPublicKey: string
  version: string
  updated: string
  resources?: HostResources
  /** The operator's picopeering policy (keys/trust-policy.ts), as published. */
  policy?: { version: number, entries: Array<Record<string, unknown>> }
  /** Armored public keys this host's operator trusts, by fingerprint, so every host can verify. */
  keys?: Record<string, string>
  claims?: Record<string, HostClaim>
  vms?: Record<string, HostVm>
  rejections?: Record<string, HostRejection>
  /** WireGuard listen port and underlay endpoints (`ip:port`, `[v6]:port`) other hosts configure. */
  wgPort?: number
  wgEndpoints?: string[]
  /** This host's data plane per network it carries (by net.create id), written when it changes. */
  nets?: Record<string, HostNetStatus>
  /** Why this host's last data-plane pass failed; absent when it succeeded. */
  netError?: string
  /** Images this host holds and serves, by sha256. */
  images?: Record<string, HostImage>
  /** Raised each time the host comes back after the mesh declared it lost (crdt/lease.ts). @default 0 */
  epoch?: number
  /** Its operator drains it (`host drain`): no new VMs, and its `restart` VMs move away. */
  drained?: { at: string, reason: string }
  /** Peers this host has not heard for the lease's declare time, by peer id. */
  unreachable?: Record<string, Unreachable>
  /**
   * Per `--ha restart` VM, the claim this host endorses, as `peer@epoch` (crdt/lease.ts): a VM
   * runs only where a majority of the members endorse its claim.
   */
  endorse?: Record<string, string>
}

export interface StoredRequest {
  /** Canonical JSON, exactly as signed. */
  payload: string
  /** Armored detached OpenPGP signature. */
  signature: string
  /** When the receiving host (the feed's author) took it in: the time window is checked against it. */
  at: string
}

/** One author's feed document (what `StateStore.change` lets a host write in its own feed). */
export interface FeedDoc {
  mesh?: MeshGenesis
  host?: HostRecord
  events?: MembershipEvent[]
  requests?: Record<string, StoredRequest>
}

/** A copy of a stored request as the view gives it: which host stored it, in which change. */
export interface RequestCopy extends StoredRequest {
  via: string
  /** Sequence number of the change of `via`'s feed that stored it. */
  seq: number
}

export interface Member {
  name: string
  admittedBy: string
  admittedAt: string
  expelled?: { by: string, at: string, reason: string }
}

/**
 * The state as the daemon reads it (crdt/view.ts): every field validated, membership folded.
 * `members` lists every host ever validly admitted (expelled ones with `expelled`); `hosts` the
 * records of the active members only; `requests` the copies stored by hosts while they were members.
 */
export interface MeshDoc {
  mesh: MeshInfo
  members: Record<string, Member>
  hosts: Record<string, HostRecord>
  requests: Map<string, RequestCopy[]>
}

/**
 * A string field of a feed as a plain string. A JS string assigned into an Automerge 3 document
 * becomes text (one op per character); short fields are written as ImmutableString (one op).
 * Both read here; an ImmutableString compared with `===`, sorted or used as a key would
 * silently misbehave.
 */
export function asString (v: unknown): string {
  return v instanceof ImmutableString ? v.toString() : String(v)
}

/** `asString` of a field that may be absent. */
export function optString (v: unknown): string | undefined {
  return v === undefined || v === null ? undefined : asString(v)
}

/**
 * A plain value (objects, arrays, strings, numbers…) to assign into a feed with every string as an
 * ImmutableString: one op per field instead of one per character.
 */
export function scalars<T> (v: T): T {
  if (typeof v === 'string') return new ImmutableString(v) as unknown as T
  if (v instanceof ImmutableString) return new ImmutableString(v.toString()) as unknown as T
  if (Array.isArray(v)) return v.map(x => scalars(x)) as unknown as T
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = scalars(x)
    return out as T
  }
  return v
}

export const DEFAULT_POLICY: MeshPolicy = { admit: 'any-member', expellers: [] }

export function isActiveMember (doc: Partial<MeshDoc>, peer: string): boolean {
  const m = doc.members?.[peer]
  return m !== undefined && m.expelled === undefined
}

/** May `peer` expel members now (founder or a named expeller, and active)? For clear local errors; the fold decides. */
export function mayExpel (doc: Partial<MeshDoc>, peer: string): boolean {
  if (doc.mesh === undefined || !isActiveMember(doc, peer)) return false
  return doc.mesh.founder === peer || doc.mesh.policy.expellers.includes(peer)
}

export function mayAdmit (doc: Partial<MeshDoc>, peer: string): boolean {
  if (doc.mesh === undefined || !isActiveMember(doc, peer)) return false
  return doc.mesh.policy.admit === 'any-member' || mayExpel(doc, peer)
}
