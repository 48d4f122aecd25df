/**
 * The routes of the local API, each a thin handler: validate the body, call the subsystem that
 * owns the thing (membership and liveness: mesh; requests, VMs, networks, trust: control; images,
 * logs, consoles: compute; where a network is built: network).
 */
import type { PicocloudHost } from '../host.ts'
import { decodeSegment, type Route } from './server.ts'
import { parseAdmitBody, parseExpelBody, parseInitBody, parseJoinBody, parseTrustBody, parseEvict, parseEvictQuery, parseSelector, parseDrainBody, parseMoveCheckBody, parseRequestWait, API_PREFIX } from '../../protocol/api.ts'
import { normalizeFingerprint } from '../../protocol/fingerprint.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'

export function routes (host: PicocloudHost): Route[] {
  const { mesh, membership, control, compute, network } = host
  const p = (path: string): string => API_PREFIX + path
  return [
    { method: 'GET', path: p('/status'), handler: () => host.status() },
    { method: 'GET', path: p('/id'), handler: () => host.id() },
    { method: 'GET', path: p('/hosts'), handler: () => membership.hosts() },
    { method: 'GET', path: p('/history'), handler: () => control.history(membership.history()) },
    { method: 'POST', path: p('/init'), handler: async ({ body }) => await host.init(parseInitBody(body).name) },
    {
      method: 'POST',
      path: p('/admit'),
      handler: async ({ body }) => { const b = parseAdmitBody(body); return await membership.admit(b.peerId, b.name) }
    },
    { method: 'POST', path: p('/join'), handler: async ({ body }) => await host.join(parseJoinBody(body).address) },
    {
      method: 'POST',
      path: p('/expel'),
      handler: async ({ body }) => { const b = parseExpelBody(body); return await membership.expel(b.peer, b.reason) }
    },
    {
      method: 'POST',
      path: p('/mesh/policy'),
      handler: async ({ body }) => {
        const b = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>
        for (const k of Object.keys(b)) if (k !== 'admit' && k !== 'expellers') throw new PicocloudError(ErrorCode.BadRequest, `unknown field "${k}" (allowed: admit, expellers)`)
        if (b.expellers !== undefined && (!Array.isArray(b.expellers) || b.expellers.some(e => typeof e !== 'string'))) throw new PicocloudError(ErrorCode.BadRequest, 'field "expellers" must be a list of peer ids or host names')
        await membership.setPolicy({ admit: b.admit as any, expellers: b.expellers as string[] | undefined })
        return host.status()
      }
    },
    { method: 'POST', path: p('/requests'), handler: async ({ body }) => await control.submit(body) },
    {
      method: 'GET',
      path: p('/requests/:id'),
      // `?unless=STATUS&wait=S`: answer once the status is another, or after S seconds (≤ 25).
      handler: async ({ params, query }) => {
        const { unless, waitMs } = parseRequestWait(query.get('unless'), query.get('wait'))
        return unless === undefined ? control.request(params.id) : await control.requestWhen(params.id, unless, waitMs)
      }
    },
    {
      method: 'GET',
      path: p('/vms'),
      handler: ({ query }) => control.vms({
        selector: parseSelector(query.getAll('selector')),
        owner: query.get('owner') === null ? undefined : normalizeFingerprint(query.get('owner') as string),
        all: query.get('all') === '1'
      })
    },
    { method: 'GET', path: p('/vms/:ref'), handler: ({ params, query }) => {
        const vm = control.vm(params.ref, query.get('owner') ?? undefined)
        const progress = compute.progressOf(vm)
        return progress === undefined ? vm : { ...vm, progress }
      }
    },
    {
      method: 'POST',
      path: p('/vms/:ref/operator-stop'),
      handler: async ({ params, body }) => await control.operatorStop(params.ref, typeof (body as any)?.reason === 'string' ? (body as any).reason : '')
    },
    { method: 'POST', path: p('/vms/:ref/operator-start'), handler: async ({ params }) => await control.operatorStart(params.ref) },
    { method: 'POST', path: p('/vms/:ref/move-check'), handler: ({ params, body }) => control.moveCheck(params.ref, parseMoveCheckBody(body).pin) },
    { method: 'POST', path: p('/host/drain'), handler: async ({ body }) => await control.drain(parseDrainBody(body).reason) },
    { method: 'POST', path: p('/host/undrain'), handler: async () => await control.undrain() },
    {
      method: 'GET',
      path: p('/vms/:ref/logs'),
      handler: async ({ params, query }) => await compute.vmLogs(params.ref, Math.min(Number(query.get('bytes') ?? 65536) || 65536, 16 * 1024 * 1024))
    },
    {
      method: 'PUT',
      path: p('/images/upload'),
      rawBody: true,
      handler: async ({ req, query }) => {
        const format = query.get('format') ?? undefined
        if (format !== undefined && format !== 'raw' && format !== 'qcow2') throw new PicocloudError(ErrorCode.BadImage, `unknown image format ${JSON.stringify(format)}: use raw or qcow2`)
        return await compute.addImage(req, { format, name: query.get('name') ?? undefined, sha256: query.get('sha256') ?? undefined })
      }
    },
    { method: 'GET', path: p('/images'), handler: () => control.imageList() },
    { method: 'GET', path: p('/nets'), handler: () => control.nets() },
    { method: 'GET', path: p('/nets/:name'), handler: ({ params }) => {
        const { entry, ...net } = control.net(params.name)
        return { ...net, presence: network.presence(entry.id) }
      }
    },
    { method: 'GET', path: p('/trust'), handler: async () => await control.trustList() },
    { method: 'POST', path: p('/trust'), handler: async ({ body }) => await control.trustAdd(parseTrustBody(body), { evict: parseEvict(body) }) },
    { method: 'DELETE', path: p('/trust/:fpr'), handler: async ({ params, query }) => await control.trustRemove(params.fpr, { evict: parseEvictQuery(query.get('evict')) }) },
    // Test hooks, only when PICOCLOUD_TEST_HOOKS=1: cut this host off from peers (a partition).
    ...(process.env.PICOCLOUD_TEST_HOOKS === '1'
      ? [
          { method: 'POST' as const, path: p('/test/partition'), handler: async ({ body }: { body: unknown }) => await mesh.partition(((body as any)?.peers ?? []) as string[]) },
          { method: 'POST' as const, path: p('/test/heal'), handler: () => mesh.heal() }
        ]
      : []),
    {
      method: 'GET',
      path: p('/events'),
      handler: ({ res, req }) => {
        // Newline-delimited JSON, one event a line, until the client goes away.
        res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' })
        res.write(JSON.stringify({ type: 'hello', time: new Date().toISOString(), peerId: host.peerId }) + '\n')
        const onEvent = (e: unknown): void => { res.write(JSON.stringify(e) + '\n') }
        host.on('event', onEvent)
        req.on('close', () => host.off('event', onEvent))
        return undefined
      }
    }
  ]
}

