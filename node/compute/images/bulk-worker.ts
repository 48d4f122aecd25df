/**
 * Receives one image over the bulk side channel (node/compute/images/bulk.ts) in a worker thread: decrypts,
 * hashes, writes and, once whole, verifies and moves it into the store. Off the daemon's main
 * thread because every record allocates a fresh plaintext buffer, and on the main thread's large
 * heap the garbage collections that triggers cost more than the transfer itself (~3× the CPU).
 *
 * It is started before the offer comes; the first message is the BulkFetchJob, a later
 * {abort: true} ends the transfer. It answers BulkWorkerNotes ({held: false} first, as it starts)
 * now and then, then one BulkFetchResult.
 */
import { parentPort } from 'node:worker_threads'
import { ImageStore } from './store.ts'
import { bulkReceive, type BulkFetchJob, type BulkFetchResult, type BulkWorkerNote } from './bulk.ts'

const note = (n: BulkWorkerNote): void => { parentPort?.postMessage(n) }
/** A write pending longer than this is this host's disk holding the transfer up, not the sender. */
const SLOW_WRITE_MS = 200

async function run (job: BulkFetchJob, signal: AbortSignal): Promise<BulkFetchResult> {
  const store = new ImageStore({ stateDir: job.stateDir, maxBytes: job.maxBytes })
  const partial = await store.partial(job.sha256)
  const start = partial.offset
  let last = 0
  try {
    await bulkReceive({
      host: job.host,
      offer: job.offer,
      signal,
      write: async pieces => {
        const length = pieces.reduce((n, c) => n + c.length, 0)
        if (partial.offset + length > job.size) throw new Error('sent more bytes than the image has')
        // The parent's watchdog judges the sender by its progress: time spent waiting on this
        // disk (or on hashing what an earlier attempt left) is not the sender's.
        let held = false
        const slow = setTimeout(() => { held = true; note({ held }) }, SLOW_WRITE_MS)
        try { await partial.write(pieces) } finally {
          clearTimeout(slow)
          if (held) note({ held: false })
        }
        if (Date.now() - last > 250) { last = Date.now(); note({ received: partial.offset }) }
      }
    })
    if (partial.offset !== job.size) throw new Error(`the side channel ended after ${partial.offset} of ${job.size} bytes`)
  } catch (err: any) {
    await partial.close().catch(() => {})
    return { kind: 'failed', error: err.message, received: partial.offset, written: partial.offset - start }
  }
  note({ received: partial.offset })
  // Hashing the rest and the fsync: the sender is done.
  note({ held: true })
  try {
    return { kind: 'done', info: await partial.finalize(), written: partial.offset - start }
  } catch (err: any) {
    return { kind: 'corrupt', error: err.message, written: partial.offset - start }
  }
}

const aborter = new AbortController()
let started = false
parentPort?.on('message', (m: BulkFetchJob | { abort: true }) => {
  if ('abort' in m) { aborter.abort(); return }
  if (started) return
  started = true
  // Booted and at work: from here on, waiting is the sender's doing (the parent held till now).
  note({ held: false })
  void run(m, aborter.signal).then(r => { parentPort?.postMessage(r) })
})
