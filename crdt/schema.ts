/**
 * The replicated mesh document. Every host holds one Automerge document with this shape; who may
 * write which part is decided by crdt/permissions.ts.
 *
 *   mesh/            written once by the founder in the genesis change, then only by the founder
 *   members/<peer>   admissions and expulsions, by the mesh policy
 *   hosts/<peer>/    each host's own record, written only by that host: addresses, resources,
 *                    trust policy and the public keys it trusts, claims of VMs and their status
 *   requests/<id>    signed requests, immutable, id = sha256(payload), written once by the host
 *                    that received them from a user
 */

import { ImmutableString } from '@automerge/automerge'

/** A libp2p peer id string (12D3KooW…), branded so it is not confused with other ids. */
export type PeerIdString = string & { readonly __peerId: true }

export interface MeshPolicy {
  /** Who may admit a new host: any active member (default), or only the expellers. */
  admit: 'any-member' | 'expellers'
  /** Hosts that may expel members and re-admit expelled ones. The founder always may. */
  expellers: string[]
}

export interface MeshInfo {
  /** 32 hex chars chosen at `init`; names the gossip topics and the overlay prefix. */
  id: string
  name: string
  founder: string
  created: string
  policy: MeshPolicy
}

export interface Member {
  name: string
  admittedBy: string
  admittedAt: string
  expelled?: { by: string, at: string, reason: string }
}

export interface HostResources {
  arch: string[]
  vcpus: number
  memMiB: number
  diskGiB: number
  labels: Record<string, string>
  /** How VMs run on this host; `none` = placement only (a control-plane host, or tests). */
  hypervisor?: string
}

/** A host's claim that it will run a VM (the vm.create request id names the VM). */
export interface HostClaim { at: string }

export type VmStatus = 'claimed' | 'placed' | 'pending' | 'fetching-image' | 'starting' | 'running' |
'stopping' | 'stopped' | 'failed' | 'destroyed'

/** What a host reports about a VM it runs. */
export interface HostVm {
  status: VmStatus
  reason?: string
  since: string
  /** Set when the host's operator stopped it (through the local socket). */
  operatorStop?: { at: string, reason: string }
}

/** A request the host that received it found nobody could take: final. */
export interface HostRejection {
  at: string
  reason: string
  /** Each host's decision at the time, JSON of `Reason[]` (crdt/world.ts), kept as one string. */
  reasons?: string
}

export interface HostRecord {
  name: string
  /** libp2p addresses (with /p2p/<peer id>) where this host can be dialled. */
  addresses: string[]
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
}

/** One network as a host has built it (node/reconciler/network.ts). */
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

export interface StoredRequest {
  /** Canonical JSON, exactly as signed. */
  payload: string
  /** Armored detached OpenPGP signature. */
  signature: string
  /** The host that received it and vouches for when: the time window is checked against `at`. */
  via: string
  at: string
}

export interface MeshDoc {
  mesh: MeshInfo
  members: Record<string, Member>
  hosts: Record<string, HostRecord>
  requests?: Record<string, StoredRequest>
}

/**
 * A string field of the document as a plain string. A JS string assigned into an Automerge 3
 * document becomes text (one op per character): older daemons wrote every field so, newer ones
 * write short fields as ImmutableString (one op). Both read here; an ImmutableString compared
 * with `===`, sorted or used as a key would silently misbehave.
 */
export function asString (v: unknown): string {
  return v instanceof ImmutableString ? v.toString() : String(v)
}

/** `asString` of a field that may be absent. */
export function optString (v: unknown): string | undefined {
  return v === undefined || v === null ? undefined : asString(v)
}

/**
 * A plain value (objects, arrays, strings, numbers…) to assign into the document with every
 * string as an ImmutableString: one op per field instead of one per character. The mesh info
 * (`mesh/`) is not written so: older daemons' permission checks compare its founder and policy
 * with `===`, and would refuse changes from a mesh founded by a newer one.
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

/** A host's VM report read from the document, with plain strings whichever way it was written. */
export function readHostVm (v: HostVm): HostVm {
  const out: HostVm = { status: asString(v.status) as VmStatus, since: asString(v.since) }
  if (v.reason !== undefined && v.reason !== null) out.reason = asString(v.reason)
  if (v.operatorStop !== undefined && v.operatorStop !== null) out.operatorStop = { at: asString(v.operatorStop.at), reason: asString(v.operatorStop.reason) }
  return out
}

/** A member entry read from the document, with plain strings. */
export function readMember (m: Member): Member {
  const out: Member = { name: asString(m.name), admittedBy: asString(m.admittedBy), admittedAt: asString(m.admittedAt) }
  if (m.expelled !== undefined && m.expelled !== null) out.expelled = { by: asString(m.expelled.by), at: asString(m.expelled.at), reason: asString(m.expelled.reason) }
  return out
}

export const DEFAULT_POLICY: MeshPolicy = { admit: 'any-member', expellers: [] }

export function isActiveMember (doc: Partial<MeshDoc>, peer: string): boolean {
  const m = doc.members?.[peer]
  return m !== undefined && m.expelled === undefined
}

export function mayExpel (doc: Partial<MeshDoc>, peer: string): boolean {
  if (doc.mesh === undefined || !isActiveMember(doc, peer)) return false
  return doc.mesh.founder === peer || doc.mesh.policy.expellers.includes(peer)
}

export function mayAdmit (doc: Partial<MeshDoc>, peer: string): boolean {
  if (doc.mesh === undefined || !isActiveMember(doc, peer)) return false
  return doc.mesh.policy.admit === 'any-member' || mayExpel(doc, peer)
}
