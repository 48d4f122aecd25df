/**
 * A small client for the local API over the Unix socket, used by the CLI and the tests.
 */
import { request } from 'node:http'
import { PicocloudError, ErrorCode, isErrorBody } from '../../protocol/errors.ts'

export class ApiClient {
  readonly socketPath: string
  constructor (socketPath: string) {
    this.socketPath = socketPath
  }

  async call<T = unknown> (method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    return await new Promise<T>((resolve, reject) => {
      const req = request({
        socketPath: this.socketPath,
        method,
        path,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
      }, res => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let value: unknown
          try { value = text === '' ? undefined : JSON.parse(text) } catch {
            reject(new PicocloudError(ErrorCode.Internal, `the daemon answered with something that is not JSON (HTTP ${res.statusCode ?? '?'})`, 502)); return
          }
          if ((res.statusCode ?? 500) >= 400) {
            if (isErrorBody(value)) reject(new PicocloudError(value.error.code, value.error.message, res.statusCode))
            else reject(new PicocloudError(ErrorCode.Internal, `the daemon answered HTTP ${res.statusCode ?? '?'}`, res.statusCode))
            return
          }
          resolve(value as T)
        })
      })
      req.on('error', (err: NodeJS.ErrnoException) => reject(unreachable(this.socketPath, err)))
      req.end(payload)
    })
  }

  /** Streams newline-delimited JSON events until `signal` aborts. */
  async events (onEvent: (e: Record<string, unknown>) => void, signal?: AbortSignal): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, method: 'GET', path: '/v1/events', signal }, res => {
        let buf = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => {
          buf += d
          let i
          while ((i = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, i); buf = buf.slice(i + 1)
            if (line.trim() !== '') onEvent(JSON.parse(line))
          }
        })
        res.on('end', () => resolve())
        res.on('error', () => resolve())
      })
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.name === 'AbortError') resolve()
        else reject(unreachable(this.socketPath, err))
      })
      req.end()
    })
  }
}

function unreachable (socket: string, err: NodeJS.ErrnoException): PicocloudError {
  const why = err.code === 'ENOENT'
    ? 'no socket there: is the daemon running? (start it with `picocloud daemon`, or point --socket / PICOCLOUD_SOCKET at it)'
    : err.code === 'EACCES'
      ? 'permission denied: add your user to the picocloud group (`sudo adduser $USER picocloud`, then log in again) or run as root'
      : err.code === 'ECONNREFUSED'
        ? 'connection refused: the daemon is not running (a stale socket is left); start it with `picocloud daemon`'
        : err.message
  return new PicocloudError(ErrorCode.DaemonUnreachable, `cannot reach the picocloud daemon at ${socket}: ${why}`, 503)
}
