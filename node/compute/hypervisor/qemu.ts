/**
 * The `qemu` hypervisor driver: one qemu-system process per VM, in its own session so that it
 * outlives the daemon (even `kill -9`). Everything about a VM lives in its runtime directory
 * `<stateDir>/vms/<name>/`:
 *   spec.json      the VmSpec it was started with
 *   qemu.pid       written by QEMU (-pidfile); adoption checks /proc/<pid>/cmdline names the VM
 *   qmp.sock       QMP (query-status, system_powerdown, quit)
 *   console.sock   interactive serial console (chardev socket); its output also goes to serial.log
 *   serial.log     serial console output
 *   qemu.log       QEMU's own stdout/stderr (why it failed to start or died)
 *   overlay.qcow2  the VM's disk: a qcow2 overlay over the base image in the image store
 *   stopped        present when picocloud stopped the VM (absent + no process = crashed)
 *
 * @example
 * const driver = new QemuDriver({ stateDir: '/var/lib/picocloud' })
 * await driver.start(spec)
 * for (const vm of await driver.list()) console.log(vm.name, vm.state, vm.pid)
 */
import { mkdir, readFile, readdir, rm, stat, writeFile, rename } from 'node:fs/promises'
import { join, basename } from 'node:path'
import { realExec, check, type Exec } from '../../exec.ts'
import { silentLogger, type Logger } from '../../log.ts'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import { Qmp } from './qmp.ts'
import { detectAccel, markKvmBroken, KVM_FAILURE, type Accel } from './accel.ts'
import { ensureTap, linksWithPrefix, removeTap } from './taps.ts'
import { isVmName, vmDir, validateSpec, type HypervisorDriver, type StopOptions, type VmObserved, type VmSpec } from './types.ts'

export interface QemuDriverInit {
  /** The daemon's state directory; VMs live in `<stateDir>/vms/`. */
  stateDir: string
  exec?: Exec
  log?: Logger
  /** @default 'auto' (probe KVM, fall back to TCG) */
  accel?: Accel | 'auto'
  /** Apply QEMU's seccomp sandbox. @default true */
  sandbox?: boolean
  /** How long `start` waits for QMP to answer. @default 30000 */
  startTimeoutMs?: number
  /**
   * Under KVM, how long `start` watches a new guest for a KVM failure (a boot loader that KVM
   * cannot emulate fails in its first second) before reporting it started. @default 3000
   */
  kvmWatchMs?: number
}

export interface RuntimePaths {
  dir: string
  spec: string
  pidfile: string
  qmp: string
  console: string
  serialLog: string
  qemuLog: string
  overlay: string
  stopped: string
}

/** QEMU option values are comma-separated: a literal comma is written twice. */
function qv (value: string): string {
  return value.replaceAll(',', ',,')
}

export function qemuBinary (arch: VmSpec['arch']): string {
  return `qemu-system-${arch}`
}

export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny'

/** The qemu-system argument vector for `spec` (no shell is ever involved). */
export function qemuArgs (spec: VmSpec, paths: RuntimePaths, accel: Accel, options: { sandbox?: boolean } = {}): string[] {
  const x86 = spec.arch === 'x86_64'
  const args = [
    '-name', `${spec.name},process=${spec.name}`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-msg', 'timestamp=on',
    '-machine', x86 ? 'q35' : 'virt',
    '-accel', accel,
    '-cpu', accel === 'kvm' ? 'host' : (x86 ? 'qemu64' : 'max'),
    '-smp', String(spec.vcpus),
    '-m', String(spec.memMiB),
    '-no-shutdown',
    '-pidfile', paths.pidfile,
    '-qmp', `unix:${qv(paths.qmp)},server=on,wait=off`,
    '-chardev', `socket,id=console,path=${qv(paths.console)},server=on,wait=off,logfile=${qv(paths.serialLog)},logappend=off`,
    '-serial', 'chardev:console',
    '-drive', `file=${qv(paths.overlay)},format=qcow2,if=virtio,cache=writeback,discard=unmap`
  ]
  if (options.sandbox !== false) args.push('-sandbox', SANDBOX)
  if (spec.seed !== undefined) args.push('-drive', `file=${qv(spec.seed)},format=raw,if=virtio,readonly=on`)
  if (spec.boot !== undefined) args.push('-kernel', spec.boot.kernel, '-initrd', spec.boot.initrd, '-append', spec.boot.append)
  spec.nics.forEach((nic, i) => {
    args.push('-netdev', `tap,id=n${i},ifname=${nic.tap},script=no,downscript=no`,
      '-device', `virtio-net-pci,netdev=n${i},mac=${nic.mac}`)
  })
  return args
}

