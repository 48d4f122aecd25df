/**
 * Receives one image over the bulk side channel (node/bulk.ts) in a worker thread: decrypts,
 * hashes, writes and, once whole, verifies and moves it into the store. Off the daemon's main
 * thread because every record allocates a fresh plaintext buffer, and on the main thread's large
 * heap the garbage collections that triggers cost more than the transfer itself (~3× the CPU).
 *
 * It is started before the offer comes; the first message is the BulkFetchJob. It answers
 * {received} now and then, then one BulkFetchResult.
 */
import { parentPort } from 'node:worker_threads'
import { ImageStore } from './drivers/images/store.ts'
import { bulkReceive, type BulkFetchJob, type BulkFetchResult } from './bulk.ts'

async function run (job: BulkFetchJob): Promise<BulkFetchResult> {
  const store = new ImageStore({ stateDir: job.stateDir, maxBytes: job.maxBytes })
  const partial = await store.partial(job.sha256)
  const start = partial.offset
  let last = 0
  try {
    await bulkReceive({
      host: job.host,
      offer: job.offer,
      write: async pieces => {
        const length = pieces.reduce((n, c) => n + c.length, 0)
        if (partial.offset + length > job.size) throw new Error('sent more bytes than the image has')
        await partial.write(pieces)
        if (Date.now() - last > 250) { last = Date.now(); parentPort?.postMessage({ received: partial.offset }) }
      }
    })
    if (partial.offset !== job.size) throw new Error(`the side channel ended after ${partial.offset} of ${job.size} bytes`)
  } catch (err: any) {
    await partial.close().catch(() => {})
    return { kind: 'failed', error: err.message, received: partial.offset, written: partial.offset - start }
  }
  try {
    return { kind: 'done', info: await partial.finalize(), written: partial.offset - start }
  } catch (err: any) {
    return { kind: 'corrupt', error: err.message, written: partial.offset - start }
  }
}

parentPort?.once('message', (job: BulkFetchJob) => {
  void run(job).then(r => { parentPort?.postMessage(r) })
})