/**
 * `GET /v1/vms/:ref/console` with `Connection: Upgrade`: the socket becomes the VM's serial
 * console (only for VMs on this host; the socket is the host operator's).
 */
export function consoleUpgrade (host: PicocloudHost): NonNullable<import('./server.ts').ApiServer['onUpgrade']> {
  return async (req, socket) => {
    const m = /^\/v1\/vms\/([^/]+)\/console$/.exec(new URL(req.url ?? '/', 'http://picocloud').pathname)
    if (m === null) throw new PicocloudError(ErrorCode.NotFound, 'only the VM console can be upgraded to', 404)
    const { path } = host.compute.consoleSocket(decodeSegment(m[1]))
    const { createConnection } = await import('node:net')
    const vm = createConnection(path)
    await new Promise<void>((resolve, reject) => {
      vm.once('connect', resolve)
      vm.once('error', (err: NodeJS.ErrnoException) => reject(new PicocloudError(ErrorCode.NotFound, `the VM's console is not available (${err.code ?? err.message}); is the VM running?`, 409)))
    })
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: picocloud-console\r\nconnection: Upgrade\r\n\r\n')
    socket.pipe(vm).pipe(socket)
    const close = (): void => { vm.destroy(); socket.destroy() }
    socket.on('close', close); vm.on('close', close)
    socket.on('error', close); vm.on('error', close)
  }
}
