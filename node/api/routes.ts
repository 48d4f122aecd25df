/**
 * The routes of the local API, each a thin handler: validate the body, call the node.
 */
import type { PicocloudNode } from '../node.ts'
import type { Route } from './server.ts'
import { parseAdmitBody, parseExpelBody, parseInitBody, parseJoinBody, API_PREFIX } from '../../protocol/api.ts'

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
