/**
 * The local API: HTTP/1.1 with JSON bodies on a Unix socket (mode 0660, in a 0750 directory).
 * Routing, body limits and error mapping live here, in one place; handlers (node/api/routes.ts)
 * only validate and call the node. A rejected call changes nothing.
 */
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http'
import { createConnection } from 'node:net'
import { chmod, chown, mkdir, readFile, rm, stat } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { Logger } from '../log.ts'

/** Bodies over this are refused with 413 before they are read whole. */
export const MAX_BODY_BYTES = 1024 * 1024

/**
 * How long a client may take to send a request. Whoever can open the socket could otherwise hold
 * connections and half-read bodies forever by dribbling a byte now and then.
 */
export interface ApiLimits {
  /** For the request line and headers (Node answers 408 and closes). @default 10 s */
  headersTimeoutMs?: number
  /** For a whole body, except on upload routes (`rawBody`), whose size has no bound here. @default 60 s */
  bodyTimeoutMs?: number
  /** For the longest pause in a body, uploads included: a big upload that keeps flowing is never cut. @default 30 s */
  bodyIdleMs?: number
  /** Connections open at once; further ones are closed as they come. @default 256 */
  maxConnections?: number
}

export interface Ctx {
  body: unknown
  query: URLSearchParams
  params: Record<string, string>
  req: IncomingMessage
  res: ServerResponse
}

/** A handler returns the JSON to send, or undefined when it wrote the response itself (streams). */
export type Handler = (ctx: Ctx) => Promise<unknown> | unknown

export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  path: string
  handler: Handler
  /** The handler reads the request body itself (uploads): no JSON parsing, no size limit here. */
  rawBody?: boolean
}

interface Compiled extends Route { re: RegExp, names: string[] }

function compile (r: Route): Compiled {
  const names: string[] = []
  const re = new RegExp('^' + r.path.replace(/:([a-zA-Z]+)/g, (_m, n: string) => { names.push(n); return '([^/]+)' }) + '$')
  return { ...r, re, names }
}

function parseUrl (url: string | undefined): URL {
  try {
    return new URL(url ?? '/', 'http://picocloud')
  } catch {
    throw new PicocloudError(ErrorCode.BadRequest, 'malformed request URL')
  }
}

/** A path segment, percent-decoded: a malformed escape is the client's mistake, not a 500. */
export function decodeSegment (s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    throw new PicocloudError(ErrorCode.BadRequest, `malformed percent-encoding in the path: ${s}`)
  }
}

async function readBody (req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > MAX_BODY_BYTES) throw new PicocloudError(ErrorCode.BodyTooLarge, `request body of ${declared} bytes is over the limit of ${MAX_BODY_BYTES}`, 413)
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY_BYTES) throw new PicocloudError(ErrorCode.BodyTooLarge, `request body is over the limit of ${MAX_BODY_BYTES} bytes`, 413)
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return {}
  const text = Buffer.concat(chunks).toString('utf8')
  try {
    return JSON.parse(text)
  } catch (err: any) {
    throw new PicocloudError(ErrorCode.BadJson, `request body is not valid JSON: ${err.message}`)
  }
}

