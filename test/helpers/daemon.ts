/**
 * Real picocloud daemons as separate processes on 127.0.0.1, each with its own state dir and
 * socket, and the CLI run as a user would run it. Everything is removed by `stopAll`, also when a
 * test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { ApiClient } from '../../node/api/client.ts'
import type { HostView, IdView, StatusView } from '../../protocol/api.ts'
import { waitFor } from './wait.ts'

export const ROOT = resolve(import.meta.dirname, '../..')
const NODE = process.execPath
const MAIN = join(ROOT, 'node/cli/main.ts')
/** Compiled code cached across test daemons, as bin/picocloud caches it per user. */
const COMPILE_CACHE = join(tmpdir(), 'picocloud-test-compile-cache')

export interface CliResult { code: number, stdout: string, stderr: string }

/** Runs `picocloud ARGS` against a socket, as a separate process. */
export async function cli (socket: string, ...rest: Array<string | Record<string, string>>): Promise<CliResult> {
  const env = typeof rest[0] === 'object' ? rest.shift() as Record<string, string> : {}
  const args = rest as string[]
  return await new Promise((resolve, reject) => {
    const p = spawn(NODE, [MAIN, '--socket', socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
    let stdout = ''; let stderr = ''
    p.stdout.on('data', d => { stdout += d })
    p.stderr.on('data', d => { stderr += d })
    p.on('error', reject)
    p.on('close', code => resolve({ code: code ?? -1, stdout, stderr }))
  })
}

export interface TestDaemonOptions {
  /** Run the daemon inside this network namespace (`ip netns exec NS node …`; root only). */
  netns?: string
  /** libp2p listen address. @default /ip4/127.0.0.1/tcp/0 */
  listen?: string
  /** Image side channel (image_listen). @default a free port on the libp2p listen address's IP */
  imageListen?: string
}

export class TestDaemon {
  readonly name: string
  readonly options: TestDaemonOptions
  readonly state: string
  readonly socket: string
  readonly api: ApiClient
  proc?: ChildProcess
  log = ''
  private readonly extraEnv: Record<string, string>

  constructor (dir: string, name: string, env: Record<string, string> = {}, options: TestDaemonOptions = {}) {
    this.name = name
    this.options = options
    this.state = join(dir, name)
    this.socket = join(dir, `${name}.sock`)
    this.api = new ApiClient(this.socket)
    this.extraEnv = env
  }

  async start (): Promise<void> {
    const args = ['--max-semi-space-size=4', MAIN, 'daemon', '--state', this.state, '--socket', this.socket,
      '--listen', this.options.listen ?? '/ip4/127.0.0.1/tcp/0', '--name', this.name,
      // Several daemons share the machine: not the default :9779.
      '--image-listen', this.options.imageListen ?? `${/^\/ip4\/([^/]+)/.exec(this.options.listen ?? '')?.[1] ?? '127.0.0.1'}:0`]
    // `ip netns exec` execs the command in place: the child's pid is the daemon's.
    const [cmd, argv] = this.options.netns === undefined ? [NODE, args] : ['ip', ['netns', 'exec', this.options.netns, NODE, ...args]]
    const p = spawn(cmd, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      // As bin/picocloud runs the daemon.
      env: { MALLOC_ARENA_MAX: '2', NODE_COMPILE_CACHE: COMPILE_CACHE, ...process.env, PICOCLOUD_CONFIG: join(this.state, 'none.toml'), ...this.extraEnv }
    })
    // PICOCLOUD_CONFIG names an empty file in the state dir, so no host config leaks in.
    this.proc = p
    p.stdout?.on('data', d => { this.log += d })
    p.stderr?.on('data', d => { this.log += d })
    // A daemon that exits at once fails the start at once, with its log.
    let onExit: () => void = () => {}
    const exited = new Promise<never>((_resolve, reject) => {
      onExit = () => reject(new Error(`daemon ${this.name} exited with ${String(p.exitCode ?? p.signalCode)}:\n${this.log}`))
      p.once('exit', onExit)
    })
    try {
      await Promise.race([exited, waitFor(async () => await this.api.call('GET', '/v1/status').then(() => true, () => false),
        { timeoutMs: 30_000, what: `daemon ${this.name} to answer on its socket` })])
    } finally {
      p.off('exit', onExit)
      exited.catch(() => {})
    }
  }

  get running (): boolean { return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null }

  async kill (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc
    if (p === undefined || p.exitCode !== null || p.signalCode !== null) return
    const exited = new Promise(resolve => p.once('exit', resolve))
    p.kill(signal)
    await exited
  }

  async cli (...args: string[]): Promise<CliResult> { return await cli(this.socket, ...args) }
  /** The CLI as a user with their own keyring. */
  async as (keyring: string, ...args: string[]): Promise<CliResult> { return await cli(this.socket, { PICOCLOUD_KEYRING: keyring }, ...args) }
  async status (): Promise<StatusView> { return await this.api.call<StatusView>('GET', '/v1/status') }
  async hosts (): Promise<HostView[]> { return await this.api.call<HostView[]>('GET', '/v1/hosts') }
  async id (): Promise<IdView> { return await this.api.call<IdView>('GET', '/v1/id') }
}

export class TestMesh {
  readonly dir: string
  readonly daemons: TestDaemon[] = []

  private constructor (dir: string) { this.dir = dir }

  static async create (): Promise<TestMesh> {
    return new TestMesh(await mkdtemp(join(tmpdir(), 'pc-mesh-')))
  }

  /**
   * A daemon with its own state dir and socket; `config` is the text of its config file. Test
   * daemons run no data plane (`network = "none"`) unless the config names one: tests run as root
   * would otherwise all build pc-wg0 in the machine's own network namespace.
   */
  async daemon (name: string, config = '', env: Record<string, string> = {}, options: TestDaemonOptions = {}): Promise<TestDaemon> {
    const d = new TestDaemon(this.dir, name, { PICOCLOUD_KEYRING: join(this.dir, 'no-keyring'), ...env }, options)
    const { mkdir, writeFile } = await import('node:fs/promises')
    await mkdir(d.state, { recursive: true, mode: 0o700 })
    const network = /^\s*network\s*=/m.test(config) ? '' : 'network = "none"\n'
    await writeFile(join(d.state, 'none.toml'), `# test daemon\n${network}${config}\n`)
    this.daemons.push(d)
    await d.start()
    return d
  }

  /** `init` on the first, then admit + join the others through it, with the CLI. */
  async form (names: string[], config = '', env: Record<string, string> = {}): Promise<TestDaemon[]> {
    const ds = await Promise.all(names.map(async n => await this.daemon(n, config, env)))
    const [first, ...rest] = ds
    const init = await first.cli('init', '--name', 'test-mesh')
    if (init.code !== 0) throw new Error(`init failed: ${init.stderr}`)
    const addr = (await first.id()).addresses[0]
    for (const d of rest) {
      const peer = (await d.id()).peerId
      const a = await first.cli('admit', peer, '--name', d.name)
      if (a.code !== 0) throw new Error(`admit failed: ${a.stderr}`)
      const j = await d.cli('join', addr)
      if (j.code !== 0) throw new Error(`join failed: ${j.stderr}\n${d.log}`)
    }
    return ds
  }

  async stopAll (): Promise<void> {
    await Promise.all(this.daemons.map(async d => await d.kill('SIGKILL')))
    // PICOCLOUD_TEST_LOGS=DIR keeps every daemon's log, for debugging a failed run.
    const logs = process.env.PICOCLOUD_TEST_LOGS
    if (logs !== undefined && logs !== '') {
      const { mkdir, writeFile } = await import('node:fs/promises')
      await mkdir(logs, { recursive: true })
      for (const d of this.daemons) await writeFile(join(logs, `${d.name}.log`), d.log)
    }
    await rm(this.dir, { recursive: true, force: true })
  }
}
