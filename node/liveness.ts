/**
 * Liveness of hosts from signed gossipsub heartbeats. Kept in memory only: liveness in the CRDT
 * would grow its history forever.
 */
export interface Heartbeat {
  v: 1
  /** sender's clock, ms since epoch */
  time: number
  seq: number
}

export function encodeHeartbeat (h: Heartbeat): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(h))
}

export function decodeHeartbeat (bytes: Uint8Array): Heartbeat | undefined {
  if (bytes.length > 1024) return undefined
  try {
    const v = JSON.parse(new TextDecoder().decode(bytes))
    if (v?.v !== 1 || typeof v.time !== 'number' || typeof v.seq !== 'number') return undefined
    return { v: 1, time: v.time, seq: v.seq }
  } catch {
    return undefined
  }
}

export class Liveness {
  private readonly seen = new Map<string, number>()
  private readonly intervalMs: number

  constructor (intervalMs: number) {
    this.intervalMs = intervalMs
  }

  heard (peer: string, at = Date.now()): void {
    this.seen.set(peer, at)
  }

  forget (peers: string[]): void {
    for (const p of peers) this.seen.delete(p)
  }

  lastSeen (peer: string): number | undefined {
    return this.seen.get(peer)
  }

  /** Heard within three heartbeat intervals. */
  alive (peer: string, now = Date.now()): boolean {
    const t = this.seen.get(peer)
    return t !== undefined && now - t <= 3 * this.intervalMs
  }
}
