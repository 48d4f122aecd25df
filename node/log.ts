/**
 * Structured, journald-friendly log lines (logfmt) on stderr:
 *   level=info component=sync msg="applied change" peer=12D3…
 * Debug lines are printed when PICOCLOUD_DEBUG or DEBUG names the component (or `*`), as with
 * js-libp2p's `DEBUG=libp2p:*`.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error'
export type Fields = Record<string, string | number | boolean | undefined | null>

export interface Logger {
  debug: (msg: string, fields?: Fields) => void
  info: (msg: string, fields?: Fields) => void
  warn: (msg: string, fields?: Fields) => void
  error: (msg: string, fields?: Fields) => void
  forComponent: (name: string) => Logger
}

function quote (v: string): string {
  return /^[\w.:/@+-]+$/.test(v) ? v : JSON.stringify(v)
}

export function formatLine (level: Level, component: string, msg: string, fields: Fields = {}): string {
  const parts = [`level=${level}`, `component=${component}`, `msg=${JSON.stringify(msg)}`]
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined || v === null) continue
    parts.push(`${k}=${quote(String(v))}`)
  }
  return parts.join(' ')
}

function debugEnabled (component: string): boolean {
  const spec = process.env.PICOCLOUD_DEBUG ?? process.env.DEBUG ?? ''
  if (spec === '') return false
  return spec.split(',').some(s => s === '*' || s === 'picocloud' || s === 'picocloud:*' ||
    component === s || (s.endsWith('*') && component.startsWith(s.slice(0, -1))))
}

export function createLogger (component = 'picocloud', write: (line: string) => void = l => process.stderr.write(l + '\n')): Logger {
  const debugOn = debugEnabled(component)
  const log = (level: Level) => (msg: string, fields?: Fields) => {
    if (level === 'debug' && !debugOn) return
    write(formatLine(level, component, msg, fields))
  }
  return {
    debug: log('debug'),
    info: log('info'),
    warn: log('warn'),
    error: log('error'),
    forComponent: (name: string) => createLogger(`${component}:${name}`, write)
  }
}

/** A logger that drops everything (tests, libraries used without a daemon). */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  forComponent: () => silentLogger
}
