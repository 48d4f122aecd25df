/**
 * The local API subsystem: HTTP/JSON on the Unix socket (server and routes) and its client. The
 * rest of the daemon and the CLI use it only through this file.
 */
export { ApiServer, decodeSegment, type Route, type ApiLimits } from './server.ts'
export { routes, consoleUpgrade } from './routes.ts'
export { ApiClient } from './client.ts'
