/**
 * `picocloud demo` (also `npm run demo`): three hosts on this machine, narrated step by step, with
 * the command a person would type for each step. What needs root or missing packages is said and
 * skipped; the rest runs for real. Everything is removed at the end, also after a failure or ^C.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { ApiClient } from '../api/index.ts'
import type { IdView } from '../../protocol/api.ts'

const ROOT = resolve(import.meta.dirname, '../..')
const MAIN = join(ROOT, 'node/cli/main.ts')

interface Host { name: string, dir: string, socket: string, api: ApiClient, proc?: ChildProcess }

const bold = (s: string): string => process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s
const dim = (s: string): string => process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s

function say (text: string): void { process.stdout.write(`\n${bold(text)}\n`) }
function note (text: string): void { process.stdout.write(`${dim(text)}\n`) }

async function commandExists (cmd: string): Promise<boolean> {
  return await new Promise(resolve => {
    const p = spawn('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' })
    p.on('close', code => resolve(code === 0))
    p.on('error', () => resolve(false))
  })
}

async function waitUntil (fn: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await fn().catch(() => false)) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

export async function runDemo (): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'picocloud-demo-'))
  const hosts: Host[] = []
  const keyring = join(dir, 'alice-keyring')
  let failed = false

  /** Runs `picocloud ARGS` against a host, printing the command as a user would type it. */
  const run = async (h: Host, args: string[], opts: { quiet?: boolean, env?: Record<string, string>, allowFail?: boolean } = {}): Promise<{ code: number, out: string }> => {
    const shown = ['picocloud', ...args].map(a => /[\s"]/.test(a) ? JSON.stringify(a) : a).join(' ')
    process.stdout.write(`  ${dim(`[${h.name}]`)} $ ${shown}\n`)
    return await new Promise(resolve => {
      const p = spawn(process.execPath, [MAIN, '--socket', h.socket, ...args], { env: { ...process.env, PICOCLOUD_KEYRING: keyring, ...opts.env } })
      let out = ''
      let pending = ''
      // Whole lines, indented, as they come (stdout and stderr interleaved as a terminal shows them).
      const show = (d: Buffer): void => {
        out += d
        if (opts.quiet === true) return
        pending += String(d)
        const lines = pending.split('\n')
        pending = lines.pop() ?? ''
        for (const l of lines) process.stdout.write(`    ${l}\n`)
      }
      p.stdout.on('data', show)
      p.stderr.on('data', show)
      p.on('close', code => {
        if (pending !== '' && opts.quiet !== true) process.stdout.write(`    ${pending}\n`)
        if (code !== 0 && opts.allowFail !== true) { failed = true }
        resolve({ code: code ?? 1, out })
      })
    })
  }

  const cleanup = async (): Promise<void> => {
    // VMs outlive their daemon by design: end the demo's QEMUs and their taps first.
    const ids = new Set<string>()
    for (const h of hosts) {
      if (h.proc === undefined || h.proc.exitCode !== null || h.proc.signalCode !== null) continue
      const vms = await h.api.call<Array<{ id: string }>>('GET', '/v1/vms?all=1').catch(() => [])
      for (const v of vms) ids.add(v.id.slice(0, 8))
    }
    await new Promise(resolve => spawn('pkill', ['-KILL', '-f', `${dir}/`], { stdio: 'ignore' }).on('close', resolve).on('error', resolve))
    for (const id of ids) {
      await new Promise(resolve => spawn('ip', ['link', 'del', `pc-t${id}0`], { stdio: 'ignore' }).on('close', resolve).on('error', resolve))
    }
    for (const h of hosts) {
      if (h.proc !== undefined && h.proc.exitCode === null && h.proc.signalCode === null) {
        const exited = new Promise(resolve => h.proc?.once('exit', resolve))
        h.proc.kill('SIGTERM')
        await Promise.race([exited, new Promise(resolve => setTimeout(resolve, 5000))])
        if (h.proc.exitCode === null) h.proc.kill('SIGKILL')
      }
    }
    await rm(dir, { recursive: true, force: true })
  }
  const onSignal = (): void => { void cleanup().then(() => process.exit(130)) }
  process.once('SIGINT', onSignal)

  try {
    say('picocloud demo: three hosts of a community network, on this machine')
    const root = process.getuid?.() === 0
    const qemu = await commandExists('qemu-system-x86_64')
    const diskTools = (await commandExists('syslinux')) && (await commandExists('mcopy')) && (await commandExists('mkfs.vfat'))
    const canRunVms = root && qemu && diskTools
    note(`running as root: ${root ? 'yes' : 'no'}; QEMU: ${qemu ? 'yes' : 'no'}; boot-disk tools (syslinux, mtools, dosfstools): ${diskTools ? 'yes' : 'no'}`)
    if (!canRunVms) note('SKIPPED later: booting real VMs (needs root, QEMU and the boot-disk tools: sudo bash .ci/install-system-packages). Placement and trust decisions run anyway.')
    note('SKIPPED: private networks across hosts (WireGuard + VXLAN) need each host in its own network namespace; the end-to-end test (test/e2e) shows them.')

    say('1. Each host runs the same daemon, with its own state directory and socket.')
    for (const name of ['ninux-a', 'ninux-b', 'ninux-c']) {
      const h: Host = { name, dir: join(dir, name), socket: join(dir, `${name}.sock`), api: new ApiClient(join(dir, `${name}.sock`)) }
      await mkdir(h.dir, { recursive: true, mode: 0o700 })
      const cfg = join(h.dir, 'config.toml')
      await writeFile(cfg, `name = "${name}"\nvcpus = 4\nmem_mib = 2048\ndisk_gib = 50\nheartbeat_interval = 1\nreconnect_interval = 1\nnetwork = "none"\n${canRunVms ? '' : 'hypervisor = "none"\n'}`)
      process.stdout.write(`  ${dim(`[${name}]`)} $ picocloud daemon --config ${cfg} --state ${h.dir} --socket ${h.socket} --listen /ip4/127.0.0.1/tcp/0 &\n`)
      h.proc = spawn(process.execPath, ['--max-semi-space-size=4', MAIN, 'daemon', '--config', cfg, '--state', h.dir, '--socket', h.socket, '--listen', '/ip4/127.0.0.1/tcp/0'], { stdio: ['ignore', 'ignore', 'pipe'] })
      let log = ''
      h.proc.stderr?.on('data', d => { log += d })
      hosts.push(h)
      await waitUntil(async () => { if (h.proc?.exitCode !== null) throw new Error(`daemon ${name} exited:\n${log}`); await h.api.call('GET', '/v1/status'); return true }, 20_000, `${name} to start`)
    }
    const [a, b, c] = hosts

    say('2. The first host founds a mesh; the others join by exchanging peer keys.')
    await run(a, ['init', '--name', 'demo-mesh'])
    const addrA = (await a.api.call<IdView>('GET', '/v1/id')).addresses[0]
    for (const h of [b, c]) {
      note(`${h.name} prints its peer key with \`picocloud id\`; ${a.name}'s operator admits it; ${h.name} joins through ${a.name}.`)
      const id = await h.api.call<IdView>('GET', '/v1/id')
      await run(a, ['admit', id.peerId, '--name', h.name])
      await run(h, ['join', addrA])
    }
    await waitUntil(async () => (await c.api.call<Array<{ reachable: boolean }>>('GET', '/v1/hosts')).filter(x => x.reachable).length === 3, 20_000, 'three reachable hosts')
    await run(c, ['hosts'])

    say('3. Alice makes an OpenPGP key. Host operators decide whose VMs they run (picopeering).')
    await run(a, ['key', 'generate', '--name', 'Alice', '--email', 'alice@example.org'])
    const pub = join(dir, 'alice.asc')
    await writeFile(pub, (await run(a, ['key', 'export'], { quiet: true })).out)
    note(`Alice hands ${pub} to the operators. ${b.name} trusts her for 2 VMs; ${c.name} for any number; ${a.name} does not trust her.`)
    await run(b, ['trust', 'add', pub, '--max-vms', '2'])
    await run(c, ['trust', 'add', pub])

    say('4. Alice asks for a VM. Every host computes the same ranking; the best eligible host takes it.')
    let image = 'tiny'
    if (canRunVms) {
      note('Building a tiny bootable disk from Debian packages (kernel + busybox), once…')
      const { bootDisk } = await import('./boot-disk.ts')
      const disk = (await bootDisk()).path
      await run(a, ['image', 'add', disk, '--name', 'tiny'])
    } else {
      image = 'debian-12'
      note('(without QEMU the VMs are placed but not started)')
    }
    await run(a, ['vm', 'create', 'web', '--image', image, '--type', 'small', '--label', 'app=web'])
    await run(a, ['vm', 'list'])

    say(`5. A VM pinned to ${a.name}, which does not trust Alice, is refused — with each host's reason.`)
    await run(a, ['vm', 'create', 'pinned', '--image', image, '--type', 'small', '--on', a.name], { allowFail: true })

    say(`6. ${c.name} goes down; the mesh goes on without it.`)
    c.proc?.kill('SIGKILL')
    await waitUntil(async () => !(await a.api.call<Array<{ name: string, reachable: boolean }>>('GET', '/v1/hosts')).find(x => x.name === c.name)?.reachable, 30_000, `${c.name} to be seen down`)
    await run(a, ['hosts'])
    await run(b, ['vm', 'create', 'api', '--image', image, '--type', 'small'])

    if (canRunVms) {
      say('7. The serial console log of a VM, on the host that runs it.')
      const alive = (h: Host): boolean => h.proc !== undefined && h.proc.exitCode === null && h.proc.signalCode === null
      const vms = await a.api.call<Array<{ name: string, hostName: string | null }>>('GET', '/v1/vms')
      // A VM on a host that is still up (the one on the host we switched off has no one to ask).
      const shown = vms.map(v => ({ v, h: hosts.find(h => h.name === v.hostName && alive(h)) })).find(x => x.h !== undefined)
      if (shown?.h !== undefined) {
        const { v, h } = shown
        note('(waiting for the guest to print its boot line; under software emulation this takes a few seconds)')
        await waitUntil(async () => (await h.api.call<{ log: string }>('GET', `/v1/vms/${v.name}/logs`)).log.includes('picocloud-guest booted'), 300_000, 'the guest to boot')
        const logs = await run(h, ['vm', 'logs', v.name], { quiet: true })
        process.stdout.write(logs.out.split('\n').filter(l => /picocloud|Linux version/.test(l)).map(l => `    ${l}`).join('\n') + '\n')
      }
    }

    say(failed ? 'Demo finished, but some step failed (see above).' : 'Demo finished: every step above ran for real.')
    note('Next: README.md (concepts, CLI) and docs/guide.md (your own machines).')
    return failed ? 1 : 0
  } catch (err: any) {
    process.stdout.write(`\ndemo failed: ${err.message}\n`)
    return 1
  } finally {
    say('Cleaning up: stopping the daemons, removing their state.')
    await cleanup()
    process.off('SIGINT', onSignal)
  }
}
