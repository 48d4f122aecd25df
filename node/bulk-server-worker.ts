/**
 * The image side channel's listener (node/bulk.ts, BulkListener) in its own thread: grants and
 * revocations come from the daemon's main thread, log lines go back to it.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { BulkListener, type GrantMessage } from './bulk.ts'
import type { Fields, Logger } from './log.ts'

const line = (level: 'debug' | 'info' | 'warn' | 'error') => (msg: string, fields: Fields = {}): void => { parentPort?.postMessage({ log: { level, msg, fields } }) }
const log: Logger = { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error'), forComponent: () => log }
const listener = new BulkListener({ host: workerData.host, port: workerData.port, log })
try {
  parentPort?.postMessage({ port: await listener.start() })
  parentPort?.on('message', (m: { grant?: GrantMessage, revoke?: string }) => {
    if (m.grant !== undefined) listener.add(m.grant)
    if (m.revoke !== undefined) listener.revoke(m.revoke)
  })
} catch (err: any) {
  parentPort?.postMessage({ error: { code: err.code, message: err.message } })
}
