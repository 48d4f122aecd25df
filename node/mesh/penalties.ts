/**
 * Misbehaviour of peers as this host saw it: invalid signatures, forbidden writes, equivocation.
 * Each offence adds to the peer's score; past the limit the peer is disconnected and refused for a
 * while. Gossipsub's own peer scoring also acts on the validator's "reject".
 */
export interface Offence { at: string, reason: string }

export interface PeerPenalty {
  peerId: string
  score: number
  offences: Offence[]
}

export const OFFENCE_SCORE = 10
export const BLOCK_SCORE = 50
const KEEP_OFFENCES = 20

export class Penalties {
  private readonly byPeer = new Map<string, PeerPenalty>()

  /** Records an offence; returns true when the peer crossed the block threshold. */
  add (peerId: string, reason: string): boolean {
    const p = this.byPeer.get(peerId) ?? { peerId, score: 0, offences: [] }
    const wasBelow = p.score < BLOCK_SCORE
    p.score += OFFENCE_SCORE
    p.offences.push({ at: new Date().toISOString(), reason })
    if (p.offences.length > KEEP_OFFENCES) p.offences.shift()
    this.byPeer.set(peerId, p)
    return wasBelow && p.score >= BLOCK_SCORE
  }

  get (peerId: string): PeerPenalty | undefined {
    return this.byPeer.get(peerId)
  }

  list (): PeerPenalty[] {
    return [...this.byPeer.values()].sort((a, b) => b.score - a.score)
  }
}
