/**
 * A watchdog for one image fetch attempt (node/compute/images/transfer.ts): it cuts a holder that stops sending,
 * or sends next to nothing. A host's record is self-declared, so any member can claim to hold
 * every image; without this, one that answers and then stalls, or trickles a byte a second,
 * would keep a VM on an honest host from starting although honest holders exist.
 *
 * @example
 * const wd = new TransferWatchdog(peer, { idleMs: 15_000 })
 * try {
 *   const chunk = await lp.read({ signal: wd.signal })   // aborts with the cut's reason
 *   wd.progress(chunk.length)
 *   wd.hold(); try { await partial.write(chunk) } finally { wd.release() }
 * } finally { wd.stop() }
 */

/** How long a holder may take before a fetch attempt gives up on it (see TransferWatchdog). */
export interface WatchdogOptions {
  /**
   * Cut an attempt that receives nothing for this long. Longer than the 10 s the dial, the
   * stream and the offer each get (those fail with their own reason first) and than a few TCP
   * retransmissions; a working holder sends a 256 KiB frame or record far more often.
   * @default 15 s
   */
  idleMs?: number
  /**
   * Cut an attempt that receives less than this per second, on average over a window. 512 kbit/s,
   * below even a slow DSL uplink; at this rate a 1 GiB image takes 4.5 hours, so a holder that
   * cannot beat it is of no use to a VM waiting to start, honest or not. A trickle of a few bytes
   * a second (which the idle rule alone lets through) is cut after one window.
   * @default 64 KiB/s
   */
  minBytesPerSecond?: number
  /**
   * The windows the rate is averaged over, back to back from the attempt's start. Long enough for
   * TCP and yamux to ramp up, a retransmission back-off, or a side channel that fails (3 s)
   * before the stream takes over; short enough that a trickling holder costs half a minute.
   * @default 30 s
   */
  rateWindowMs?: number
}

/** A fetch attempt was cut: the holder sent nothing for too long, or far too little. */
export class HolderCutError extends Error {
  override name = 'HolderCutError'
  readonly peer: string
  constructor (peer: string, message: string) { super(message); this.peer = peer }
}

export class HolderStalledError extends HolderCutError { override name = 'HolderStalledError' }
export class HolderTooSlowError extends HolderCutError { override name = 'HolderTooSlowError' }

const kib = (n: number): string => n < 1024 ? `${Math.round(n)} B` : `${(n / 1024).toFixed(1)} KiB`

/**
 * Watches one fetch attempt: `signal` aborts with a HolderStalledError when no byte came for
 * `idleMs`, or a HolderTooSlowError when a rate window ends below the floor. Time `hold` …
 * `release` (this host busy: its disk, the hash) counts against neither.
 */
export class TransferWatchdog {
  private readonly controller = new AbortController()
  readonly signal = this.controller.signal
  private readonly peer: string
  private readonly o: Required<WatchdogOptions>
  private readonly timer: ReturnType<typeof setInterval>
  private last = Date.now()
  private windowStart = Date.now()
  private windowBytes = 0
  private heldSince?: number

  constructor (peer: string, o: WatchdogOptions = {}) {
    this.peer = peer
    this.o = { idleMs: o.idleMs ?? 15_000, minBytesPerSecond: o.minBytesPerSecond ?? 64 * 1024, rateWindowMs: o.rateWindowMs ?? 30_000 }
    // A few checks per limit: a cut comes at most a quarter late (and at least once a second).
    this.timer = setInterval(() => { this.check() }, Math.max(10, Math.min(1000, this.o.idleMs / 4, this.o.rateWindowMs / 4)))
  }

  /** Bytes came (0: an answer without image bytes, such as the offer). */
  progress (bytes: number): void {
    this.last = Date.now()
    this.windowBytes += bytes
  }

  hold (): void { this.heldSince ??= Date.now() }

  release (): void {
    if (this.heldSince === undefined) return
    const now = Date.now()
    const held = now - this.heldSince
    this.heldSince = undefined
    this.last = Math.min(this.last + held, now)
    this.windowStart += held
  }

  stop (): void { clearInterval(this.timer) }

  private check (): void {
    if (this.heldSince !== undefined || this.signal.aborted) return
    const now = Date.now()
    if (now - this.last >= this.o.idleMs) {
      this.cut(new HolderStalledError(this.peer, `stalled: sent nothing for ${(this.o.idleMs / 1000).toFixed(1)} s`))
      return
    }
    const span = now - this.windowStart
    if (span < this.o.rateWindowMs) return
    const rate = this.windowBytes / (span / 1000)
    if (rate < this.o.minBytesPerSecond) {
      this.cut(new HolderTooSlowError(this.peer, `too slow: sent ${kib(this.windowBytes)} in ${(span / 1000).toFixed(1)} s (${kib(rate)}/s), below the floor of ${kib(this.o.minBytesPerSecond)}/s`))
      return
    }
    this.windowStart = now
    this.windowBytes = 0
  }

  private cut (err: HolderCutError): void {
    this.stop()
    this.controller.abort(err)
  }
}
