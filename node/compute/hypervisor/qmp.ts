/**
 * A small QMP (QEMU Machine Protocol) client: JSON lines over the VM's unix socket.
 * Connects, reads the greeting, negotiates capabilities; `execute` matches replies by `id`.
 * Asynchronous events are kept in `events` (bounded) for whoever wants them.
 *
 * @example
 * const qmp = await Qmp.connect('/var/lib/picocloud/vms/pc-0123abcd/qmp.sock')
 * const { status } = await qmp.execute<{ status: string }>('query-status')
 * qmp.close()
 */
import { createConnection, type Socket } from 'node:net'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'

interface Pending {
  resolve: (value: unknown) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

export interface QmpEvent {
  event: string
  data?: unknown
  timestamp?: { seconds: number, microseconds: number }
}

const MAX_EVENTS = 100

export class Qmp {
  readonly path: string
  readonly events: QmpEvent[] = []
  private readonly socket: Socket
  private readonly pending = new Map<string, Pending>()
  private buffer = ''
  private nextId = 1
  private closedError: Error | undefined
  private greeting: ((ok: boolean) => void) | undefined

  private constructor (path: string, socket: Socket) {
    this.path = path
    this.socket = socket
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => this.onData(d))
    socket.on('error', err => this.fail(err))
    socket.on('close', () => this.fail(new Error(`QMP connection to ${path} closed`)))
  }

  /** Connects and negotiates capabilities; rejects after `timeoutMs`. */
  static async connect (path: string, timeoutMs = 5000): Promise<Qmp> {
    const socket = createConnection(path)
    const qmp = new Qmp(path, socket)
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no QMP greeting from ${path} within ${timeoutMs} ms`)), timeoutMs)
        qmp.greeting = ok => { clearTimeout(timer); ok ? resolve() : reject(qmp.closedError ?? new Error('QMP closed')) }
      })
      await qmp.execute('qmp_capabilities', undefined, timeoutMs)
    } catch (err) {
      qmp.close()
      throw new PicocloudError(ErrorCode.Hypervisor, `QMP ${path}: ${(err as Error).message}`, 500, { cause: err })
    }
    return qmp
  }

  async execute<T = unknown> (command: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<T> {
    if (this.closedError !== undefined) throw this.closedError
    const id = String(this.nextId++)
    const msg = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`QMP ${command}: no answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, { resolve: v => resolve(v as T), reject, timer })
      this.socket.write(msg + '\n')
    })
  }

  close (): void {
    this.socket.destroy()
  }

  private onData (chunk: string): void {
    this.buffer += chunk
    if (this.buffer.length > 16 * 1024 * 1024) { this.fail(new Error('QMP message too large')); return }
    let nl: number
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim()
      this.buffer = this.buffer.slice(nl + 1)
      if (line !== '') this.onMessage(line)
    }
  }

  private onMessage (line: string): void {
    let msg: Record<string, unknown>
    try { msg = JSON.parse(line) } catch { return }
    if ('QMP' in msg) { this.greeting?.(true); this.greeting = undefined; return }
    if (typeof msg.event === 'string') {
      this.events.push(msg as unknown as QmpEvent)
      if (this.events.length > MAX_EVENTS) this.events.shift()
      return
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined
    const p = id === undefined ? undefined : this.pending.get(id)
    if (p === undefined || id === undefined) return
    this.pending.delete(id)
    clearTimeout(p.timer)
    if ('error' in msg) {
      const e = msg.error as { class?: string, desc?: string }
      p.reject(new Error(`QMP error ${e.class ?? ''}: ${e.desc ?? line}`))
    } else {
      p.resolve(msg.return)
    }
  }

  private fail (err: Error): void {
    if (this.closedError !== undefined) return
    this.closedError = err
    this.greeting?.(false)
    this.greeting = undefined
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(err) }
    this.pending.clear()
  }
}
