/**
 * The one interface every hypervisor driver (qemu, libvirt, fake) implements. The reconciler sees
 * only this: it observes with `list`/`inspect`, converges with `start`/`stop`/`destroy`.
 *
 * Names: every VM the drivers create is called `pc-<short id>`; `list` returns only those, so that
 * adoption after a daemon restart is exact and nothing else on the host is ever touched.
 *
 * @example
 * const spec: VmSpec = {
 *   id, name: vmName(id), vcpus: 1, memMiB: 256, arch: 'x86_64',
 *   disk: { baseImage: store.path(hash), format: 'qcow2' },
 *   nics: [{ mac: vmMac(id, 0), tap: tapName(id, 0), bridge: 'pc-br1' }],
 *   restart: 'on-failure'
 * }
 * await driver.start(spec)
 */
import { join } from 'node:path'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'

export type Arch = 'x86_64' | 'aarch64'
export type DiskFormat = 'raw' | 'qcow2'
/** What the reconciler does when it finds the VM stopped or crashed. Drivers only store it. */
export type RestartPolicy = 'always' | 'on-failure' | 'never'
export type VmState = 'running' | 'paused' | 'stopped' | 'crashed'

export interface VmDisk {
  /** Path of the base image, in the image store. Never written: VMs write to an overlay. */
  baseImage: string
  format: DiskFormat
  /** Virtual size of the overlay; default: the size of the base image. */
  sizeGiB?: number
}

/** Direct kernel boot (the tiny test image); otherwise the VM boots from its disk. */
export interface VmBoot {
  kernel: string
  initrd: string
  append: string
}

export interface VmNic {
  /** Locally administered unicast MAC, `vmMac(id, index)`. */
  mac: string
  /** Host tap device, `tapName(id, index)`, at most 15 characters, starts with `pc-t`. */
  tap: string
  /** Bridge the tap is attached to, if any. */
  bridge?: string
}

export interface VmSpec {
  /** Stable VM id (lower-case hex, at least 8 digits). */
  id: string
  /** `pc-` + short id (`vmName(id)`): the QEMU process name / libvirt domain name. */
  name: string
  vcpus: number
  memMiB: number
  arch: Arch
  disk: VmDisk
  boot?: VmBoot
  nics: VmNic[]
  /** Path of a cloud-init NoCloud seed (ISO 9660 or vfat, label `cidata`), attached read-only. */
  seed?: string
  restart: RestartPolicy
}

export interface VmObserved {
  name: string
  id: string
  state: VmState
  /** Process id of the VM's QEMU, when one runs. */
  pid?: number
  /** ISO time of the last state change the driver knows of (process start, stop). */
  since?: string
  /** Why the VM is stopped or crashed, in words a person can act on (QEMU's own stderr). */
  reason?: string
}

export interface StopOptions {
  /** How long the guest gets to power off after the ACPI request before QEMU is ended. @default 30000 */
  timeoutMs?: number
}

export interface HypervisorDriver {
  readonly kind: string
  /** Every `pc-` VM this driver knows of on this host, running or not. */
  list: () => Promise<VmObserved[]>
  /**
   * Starts the VM; creates its overlay and taps on first start. Idempotent: a VM already running
   * is left alone. A stopped or crashed VM is started again on its existing overlay.
   */
  start: (spec: VmSpec) => Promise<VmObserved>
  /** ACPI power-down, then quit/kill after `timeoutMs`. Idempotent; unknown name: NOT_FOUND. */
  stop: (name: string, options?: StopOptions) => Promise<void>
  /** Stops and removes everything of the VM: overlay, sockets, taps, pidfile. Idempotent. */
  destroy: (name: string) => Promise<void>
  /** The VM's observed state, or undefined if the driver knows no VM of that name. */
  inspect: (name: string) => Promise<VmObserved | undefined>
  /** Unix socket of the interactive serial console (may not exist when the VM is not running). */
  consolePath: (name: string) => string
  /** File the serial console output is written to. */
  logPath: (name: string) => string
}

const NAME_RE = /^pc-[0-9a-f]{8,16}$/
const TAP_RE = /^pc-t[0-9a-z]{1,11}$/
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/

export { vmName, tapName, vmMac } from '../../devices.ts'

export function isVmName (name: string): boolean {
  return NAME_RE.test(name)
}

/** A VM's own directory under a driver's state dir, `<stateDir>/vms/<name>`; refuses other names. */
export function vmDir (stateDir: string, name: string): string {
  if (!isVmName(name)) throw new PicocloudError(ErrorCode.BadVmSpec, `not a picocloud VM name: ${JSON.stringify(name)}`)
  return join(stateDir, 'vms', name)
}

function bad (message: string): PicocloudError {
  return new PicocloudError(ErrorCode.BadVmSpec, message, 400)
}

/** Checks a spec against the allowlist; throws BAD_VM_SPEC naming the offending field. */
export function validateSpec (spec: VmSpec): void {
  if (!/^[0-9a-f]{8,64}$/.test(spec.id)) throw bad(`VM id must be 8-64 lower-case hex digits, got ${JSON.stringify(spec.id)}`)
  if (!NAME_RE.test(spec.name)) throw bad(`VM name must match ${NAME_RE.source}, got ${JSON.stringify(spec.name)}`)
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 64) throw bad(`vcpus must be an integer 1-64, got ${spec.vcpus}`)
  if (!Number.isInteger(spec.memMiB) || spec.memMiB < 32 || spec.memMiB > 1024 * 1024) throw bad(`memMiB must be an integer >= 32, got ${spec.memMiB}`)
  if (spec.arch !== 'x86_64' && spec.arch !== 'aarch64') throw bad(`arch must be x86_64 or aarch64, got ${JSON.stringify(spec.arch)}`)
  if (spec.disk.format !== 'raw' && spec.disk.format !== 'qcow2') throw bad(`disk format must be raw or qcow2, got ${JSON.stringify(spec.disk.format)}`)
  if (!spec.disk.baseImage.startsWith('/')) throw bad('disk.baseImage must be an absolute path')
  if (spec.disk.sizeGiB !== undefined && (!Number.isInteger(spec.disk.sizeGiB) || spec.disk.sizeGiB < 1 || spec.disk.sizeGiB > 65536)) throw bad(`disk.sizeGiB must be an integer 1-65536, got ${spec.disk.sizeGiB}`)
  if (spec.nics.length > 16) throw bad('at most 16 NICs')
  for (const nic of spec.nics) {
    if (!MAC_RE.test(nic.mac) || (parseInt(nic.mac.slice(0, 2), 16) & 1) !== 0) throw bad(`NIC MAC must be a unicast MAC in lower case, got ${JSON.stringify(nic.mac)}`)
    if (!TAP_RE.test(nic.tap)) throw bad(`tap name must match ${TAP_RE.source} (at most 15 characters), got ${JSON.stringify(nic.tap)}`)
    if (nic.bridge !== undefined && !/^[\w.-]{1,15}$/.test(nic.bridge)) throw bad(`bridge name is not a Linux interface name: ${JSON.stringify(nic.bridge)}`)
  }
  if (!['always', 'on-failure', 'never'].includes(spec.restart)) throw bad(`restart must be always, on-failure or never, got ${JSON.stringify(spec.restart)}`)
  for (const p of [spec.boot?.kernel, spec.boot?.initrd, spec.seed]) {
    if (p !== undefined && !p.startsWith('/')) throw bad(`paths must be absolute, got ${JSON.stringify(p)}`)
  }
  if (spec.boot !== undefined && /[\n\0]/.test(spec.boot.append)) throw bad('kernel command line must be one line')
}
