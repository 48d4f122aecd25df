/**
 * The `libvirt` hypervisor driver: the same VmSpec through `virsh -c qemu:///system`. The domain
 * XML is generated here from the allowlisted spec, every value escaped; user-provided XML is
 * never accepted. libvirt keeps the domains, so a daemon restart adopts them by their `pc-` name.
 * Our files live in `<stateDir>/vms/<name>/` (spec.json, domain.xml, overlay.qcow2, console.sock,
 * serial.log); libvirt's QEMU runs as its own unprivileged user (libvirt-qemu on Debian) under
 * libvirt's seccomp sandbox, so that directory and the image store must be traversable by it.
 *
 * @example
 * const driver = new LibvirtDriver({ stateDir: '/var/lib/picocloud' })
 * await driver.start(spec)
 */
import { chmod, mkdir, readFile, rm, stat, writeFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { realExec, type Exec } from '../../exec.ts'
import { silentLogger, type Logger } from '../../log.ts'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import { detectAccel, type Accel } from './accel.ts'
import { linksWithPrefix, removeTap } from './taps.ts'
import { isVmName, vmDir, validateSpec, type HypervisorDriver, type StopOptions, type VmObserved, type VmSpec, type VmState } from './types.ts'

export interface LibvirtDriverInit {
  stateDir: string
  /** @default 'qemu:///system' */
  uri?: string
  exec?: Exec
  log?: Logger
  /** @default 'auto' */
  accel?: Accel | 'auto'
  /** Where libvirt writes QEMU's own log. @default '/var/log/libvirt/qemu' */
  qemuLogDir?: string
  /** Where libvirt writes QEMU's pidfile. @default '/run/libvirt/qemu' */
  runDir?: string
}

export function xmlEscape (value: string | number): string {
  return String(value).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c] as string)
}