async function readText (path: string): Promise<string | undefined> {
  try { return await readFile(path, 'utf8') } catch { return undefined }
}

async function mtimeIso (path: string): Promise<string | undefined> {
  try { return (await stat(path)).mtime.toISOString() } catch { return undefined }
}

/** True when process `pid` exists and is not a zombie. */
export async function processAlive (pid: number): Promise<boolean> {
  const statLine = await readText(`/proc/${pid}/stat`)
  return statLine !== undefined && !/^\d+ \(.*\) Z/.test(statLine)
}

/** True when `pid` is a live (not zombie) qemu-system process started for VM `name`. */
export async function isQemuOf (pid: number, name: string): Promise<boolean> {
  const cmdline = await readText(`/proc/${pid}/cmdline`)
  const statLine = await readText(`/proc/${pid}/stat`)
  if (cmdline === undefined || statLine === undefined) return false
  if (/^\d+ \(.*\) Z/.test(statLine)) return false
  const argv = cmdline.split('\0')
  if (!basename(argv[0] ?? '').startsWith('qemu-system-')) return false
  const i = argv.indexOf('-name')
  return i >= 0 && (argv[i + 1] === name || (argv[i + 1] ?? '').startsWith(`${name},`))
}

async function waitUntil (fn: () => Promise<boolean>, timeoutMs: number, intervalMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await fn()) return true
    if (Date.now() >= deadline) return false
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
}

/** The line of qemu.log that says KVM failed, or 'internal-error'. */
function kvmFailureLine (qlog: string): string {
  return qlog.split('\n').find(l => KVM_FAILURE.test(l))?.trim() ?? 'internal-error'
}

function lastLines (text: string, n: number): string {
  return text.trim().split('\n').filter(l => l.trim() !== '').slice(-n).join(' | ')
}

