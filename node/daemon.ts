/**
 * `picocloud daemon`: resolves the configuration, starts the node and the local API, and stops both
 * cleanly on SIGINT/SIGTERM.
 */
import { resolveConfig, type ConfigFlags } from './config.ts'
import { createLogger } from './log.ts'
import { PicocloudNode } from './node.ts'
import { ApiServer } from './api/server.ts'
import { routes, consoleUpgrade } from './api/routes.ts'

export async function runDaemon (flags: ConfigFlags): Promise<void> {
  const log = createLogger('picocloud')
  const config = await resolveConfig(flags)
  log.info('starting', { config: config.configFile ?? 'defaults', state: config.state, socket: config.socket })
  const node = await PicocloudNode.create(config, log)
  await node.start()
  const api = new ApiServer(config.socket, routes(node), log.forComponent('api'))
  api.onUpgrade = consoleUpgrade(node)
  try {
    await api.start(config.socketGroup)
  } catch (err) {
    await node.stop()
    throw err
  }
  log.info('ready', { socket: config.socket, peerId: node.peerId })
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    log.info('stopping', { signal })
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    void (async () => {
      await api.stop()
      await node.stop()
      process.exit(0)
    })()
  }
  // One failed background task must not take the host down with it.
  process.on('unhandledRejection', err => { log.error('unhandled rejection', { error: String((err as Error)?.stack ?? err) }) })
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
}