export function sendJson (res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

/** Handles an HTTP Upgrade (the serial console); throw a PicocloudError to refuse. */
export type UpgradeHandler = (req: IncomingMessage, socket: import('node:stream').Duplex, head: Buffer) => Promise<void>

export class ApiServer {
  /** Set to accept `Connection: Upgrade` requests. */
  onUpgrade?: UpgradeHandler
  private readonly routes: Compiled[]
  private readonly log: Logger
  private server?: Server
  private readonly socketPath: string
  private readonly limits: Required<ApiLimits>

  constructor (socketPath: string, routes: Route[], log: Logger, limits: ApiLimits = {}) {
    this.socketPath = socketPath
    this.routes = routes.map(compile)
    this.log = log
    this.limits = { headersTimeoutMs: 10_000, bodyTimeoutMs: 60_000, bodyIdleMs: 30_000, maxConnections: 256, ...limits }
  }

  async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = parseUrl(req.url)
      this.limitBody(req, res, this.routes.some(r => r.rawBody === true && r.method === req.method && r.re.test(url.pathname)))
      const matching = this.routes.filter(r => r.re.test(url.pathname))
      if (matching.length === 0) throw new PicocloudError(ErrorCode.NotFound, `no such API route: ${url.pathname} (is the CLI newer than the daemon?)`, 404)
      const route = matching.find(r => r.method === req.method)
      if (route === undefined) {
        res.setHeader('allow', matching.map(r => r.method).join(', '))
        throw new PicocloudError(ErrorCode.MethodNotAllowed, `${req.method ?? '?'} is not allowed on ${url.pathname} (allowed: ${matching.map(r => r.method).join(', ')})`, 405)
      }
      const m = route.re.exec(url.pathname) as RegExpExecArray
      const params: Record<string, string> = {}
      route.names.forEach((n, i) => { params[n] = decodeSegment(m[i + 1]) })
      const body = req.method === 'GET' || route.rawBody === true ? {} : await readBody(req)
      const out = await route.handler({ body, query: url.searchParams, params, req, res })
      if (out !== undefined) sendJson(res, 200, out)
    } catch (err: any) {
      const e = err instanceof PicocloudError ? err : new PicocloudError(ErrorCode.Internal, `internal error: ${err?.message ?? String(err)}`, 500)
      if (e.status >= 500) this.log.error('API call failed', { method: req.method, url: req.url, error: e.message })
      if (!res.headersSent) sendJson(res, e.status, e.toJSON())
      else res.end()
      // Drain what the client still sends so it reads our answer instead of a reset.
      if (!req.complete) req.resume()
    }
  }

  /**
   * Bounds the arrival of a body that is still coming: a pause longer than bodyIdleMs, or (not for
   * uploads) more than bodyTimeoutMs in all, answers 408 and closes the connection. Bodiless
   * requests (event streams) are left alone.
   */
  private limitBody (req: IncomingMessage, res: ServerResponse, upload: boolean): void {
    const length = req.headers['content-length']
    if (length === '0' || (length === undefined && req.headers['transfer-encoding'] === undefined)) return
    let deadline: ReturnType<typeof setTimeout> | undefined
    const done = (): void => {
      clearTimeout(deadline)
      req.off('timeout', expire)
      // Keep-alive set its own timer once the answer went out: leave that one be.
      if (!res.writableFinished) req.socket.setTimeout(0)
    }
    const expire = (): void => {
      done()
      if (res.headersSent) { req.socket.destroy(); return }
      const e = new PicocloudError(ErrorCode.RequestTimeout, 'the request body came too slowly', 408)
      res.setHeader('connection', 'close')
      // A lingering close: the client may still be sending. Destroyed at once with its bytes
      // unread, the socket could reset the connection and lose the 408 before the client read it.
      req.resume()
      res.once('finish', () => {
        req.socket.end()
        setTimeout(() => req.socket.destroy(), 2000).unref()
      })
      sendJson(res, e.status, e.toJSON())
    }
    if (!upload) deadline = setTimeout(expire, this.limits.bodyTimeoutMs)
    // The socket's idle timer: reset by each byte that comes (and each we send).
    req.setTimeout(this.limits.bodyIdleMs, expire)
    req.once('end', done)
    req.once('close', done)
  }

  async start (group?: string): Promise<void> {
    const dir = dirname(this.socketPath)
    try {
      const created = await mkdir(dir, { recursive: true, mode: 0o750 })
      // Our own socket directory is 0750 even when something else of ours made it first; a
      // directory the operator chose (say /tmp) is left as it is.
      if (created !== undefined || basename(dir) === 'picocloud') await chmod(dir, 0o750)
    } catch (err: any) {
      if (err?.code !== 'EACCES' && err?.code !== 'EPERM') throw err
      throw new PicocloudError(ErrorCode.Config, `cannot create the socket directory ${dir}: permission denied. Run as root, or choose a socket path of yours with --socket PATH`, 500)
    }
    await this.removeStaleSocket()
    const server = createServer({
      headersTimeout: this.limits.headersTimeoutMs,
      // Ours, per route, in limitBody: Node's would also cut big uploads.
      requestTimeout: 0,
      // How often Node looks for connections past headersTimeout (its default: every 30 s).
      connectionsCheckingInterval: Math.min(1000, this.limits.headersTimeoutMs)
    }, (req, res) => { void this.handle(req, res) })
    server.maxConnections = this.limits.maxConnections
    server.on('upgrade', (req, socket, head) => {
      const refuse = (e: PicocloudError): void => {
        const body = JSON.stringify(e.toJSON())
        socket.end(`HTTP/1.1 ${e.status} Refused\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
      }
      if (this.onUpgrade === undefined) { refuse(new PicocloudError(ErrorCode.NotFound, 'no upgrade here', 404)); return }
      this.onUpgrade(req, socket, head).catch((err: any) => {
        refuse(err instanceof PicocloudError ? err : new PicocloudError(ErrorCode.Internal, err?.message ?? String(err), 500))
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.socketPath, () => { server.off('error', reject); resolve() })
    })
    this.server = server
    await chmod(this.socketPath, 0o660)
    const gid = await groupId(group ?? 'picocloud')
    if (gid !== undefined) {
      await chown(this.socketPath, -1, gid).catch(() => {})
      await chown(dir, -1, gid).catch(() => {})
    }
  }

  private async removeStaleSocket (): Promise<void> {
    try {
      const st = await stat(this.socketPath)
      if (!st.isSocket()) throw new PicocloudError(ErrorCode.Config, `${this.socketPath} exists and is not a socket; remove it or choose another --socket`, 500)
    } catch (err: any) {
      if (err?.code === 'ENOENT') return
      throw err
    }
    const live = await new Promise<boolean>(resolve => {
      const c = createConnection(this.socketPath)
      c.once('connect', () => { c.destroy(); resolve(true) })
      c.once('error', () => resolve(false))
    })
    if (live) throw new PicocloudError(ErrorCode.Config, `another daemon is already listening on ${this.socketPath}; stop it or use --socket`, 500)
    await rm(this.socketPath, { force: true })
  }

  async stop (): Promise<void> {
    const server = this.server
    if (server === undefined) return
    this.server = undefined
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
    await rm(this.socketPath, { force: true })
  }
}

async function groupId (name: string): Promise<number | undefined> {
  try {
    const line = (await readFile('/etc/group', 'utf8')).split('\n').find(l => l.startsWith(name + ':'))
    return line === undefined ? undefined : Number(line.split(':')[2])
  } catch {
    return undefined
  }
}
