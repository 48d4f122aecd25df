/**
 * Waiting for a condition with a deadline, instead of sleeping.
 *
 * @example
 * const pid = await waitFor(async () => (await driver.inspect(name))?.pid, { timeoutMs: 10_000, what: 'qemu pid' })
 */
export interface WaitOptions {
  /** Give up after this long. @default 10000 */
  timeoutMs?: number
  /** Pause between tries. @default 50 */
  intervalMs?: number
  /** What is awaited, for the timeout message. */
  what?: string
}

/**
 * Calls `fn` until it returns a value other than undefined, null or false (which is returned) or
 * the deadline passes (an Error naming `what` and the last error `fn` threw, if any).
 */
export async function waitFor<T> (fn: () => T | Promise<T>, options: WaitOptions = {}): Promise<Exclude<T, undefined | null | false>> {
  const timeoutMs = options.timeoutMs ?? 10_000
  const intervalMs = options.intervalMs ?? 50
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const v = await fn()
      if (v !== undefined && v !== null && v !== false) return v as Exclude<T, undefined | null | false>
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? `: last error: ${lastError.message}` : ''
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what ?? 'a condition'}${why}`)
    }
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
}
