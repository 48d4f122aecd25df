/**
 * `picocloud` command-line entry. Exit codes: 0 success, 1 the operation failed (the daemon said
 * why), 2 usage error, 3 the daemon could not be reached.
 */
import { ApiClient } from '../api/index.ts'
import { cliSocket } from '../paths.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import { commands, commandHelp, parseCommand, type Io } from './commands.ts'
import { cleanText } from './output.ts'

let runningDaemon = false
const io: Io = { out: s => process.stdout.write(s + '\n'), err: s => process.stderr.write(s + '\n') }

export function mainHelp (): string {
  const w = Math.max(...commands.map(c => c.name.length))
  return [
    'picocloud — a cloud for community networks, with no central controller',
    '',
    'usage: picocloud [--socket PATH] [--json] COMMAND [ARGS]',
    '',
    'commands:',
    ...commands.map(c => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    'Run `picocloud COMMAND --help` for a command\'s options.',
    'Environment: PICOCLOUD_SOCKET (the daemon socket), PICOCLOUD_CONFIG, PICOCLOUD_STATE (daemon paths),',
    'PICOCLOUD_KEYRING (your keyring), PICOCLOUD_KEY (signing key), PICOCLOUD_PASSPHRASE, PICOCLOUD_DEBUG (debug log lines).'
  ].join('\n')
}

export async function main (argv: string[]): Promise<number> {
  // Global flags may come before the command.
  const globals: { socket?: string, json: boolean } = { json: false }
  let i = 0
  for (; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--json') globals.json = true
    else if (a === '--socket') globals.socket = argv[++i]
    else if (a.startsWith('--socket=')) globals.socket = a.slice('--socket='.length)
    else break
  }
  // Commands may be two or three words (`vm create`, `vm nic add`): take the longest match.
  let name = argv[i]
  let rest = argv.slice(i + 1)
  for (const words of [3, 2]) {
    const candidate = argv.slice(i, i + words).join(' ')
    if (commands.some(c => c.name === candidate)) { name = candidate; rest = argv.slice(i + words); break }
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    const sub = name === 'help' ? commands.find(c => c.name === rest.join(' ')) : undefined
    io.out(sub !== undefined ? commandHelp(sub) : mainHelp())
    return 0
  }
  if (name === '--version' || name === 'version') {
    const { readFileSync } = await import('node:fs')
    io.out(JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version)
    return 0
  }
  const cmd = commands.find(c => c.name === name)
  if (cmd === undefined) {
    const group = commands.filter(c => c.name.startsWith(name + ' '))
    if (group.length > 0) {
      const help = group.map(c => `  ${c.name.padEnd(16)} ${c.summary}`).join('\n')
      if (rest.length === 0 || rest[0] === '--help' || rest[0] === '-h') { io.out(`picocloud ${name} commands:\n${help}`); return rest.length === 0 ? 2 : 0 }
      io.err(`picocloud: unknown command "${name} ${rest[0]}"\n\npicocloud ${name} commands:\n${help}`)
      return 2
    }
    io.err(`picocloud: unknown command "${name}"\n\n${mainHelp()}`)
    return 2
  }
  try {
    const { values, positionals } = parseCommand(cmd, rest)
    if (values.help === true) { io.out(commandHelp(cmd)); return 0 }
    const g = { socket: cliSocket(values.socket ?? globals.socket), json: globals.json || values.json === true }
    // Human output carries text of other hosts and users: no control characters reach the terminal.
    const out: Io = g.json ? io : { out: s => io.out(cleanText(s)), err: s => io.err(cleanText(s)) }
    await cmd.run({ values, positionals, g, io: out, api: new ApiClient(g.socket) })
    runningDaemon = cmd.name === 'daemon'
    return 0
  } catch (err: any) {
    if (err instanceof PicocloudError) {
      if (globals.json || rest.includes('--json')) io.err(JSON.stringify(err.toJSON()))
      else io.err(cleanText(`picocloud ${name}: ${err.message}`))
      return err.code === ErrorCode.Usage ? 2 : err.code === ErrorCode.DaemonUnreachable ? 3 : 1
    }
    io.err(cleanText(`picocloud ${name}: ${err?.stack ?? String(err)}`))
    return 1
  }
}

const code = await main(process.argv.slice(2))
// The daemon keeps running on its own handles; every other command exits with its status.
if (code !== 0 || !runningDaemon) process.exit(code)