export class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu'
  private readonly init: QemuDriverInit
  private readonly exec: Exec
  private readonly log: Logger

  constructor (init: QemuDriverInit) {
    this.init = init
    this.exec = init.exec ?? realExec
    this.log = (init.log ?? silentLogger).forComponent('qemu')
  }

  paths (name: string): RuntimePaths {
    const dir = vmDir(this.init.stateDir, name)
    return {
      dir,
      spec: join(dir, 'spec.json'),
      pidfile: join(dir, 'qemu.pid'),
      qmp: join(dir, 'qmp.sock'),
      console: join(dir, 'console.sock'),
      serialLog: join(dir, 'serial.log'),
      qemuLog: join(dir, 'qemu.log'),
      overlay: join(dir, 'overlay.qcow2'),
      stopped: join(dir, 'stopped')
    }
  }

  consolePath (name: string): string { return this.paths(name).console }
  logPath (name: string): string { return this.paths(name).serialLog }

  async list (): Promise<VmObserved[]> {
    let names: string[]
    try {
      names = (await readdir(join(this.init.stateDir, 'vms'))).filter(isVmName).sort()
    } catch {
      return []
    }
    const all = await Promise.all(names.map(async n => await this.inspect(n)))
    return all.filter((v): v is VmObserved => v !== undefined)
  }

  /** The pid of the VM's QEMU if it is alive and really that VM's QEMU. */
  private async livePid (name: string): Promise<number | undefined> {
    const text = await readText(this.paths(name).pidfile)
    const pid = Number.parseInt(text ?? '', 10)
    if (!Number.isInteger(pid) || pid <= 1) return undefined
    return await isQemuOf(pid, name) ? pid : undefined
  }

  async inspect (name: string): Promise<VmObserved | undefined> {
    const p = this.paths(name)
    const specText = await readText(p.spec)
    if (specText === undefined) return undefined
    let id = name.slice(3)
    try { id = (JSON.parse(specText) as VmSpec).id } catch {}
    const pid = await this.livePid(name)
    if (pid !== undefined) {
      const since = await mtimeIso(p.pidfile)
      let status: string
      try {
        status = await this.qmpStatus(p.qmp)
      } catch (err) {
        return { name, id, state: 'running', pid, since, reason: `QMP does not answer: ${(err as Error).message}` }
      }
      if (status === 'running') return { name, id, state: 'running', pid, since }
      if (status === 'shutdown') return { name, id, state: 'stopped', pid, since, reason: 'the guest powered off' }
      if (status === 'internal-error' || status === 'guest-panicked' || status === 'io-error') {
        const qlog = await readText(p.qemuLog) ?? ''
        if (KVM_FAILURE.test(qlog)) markKvmBroken(qemuBinary('x86_64'), `${name}: ${kvmFailureLine(qlog)}`, this.log)
        return { name, id, state: 'crashed', pid, since, reason: `QEMU status ${status}${KVM_FAILURE.test(qlog) ? ' (KVM failed the guest; it restarts under TCG)' : ''}` }
      }
      return { name, id, state: 'paused', pid, since, reason: `QEMU status ${status}` }
    }
    const stopped = await readText(p.stopped)
    if (stopped !== undefined) return { name, id, state: 'stopped', since: await mtimeIso(p.stopped), reason: stopped.trim() || undefined }
    const qlog = await readText(p.qemuLog) ?? ''
    const last = lastLines(qlog, 3)
    const reason = last !== ''
      ? `qemu exited: ${last}`
      : 'qemu is gone without a message in qemu.log (killed with SIGKILL, by the OOM killer, or the host rebooted)'
    return { name, id, state: 'crashed', since: await mtimeIso(p.qemuLog), reason }
  }

  private async qmpStatus (path: string): Promise<string> {
    const qmp = await Qmp.connect(path, 3000)
    try {
      return (await qmp.execute<{ status: string }>('query-status')).status
    } finally {
      qmp.close()
    }
  }

  async start (spec: VmSpec): Promise<VmObserved> {
    validateSpec(spec)
    const p = this.paths(spec.name)
    if (Buffer.byteLength(p.console) > 107 || Buffer.byteLength(p.qmp) > 107) {
      throw new PicocloudError(ErrorCode.Config, `state directory ${this.init.stateDir} is too long for unix sockets (${p.console} exceeds 107 bytes)`)
    }
    const before = await this.inspect(spec.name)
    if (before !== undefined && (before.state === 'running' || before.state === 'paused')) return before
    if (before?.pid !== undefined) await this.halt(spec.name, 0)

    await mkdir(p.dir, { recursive: true, mode: 0o700 })
    await writeFile(`${p.spec}.tmp`, JSON.stringify(spec, null, 2) + '\n', { mode: 0o600 })
    await rename(`${p.spec}.tmp`, p.spec)
    try {
      await stat(p.overlay)
    } catch {
      await this.createOverlay(spec, p.overlay)
    }
    for (const nic of spec.nics) await ensureTap(this.exec, nic.tap, nic.bridge)
    for (const f of [p.qmp, p.console, p.pidfile, p.stopped]) await rm(f, { force: true })
    await writeFile(p.qemuLog, '')

    const accel = this.init.accel === undefined || this.init.accel === 'auto'
      ? (await detectAccel(this.exec, qemuBinary('x86_64'), this.log)).accel
      : this.init.accel
    const bin = qemuBinary(spec.arch)
    const args = qemuArgs(spec, p, spec.arch === 'x86_64' ? accel : 'tcg', { sandbox: this.init.sandbox })
    this.log.info('starting VM', { name: spec.name, accel })
    // setsid: QEMU gets its own session, so it outlives the daemon. The background child of a
    // non-interactive sh is no group leader, so setsid execs QEMU in place: $! is QEMU's pid.
    const started = Date.now()
    const out = await check(this.exec, 'sh', ['-c', 'log=$1; shift; setsid "$@" </dev/null >>"$log" 2>&1 & echo $!', 'sh', p.qemuLog, bin, ...args])
    const pid = Number.parseInt(out.trim(), 10)
    let status = ''
    const ok = await waitUntil(async () => {
      // Until setsid has exec'd QEMU, the pid's cmdline is sh's or setsid's: check only liveness.
      if (!(await processAlive(pid))) return true
      try { status = await this.qmpStatus(p.qmp); return true } catch { return false }
    }, this.init.startTimeoutMs ?? 30_000)
    if (status === '') {
      const why = lastLines(await readText(p.qemuLog) ?? '', 5)
      if (ok === false) await this.halt(spec.name, 0)
      if (await processAlive(pid)) { try { process.kill(pid, 'SIGKILL') } catch {} }
      throw new PicocloudError(ErrorCode.VmStartFailed,
        `QEMU for ${spec.name} ${ok ? 'exited' : 'did not answer on QMP'}: ${why === '' ? '(no output in qemu.log)' : why}`, 500)
    }
    if (accel === 'kvm' && spec.arch === 'x86_64' && await this.kvmFailed(p, this.init.kvmWatchMs ?? 3000)) {
      // The probe guest ran, this one did not: KVM here cannot run real guests. Start it again
      // under TCG, now and from now on.
      markKvmBroken(qemuBinary('x86_64'), kvmFailureLine(await readText(p.qemuLog) ?? ''), this.log)
      await this.halt(spec.name, 0)
      return await this.start(spec)
    }
    this.log.info('VM started', { name: spec.name, pid, ms: Date.now() - started })
    return { name: spec.name, id: spec.id, state: status === 'running' ? 'running' : 'paused', pid, since: new Date().toISOString() }
  }

  /** Watches a guest just started under KVM for `ms`: did KVM fail it (status internal-error)? */
  private async kvmFailed (p: RuntimePaths, ms: number): Promise<boolean> {
    const failed = async (): Promise<boolean> => {
      const status = await this.qmpStatus(p.qmp).catch(() => '')
      return status === 'internal-error' || KVM_FAILURE.test(await readText(p.qemuLog) ?? '')
    }
    return await waitUntil(failed, ms, 200)
  }

  private async createOverlay (spec: VmSpec, overlay: string): Promise<void> {
    const args = ['create', '-q', '-f', 'qcow2', '-F', spec.disk.format, '-b', spec.disk.baseImage, overlay]
    if (spec.disk.sizeGiB !== undefined) args.push(`${spec.disk.sizeGiB}G`)
    const r = await this.exec('qemu-img', args)
    if (r.code !== 0) {
      await rm(overlay, { force: true })
      throw new PicocloudError(ErrorCode.VmStartFailed, `cannot create the disk overlay of ${spec.name}: ${r.stderr.trim()}`, 500)
    }
  }

  async stop (name: string, options: StopOptions = {}): Promise<void> {
    const p = this.paths(name)
    if ((await readText(p.spec)) === undefined) throw new PicocloudError(ErrorCode.VmNotFound, `no VM ${name} on this host`, 404)
    await writeFile(p.stopped, `stopped by picocloud at ${new Date().toISOString()}\n`)
    await this.halt(name, options.timeoutMs ?? 30_000)
  }

  /** ACPI power-down with `graceMs` to comply, then QMP quit, then SIGKILL. */
  private async halt (name: string, graceMs: number): Promise<void> {
    const p = this.paths(name)
    const pid = await this.livePid(name)
    if (pid !== undefined) {
      const gone = async (): Promise<boolean> => !(await isQemuOf(pid, name))
      if (graceMs > 0) {
        try {
          await this.qmpOnce(p.qmp, 'system_powerdown')
          await waitUntil(async () => await gone() || (await this.qmpStatus(p.qmp).catch(() => '')) === 'shutdown', graceMs, 200)
        } catch (err) {
          this.log.warn('ACPI power-down failed', { name, error: (err as Error).message })
        }
      }
      if (!(await gone())) await this.qmpOnce(p.qmp, 'quit').catch(() => {})
      if (!(await waitUntil(gone, 5000))) {
        this.log.warn('QEMU ignored quit, killing it', { name, pid })
        try { process.kill(pid, 'SIGKILL') } catch {}
        if (!(await waitUntil(gone, 5000))) throw new PicocloudError(ErrorCode.Hypervisor, `QEMU of ${name} (pid ${pid}) does not die`, 500)
      }
    }
    for (const f of [p.qmp, p.console, p.pidfile]) await rm(f, { force: true })
  }

  private async qmpOnce (path: string, command: string): Promise<void> {
    const qmp = await Qmp.connect(path, 3000)
    try { await qmp.execute(command) } finally { qmp.close() }
  }

  async destroy (name: string): Promise<void> {
    const p = this.paths(name)
    let taps: string[] = []
    const specText = await readText(p.spec)
    if (specText !== undefined) {
      try { taps = (JSON.parse(specText) as VmSpec).nics.map(n => n.tap) } catch {}
    }
    await this.halt(name, 0)
    // Also taps left by a spec.json that was lost: they carry the VM's short id.
    const short = name.slice(3)
    for (const t of await linksWithPrefix(this.exec, `pc-t${short}`)) {
      if (/^\d{1,2}$/.test(t.slice(4 + short.length)) && !taps.includes(t)) taps.push(t)
    }
    for (const t of taps) await removeTap(this.exec, t)
    await rm(p.dir, { recursive: true, force: true })
    this.log.info('VM destroyed', { name })
  }
}
