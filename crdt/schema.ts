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