/** A UUID derived from the VM id, so that redefining a domain keeps its identity. */
export function vmUuid (id: string): string {
  const h = createHash('sha256').update(`picocloud-uuid:${id}`).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`
}

export interface DomainPaths {
  overlay: string
  console: string
  serialLog: string
}

/** The libvirt domain XML for `spec`: built from the allowlisted fields only, every value escaped. */
export function domainXml (spec: VmSpec, paths: DomainPaths, accel: Accel): string {
  const e = xmlEscape
  const x86 = spec.arch === 'x86_64'
  const lines = [
    `<domain type='${accel === 'kvm' ? 'kvm' : 'qemu'}'>`,
    `  <name>${e(spec.name)}</name>`,
    `  <uuid>${vmUuid(spec.id)}</uuid>`,
    '  <metadata>',
    `    <pc:vm xmlns:pc='urn:picocloud:vm:1' id='${e(spec.id)}' restart='${e(spec.restart)}'/>`,
    '  </metadata>',
    `  <memory unit='MiB'>${e(spec.memMiB)}</memory>`,
    `  <vcpu>${e(spec.vcpus)}</vcpu>`,
    '  <os>',
    `    <type arch='${e(spec.arch)}' machine='${x86 ? 'q35' : 'virt'}'>hvm</type>`
  ]
  if (spec.boot !== undefined) {
    lines.push(`    <kernel>${e(spec.boot.kernel)}</kernel>`, `    <initrd>${e(spec.boot.initrd)}</initrd>`, `    <cmdline>${e(spec.boot.append)}</cmdline>`)
  } else {
    lines.push("    <boot dev='hd'/>")
  }
  lines.push('  </os>', '  <features><acpi/></features>')
  if (accel === 'kvm') lines.push("  <cpu mode='host-passthrough'/>")
  lines.push(
    '  <on_poweroff>destroy</on_poweroff>', '  <on_reboot>restart</on_reboot>', '  <on_crash>destroy</on_crash>',
    '  <devices>',
    "    <disk type='file' device='disk'>",
    "      <driver name='qemu' type='qcow2' discard='unmap'/>",
    `      <source file='${e(paths.overlay)}'/>`,
    "      <target dev='vda' bus='virtio'/>",
    '    </disk>'
  )
  if (spec.seed !== undefined) {
    lines.push("    <disk type='file' device='disk'>", "      <driver name='qemu' type='raw'/>",
      `      <source file='${e(spec.seed)}'/>`, "      <target dev='vdb' bus='virtio'/>", '      <readonly/>', '    </disk>')
  }
  for (const nic of spec.nics) {
    if (nic.bridge !== undefined) {
      lines.push("    <interface type='bridge'>", `      <source bridge='${e(nic.bridge)}'/>`)
    } else {
      lines.push("    <interface type='ethernet'>")
    }
    lines.push(`      <target dev='${e(nic.tap)}'/>`, `      <mac address='${e(nic.mac)}'/>`, "      <model type='virtio'/>", '    </interface>')
  }
  lines.push(
    "    <serial type='unix'>",
    `      <source mode='bind' path='${e(paths.console)}'/>`,
    `      <log file='${e(paths.serialLog)}' append='off'/>`,
    "      <target port='0'/>",
    '    </serial>',
    "    <memballoon model='none'/>",
    '  </devices>',
    '</domain>', '')
  return lines.join('\n')
}

async function readText (path: string): Promise<string | undefined> {
  try { return await readFile(path, 'utf8') } catch { return undefined }
}

function lastLines (text: string, n: number): string {
  return text.trim().split('\n').filter(l => l.trim() !== '').slice(-n).join(' | ')
}

/** `virsh domstate --reason` output → our state. */
export function mapDomstate (text: string): { state: VmState, reason: string } {
  const t = text.trim()
  const m = /^([a-z ]+?)(?: \(([^)]*)\))?$/.exec(t)
  const main = m?.[1] ?? t
  const why = m?.[2] ?? ''
  if (main === 'running' || main === 'in shutdown' || main === 'blocked' || main === 'idle') return { state: 'running', reason: why }
  if (main === 'paused' || main === 'pmsuspended') return { state: 'paused', reason: why }
  if (main === 'crashed' || (main === 'shut off' && why === 'crashed')) return { state: 'crashed', reason: why }
  return { state: 'stopped', reason: why }
}

export class LibvirtDriver implements HypervisorDriver {
  readonly kind = 'libvirt'
  private readonly init: LibvirtDriverInit
  private readonly exec: Exec
  private readonly log: Logger
  private readonly uri: string

  constructor (init: LibvirtDriverInit) {
    this.init = init
    this.exec = init.exec ?? realExec
    this.log = (init.log ?? silentLogger).forComponent('libvirt')
    this.uri = init.uri ?? 'qemu:///system'
  }

  private dir (name: string): string {
    return vmDir(this.init.stateDir, name)
  }

  consolePath (name: string): string { return join(this.dir(name), 'console.sock') }
  logPath (name: string): string { return join(this.dir(name), 'serial.log') }

  private async virsh (args: string[], timeoutMs = 60_000): Promise<{ code: number, stdout: string, stderr: string }> {
    return await this.exec('virsh', ['-q', '-c', this.uri, ...args], { timeoutMs })
  }

  private async virshOk (args: string[], what: string, code: string = ErrorCode.Hypervisor): Promise<string> {
    const r = await this.virsh(args)
    if (r.code !== 0) throw new PicocloudError(code, `${what}: ${r.stderr.trim() || r.stdout.trim()}`, 500)
    return r.stdout
  }

  async list (): Promise<VmObserved[]> {
    const out = await this.virshOk(['list', '--all', '--name'], 'cannot list libvirt domains (is libvirtd running?)')
    const names = out.split('\n').map(s => s.trim()).filter(isVmName).sort()
    const all = await Promise.all(names.map(async n => await this.inspect(n)))
    return all.filter((v): v is VmObserved => v !== undefined)
  }

  async inspect (name: string): Promise<VmObserved | undefined> {
    const dir = this.dir(name)
    const r = await this.virsh(['domstate', '--reason', name])
    if (r.code !== 0) {
      if (/failed to get domain|Domain not found/i.test(r.stderr)) return undefined
      throw new PicocloudError(ErrorCode.Hypervisor, `virsh domstate ${name}: ${r.stderr.trim()}`, 500)
    }
    let id = name.slice(3)
    try { id = (JSON.parse(await readText(join(dir, 'spec.json')) ?? '') as VmSpec).id } catch {}
    const { state, reason } = mapDomstate(r.stdout)
    const o: VmObserved = { name, id, state }
    if (state === 'running' || state === 'paused') {
      const pidfile = join(this.init.runDir ?? '/run/libvirt/qemu', `${name}.pid`)
      const pid = Number.parseInt(await readText(pidfile) ?? '', 10)
      if (Number.isInteger(pid)) o.pid = pid
      try { o.since = (await stat(pidfile)).mtime.toISOString() } catch {}
      if (state === 'paused') o.reason = `paused (${reason})`
    } else if (state === 'crashed') {
      const qlog = await readText(join(this.init.qemuLogDir ?? '/var/log/libvirt/qemu', `${name}.log`)) ?? ''
      const tail = lastLines(qlog.split('\n').filter(l => !l.startsWith('LC_ALL=') && !/^\S+=\S+ \\?$/.test(l)).join('\n'), 2)
      o.reason = `QEMU died (libvirt: ${reason || 'crashed'})${tail !== '' ? `: ${tail}` : ''}`
    } else {
      o.reason = reason === 'shutdown' ? 'the guest powered off' : `shut off (${reason})`
    }
    return o
  }

  async start (spec: VmSpec): Promise<VmObserved> {
    validateSpec(spec)
    const before = await this.inspect(spec.name)
    if (before !== undefined && (before.state === 'running' || before.state === 'paused')) return before
    const dir = this.dir(spec.name)
    // libvirt's QEMU runs as another user: it must traverse to its files (not list or read others).
    await mkdir(dir, { recursive: true, mode: 0o711 })
    await chmod(join(this.init.stateDir, 'vms'), 0o711)
    await chmod(dir, 0o711)
    await writeFile(join(dir, 'spec.json.tmp'), JSON.stringify(spec, null, 2) + '\n', { mode: 0o600 })
    await rename(join(dir, 'spec.json.tmp'), join(dir, 'spec.json'))
    const overlay = join(dir, 'overlay.qcow2')
    try {
      await stat(overlay)
    } catch {
      const args = ['create', '-q', '-f', 'qcow2', '-F', spec.disk.format, '-b', spec.disk.baseImage, overlay]
      if (spec.disk.sizeGiB !== undefined) args.push(`${spec.disk.sizeGiB}G`)
      const r = await this.exec('qemu-img', args)
      if (r.code !== 0) {
        await rm(overlay, { force: true })
        throw new PicocloudError(ErrorCode.VmStartFailed, `cannot create the disk overlay of ${spec.name}: ${r.stderr.trim()}`, 500)
      }
    }
    const accel = this.init.accel === undefined || this.init.accel === 'auto'
      ? (await detectAccel(this.exec, 'qemu-system-x86_64', this.log)).accel
      : this.init.accel
    const xmlPath = join(dir, 'domain.xml')
    await writeFile(xmlPath, domainXml(spec, { overlay, console: this.consolePath(spec.name), serialLog: this.logPath(spec.name) }, spec.arch === 'x86_64' ? accel : 'tcg'), { mode: 0o600 })
    await this.virshOk(['define', xmlPath], `libvirt refused the domain of ${spec.name}`, ErrorCode.VmStartFailed)
    await this.virshOk(['start', spec.name], `libvirt could not start ${spec.name}`, ErrorCode.VmStartFailed)
    const after = await this.inspect(spec.name)
    if (after === undefined) throw new PicocloudError(ErrorCode.VmStartFailed, `domain ${spec.name} vanished after start`, 500)
    return after
  }

  async stop (name: string, options: StopOptions = {}): Promise<void> {
    const vm = await this.inspect(name)
    if (vm === undefined) throw new PicocloudError(ErrorCode.VmNotFound, `no VM ${name} on this host`, 404)
    if (vm.state !== 'running' && vm.state !== 'paused') return
    const timeoutMs = options.timeoutMs ?? 30_000
    if (vm.state === 'running' && timeoutMs > 0) {
      await this.virsh(['shutdown', name, '--mode', 'acpi'])
      const deadline = Date.now() + timeoutMs
      while (Date.now() < deadline) {
        const s = await this.inspect(name)
        if (s === undefined || (s.state !== 'running' && s.state !== 'paused')) return
        await new Promise(resolve => setTimeout(resolve, 200))
      }
      this.log.warn('guest ignored ACPI power-down, destroying', { name, timeoutMs })
    }
    const r = await this.virsh(['destroy', name])
    if (r.code !== 0 && !/not running/i.test(r.stderr)) throw new PicocloudError(ErrorCode.Hypervisor, `virsh destroy ${name}: ${r.stderr.trim()}`, 500)
  }

  async destroy (name: string): Promise<void> {
    const dir = this.dir(name)
    const vm = await this.inspect(name)
    if (vm !== undefined) {
      if (vm.state === 'running' || vm.state === 'paused') await this.stop(name, { timeoutMs: 0 })
      const r = await this.virsh(['undefine', '--nvram', name])
      if (r.code !== 0 && !/failed to get domain|not found/i.test(r.stderr)) throw new PicocloudError(ErrorCode.Hypervisor, `virsh undefine ${name}: ${r.stderr.trim()}`, 500)
    }
    const short = name.slice(3)
    for (const t of await linksWithPrefix(this.exec, `pc-t${short}`)) {
      if (/^\d{1,2}$/.test(t.slice(4 + short.length))) await removeTap(this.exec, t)
    }
    await rm(dir, { recursive: true, force: true })
    this.log.info('VM destroyed', { name })
  }
}
