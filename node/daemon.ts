/**
 * `picocloud daemon`: resolves the configuration, starts the host and the local API, and stops both
 * cleanly on SIGINT/SIGTERM.
 */
import { resolveConfig, type ConfigFlags } from './config.ts'
import { createLogger } from './log.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { PicocloudHost } from './host.ts'
import { ApiServer, routes, consoleUpgrade } from './api/index.ts'
import type { MetricsServer } from './metrics.ts'

export async function runDaemon (flags: ConfigFlags): Promise<void> {
  const log = createLogger('picocloud')
  const config = await resolveConfig(flags)
  log.info('starting', { config: config.configFile ?? 'defaults', state: config.state, socket: config.socket })
  // Metrics first: a taken port fails the start before anything else is touched.
  let metrics: MetricsServer | undefined
  if (config.metricsListen !== undefined) {
    const { MetricsServer } = await import('./metrics.ts')
    metrics = new MetricsServer(config.metricsListen, undefined, log.forComponent('metrics'))
    try {
      const at = await metrics.start()
      log.info('serving metrics', { url: `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}/metrics` })
    } catch (err: any) {
      throw new PicocloudError(ErrorCode.Config, `cannot serve metrics on ${config.metricsListen}: ${err.code === 'EADDRINUSE' ? 'the address is in use' : err.code === 'EADDRNOTAVAIL' ? 'no interface has that address' : err.message}. Change metrics_listen (or --metrics-listen), or set it to "" to turn metrics off`)
    }
  }
  const node = await PicocloudHost.create(config, log)
  if (metrics !== undefined) metrics.registry = (await import('./metrics.ts')).registerNodeMetrics(node)
  await node.start()
  const api = new ApiServer(config.socket, routes(node), log.forComponent('api'))
  api.onUpgrade = consoleUpgrade(node)
  try {
    await api.start(config.socketGroup)
  } catch (err) {
    await metrics?.stop()
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
      await metrics?.stop()
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
