/**
 * The libp2p connection gater: only active members of the mesh get past the encrypted handshake,
 * plus the one member we are dialling while joining. Everyone else is refused before any protocol
 * (sync, gossip) runs, so a stranger receives no state.
 */
import type { ConnectionGater, PeerId } from '@libp2p/interface'
import { isActiveMember, type MeshDoc } from '../../crdt/schema.ts'

export class MembershipGate {
  private readonly doc: () => Partial<MeshDoc>
  private readonly self: string
  /** Peers we dial to join a mesh; allowed until the join finishes. */
  readonly joining = new Set<string>()
  /** Peers blocked for misbehaviour, until the given time (ms since epoch). */
  private readonly blocked = new Map<string, number>()

  constructor (self: string, doc: () => Partial<MeshDoc>) {
    this.self = self
    this.doc = doc
  }

  allowed (peer: string): boolean {
    if (peer === this.self) return false
    const until = this.blocked.get(peer)
    if (until !== undefined) {
      if (until > Date.now()) return false
      this.blocked.delete(peer)
    }
    return this.joining.has(peer) || isActiveMember(this.doc(), peer)
  }

  block (peer: string, ms: number): void {
    this.blocked.set(peer, Date.now() + ms)
  }

  unblockAll (): void {
    this.blocked.clear()
  }

  get gater (): ConnectionGater {
    const deny = (peer: PeerId): boolean => !this.allowed(peer.toString())
    return {
      denyDialPeer: deny,
      denyInboundEncryptedConnection: deny,
      denyOutboundEncryptedConnection: deny,
      denyInboundUpgradedConnection: deny,
      denyOutboundUpgradedConnection: deny
    }
  }
}
