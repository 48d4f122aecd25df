/**
 * The replicated mesh document. Every host holds one Automerge document with this shape; who may
 * write which part is decided by crdt/permissions.ts.
 *
 *   mesh/            written once by the founder in the genesis change, then only by the founder
 *   members/<peer>   admissions and expulsions, by the mesh policy
 *   hosts/<peer>/    each host's own record, written only by that host
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

export interface HostRecord {
  name: string
  /** libp2p addresses (with /p2p/<peer id>) where this host can be dialled. */
  addresses: string[]
  wgPublicKey: string
  version: string
  updated: string
}

export interface MeshDoc {
  mesh: MeshInfo
  members: Record<string, Member>
  hosts: Record<string, HostRecord>
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
