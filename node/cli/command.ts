/**
 * What a CLI command is, and how its arguments and help are handled: shared by the operator's
 * commands (host-commands.ts) and the user's (user-commands.ts).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import type { ApiClient } from '../api/index.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'

export interface Io {
  out: (s: string) => void
  err: (s: string) => void
}

export interface Globals {
  socket: string
  json: boolean
}

type Options = NonNullable<ParseArgsConfig['options']>

export interface Command {
  name: string
  summary: string
  usage: string
  description?: string
  options?: Options
  optionHelp?: Record<string, string>
  /** Number of positional arguments [min, max]. */
  positionals?: [number, number]
  run: (args: { values: Record<string, any>, positionals: string[], g: Globals, io: Io, api: ApiClient }) => Promise<void>
}

/** `--json`: the API's JSON unchanged; otherwise the human text. */
export function print (io: Io, g: Globals, value: unknown, human: () => string): void {
  io.out(g.json ? JSON.stringify(value, null, 2) : human())
}

export function commandHelp (c: Command): string {
  const lines = [`${c.summary}`, '', `usage: ${c.usage}`]
  if (c.description !== undefined) lines.push('', c.description)
  const opts = Object.entries(c.optionHelp ?? {})
  lines.push('', 'options:')
  for (const [k, v] of opts) {
    const short = c.options?.[k]?.short
    lines.push(short === undefined ? `  --${k.padEnd(10)} ${v}` : `  -${short}, --${k.padEnd(6)} ${v}`)
  }
  lines.push(`  --${'socket'.padEnd(10)} daemon socket (default /run/picocloud/picocloud.sock; env PICOCLOUD_SOCKET)`)
  lines.push(`  --${'json'.padEnd(10)} print JSON for scripts`)
  lines.push(`  --${'help'.padEnd(10)} this help`)
  return lines.join('\n')
}

export function parseCommand (c: Command, argv: string[]): { values: Record<string, any>, positionals: string[] } {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...c.options, socket: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true
    })
  } catch (err: any) {
    throw new PicocloudError(ErrorCode.Usage, `${err.message.replace(/\. To specify a positional.*$/s, '')}\nusage: ${c.usage}`)
  }
  const [min, max] = c.positionals ?? [0, 0]
  if (parsed.values.help !== true && (parsed.positionals.length < min || parsed.positionals.length > max)) {
    throw new PicocloudError(ErrorCode.Usage, `${c.name} takes ${min === max ? min : `${min} to ${max}`} argument${max === 1 ? '' : 's'}, got ${parsed.positionals.length}\nusage: ${c.usage}`)
  }
  return { values: parsed.values as Record<string, any>, positionals: parsed.positionals }
}
