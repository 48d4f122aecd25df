/**
 * The routes of the local API, each a thin handler: validate the body, call the node.
 */
import type { PicocloudNode } from '../node.ts'
import type { Route } from './server.ts'
import { parseAdmitBody, parseExpelBody, parseInitBody, parseJoinBody, parseTrustBody, parseSelector, API_PREFIX } from '../../protocol/api.ts'
import { normalizeFingerprint } from '../../keys/fingerprint.ts'

export function routes (node: PicocloudNode): Route[] {
  const p = (path: string): string => API_PREFIX + path
  return [
    { method: 'GET', path: p('/status'), handler: () => node.status() },
    { method: 'GET', path: p('/id'), handler: () => node.id() },
    { method: 'GET', path: p('/hosts'), handler: () => node.hosts() },
    { method: 'GET', path: p('/history'), handler: () => node.history() },
    { method: 'POST', path: p('/init'), handler: async ({ body }) => await node.init(parseInitBody(body).name) },
    {
      method: 'POST',
      path: p('/admit'),
      handler: async ({ body }) => { const b = parseAdmitBody(body); return await node.admit(b.peerId, b.name) }
    },
    { method: 'POST', path: p('/join'), handler: async ({ body }) => await node.join(parseJoinBody(body).address) },
    {
      method: 'POST',
      path: p('/expel'),
      handler: async ({ body }) => { const b = parseExpelBody(body); return await node.expel(b.peer, b.reason) }
    },
    { method: 'POST', path: p('/requests'), handler: async ({ body }) => await node.submit(body) },
    { method: 'GET', path: p('/requests/:id'), handler: ({ params }) => node.request(params.id) },
    {
      method: 'GET',
      path: p('/vms'),
      handler: ({ query }) => node.vms({
        selector: parseSelector(query.getAll('selector')),
        owner: query.get('owner') === null ? undefined : normalizeFingerprint(query.get('owner') as string),
        all: query.get('all') === '1'
      })
    },
    { method: 'GET', path: p('/vms/:ref'), handler: ({ params, query }) => node.vm(params.ref, query.get('owner') ?? undefined) },
    {
      method: 'POST',
      path: p('/vms/:ref/operator-stop'),
      handler: async ({ params, body }) => await node.operatorStop(params.ref, typeof (body as any)?.reason === 'string' ? (body as any).reason : '')
    },
    { method: 'GET', path: p('/nets'), handler: () => node.nets() },
    { method: 'GET', path: p('/nets/:name'), handler: ({ params }) => node.net(params.name) },
    { method: 'GET', path: p('/trust'), handler: async () => await node.trustList() },
    { method: 'POST', path: p('/trust'), handler: async ({ body }) => await node.trustAdd(parseTrustBody(body)) },
    { method: 'DELETE', path: p('/trust/:fpr'), handler: async ({ params }) => await node.trustRemove(params.fpr) },
    // Test hooks, only when PICOCLOUD_TEST_HOOKS=1: cut this host off from peers (a partition).
    ...(process.env.PICOCLOUD_TEST_HOOKS === '1'
      ? [
          { method: 'POST' as const, path: p('/test/partition'), handler: async ({ body }: { body: unknown }) => await node.partition(((body as any)?.peers ?? []) as string[]) },
          { method: 'POST' as const, path: p('/test/heal'), handler: () => node.heal() }
        ]
      : []),
    {
      method: 'GET',
      path: p('/events'),
      handler: ({ res, req }) => {
        // Newline-delimited JSON, one event a line, until the client goes away.
        res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' })
        res.write(JSON.stringify({ type: 'hello', time: new Date().toISOString(), peerId: node.peerId }) + '\n')
        const onEvent = (e: unknown): void => { res.write(JSON.stringify(e) + '\n') }
        node.on('event', onEvent)
        req.on('close', () => node.off('event', onEvent))
        return undefined
      }
    }
  ]
}
