/**
 * The sending end of the image side channel (node/compute/images/bulk.ts), as a child process of the daemon.
 * The daemon checks the token of each connection and hands the socket over with what to send;
 * this process reads, seals and sends the records, and says when a transfer is over. It exits
 * when the daemon goes away or stops it.
 */
import type { Socket } from 'node:net'
import { sendRecords, type SenderCommand, type SenderReport } from './bulk.ts'

const sockets = new Map<string, Socket>()
const report = (r: SenderReport): void => { if (process.connected) process.send?.(r) }

process.on('message', (c: SenderCommand, sock?: Socket) => {
  if (c.kind === 'revoke') { sockets.get(c.id)?.destroy(); return }
  if (sock === undefined) return
  sockets.set(c.id, sock)
  sock.on('error', () => {})
  sock.setTimeout(30_000, () => sock.destroy(new Error('client stopped reading')))
  sendRecords(sock, { path: c.path, offset: c.offset, size: c.size, key: Buffer.from(c.key, 'base64') })
    .then(() => { report({ kind: 'ended', id: c.id }) })
    .catch((err: Error) => { sock.destroy(); report({ kind: 'ended', id: c.id, error: err.message }) })
    .finally(() => sockets.delete(c.id))
})
// The daemon is gone (or stopped us): so is every transfer.
process.on('disconnect', () => { process.exit(0) })
