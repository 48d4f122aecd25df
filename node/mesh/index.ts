/**
 * The mesh subsystem: libp2p, sync and gossip of the replicated state, liveness, penalties, and
 * membership as the operator sees it. The rest of the daemon uses it only through this file.
 */
export { Mesh, type MeshConfig, type MeshInit, type MeshEvents } from './mesh.ts'
export type { RemoteProgress } from './gossip.ts'
export { Membership, type MembershipInit } from './membership.ts'
export { type P2PNode } from './p2p.ts'
export { type PeerPenalty } from './penalties.ts'
