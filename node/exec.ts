/**
 * Every OS command (ip, bridge, wg, qemu-img, virsh, dnsmasq, nft…) runs through an `Exec`, so that
 * drivers can be tested against a recording fake and run for real in a network namespace.
 */
import { spawn } from 'node:child_process'

export interface ExecResult {
  code: number
  stdout: string
  stderr: string
}

export interface ExecOptions {
  /** Text written to the command's stdin. */
  input?: string
  /** Kill the command after this many milliseconds. @default 30000 */
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
}

export type Exec = (cmd: string, args: readonly string[], options?: ExecOptions) => Promise<ExecResult>

export class ExecError extends Error {
  override name = 'ExecError'
  readonly result: ExecResult
  constructor (cmd: string, args: readonly string[], result: ExecResult) {
    super(`${cmd} ${args.join(' ')} exited with ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`)
    this.result = result
  }
}

/** Runs a real process; never throws for a non-zero exit (see `check`). */
export const realExec: Exec = async (cmd, args, options = {}) => {
  return await new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: options.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000)
    child.on('error', err => { clearTimeout(timer); reject(err) })
    child.on('close', code => { clearTimeout(timer); resolve({ code: code ?? -1, stdout, stderr }) })
    // A command may exit before reading its stdin (ip, wg…): that is not an error of ours.
    child.stdin.on('error', () => {})
    child.stdin.end(options.input ?? '')
  })
}

/** Runs through `exec` and throws ExecError on a non-zero exit. */
export async function check (exec: Exec, cmd: string, args: readonly string[], options?: ExecOptions): Promise<string> {
  const result = await exec(cmd, args, options)
  if (result.code !== 0) throw new ExecError(cmd, args, result)
  return result.stdout
}

/** Wraps an Exec so that every command runs inside a network namespace (`ip netns exec NS …`). */
export function inNetns (exec: Exec, netns: string): Exec {
  return async (cmd, args, options) => await exec('ip', ['netns', 'exec', netns, cmd, ...args], options)
}
