/**
 * An in-memory hypervisor driver for reconciler unit tests: same interface and semantics as the
 * real drivers, records every call, and can inject failures.
 *
 * @example
 * const hv = new FakeHypervisor()
 * hv.failNextStart('pc-0123abcd', 'qemu: could not open disk')
 * hv.crash('pc-89abcdef', 'killed by the OOM killer')
 * expect(hv.calls).toEqual([{ op: 'start', name: 'pc-0123abcd' }])
 */
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import { isVmName, validateSpec, type HypervisorDriver, type StopOptions, type VmObserved, type VmSpec, type VmState } from './types.ts'

export interface FakeCall {
  op: 'list' | 'start' | 'stop' | 'destroy' | 'inspect'
  name?: string
}

interface FakeVm {
  spec: VmSpec
  state: VmState
  pid?: number
  since: string
  reason?: string
}

/** Shared between instances made with `sibling()`, like the host is shared across daemon restarts. */
interface FakeHost {
  vms: Map<string, FakeVm>
  nextPid: number
}

export class FakeHypervisor implements HypervisorDriver {
  readonly kind = 'fake'
  readonly calls: FakeCall[] = []
  private readonly host: FakeHost
  private readonly startFailures = new Map<string, string>()
  private readonly now: () => Date

  constructor (options: { now?: () => Date, host?: FakeHost } = {}) {
    this.host = options.host ?? { vms: new Map(), nextPid: 1000 }
    this.now = options.now ?? (() => new Date())
  }

  /** A new driver instance over the same VMs: what a daemon restart sees. */
  sibling (): FakeHypervisor {
    return new FakeHypervisor({ host: this.host, now: this.now })
  }

  /** The next `start` of `name` (or of any VM, if undefined) fails with `message`. */
  failNextStart (name: string | undefined, message = 'injected start failure'): void {
    this.startFailures.set(name ?? '*', message)
  }

  /** The VM's process dies: it shows `crashed` with `reason`. */
  crash (name: string, reason = 'qemu is gone (injected crash)'): void {
    const vm = this.host.vms.get(name)
    if (vm === undefined) throw new Error(`fake: no VM ${name}`)
    Object.assign(vm, { state: 'crashed', pid: undefined, reason, since: this.now().toISOString() })
  }

  /** The guest powers itself off. */
  guestPoweroff (name: string): void {
    const vm = this.host.vms.get(name)
    if (vm === undefined) throw new Error(`fake: no VM ${name}`)
    Object.assign(vm, { state: 'stopped', pid: undefined, reason: 'the guest powered off', since: this.now().toISOString() })
  }

  /** The spec the VM was last started with. */
  specOf (name: string): VmSpec | undefined {
    return this.host.vms.get(name)?.spec
  }

  private observe (vm: FakeVm): VmObserved {
    const o: VmObserved = { name: vm.spec.name, id: vm.spec.id, state: vm.state, since: vm.since }
    if (vm.pid !== undefined) o.pid = vm.pid
    if (vm.reason !== undefined) o.reason = vm.reason
    return o
  }

  async list (): Promise<VmObserved[]> {
    this.calls.push({ op: 'list' })
    return [...this.host.vms.values()].filter(v => isVmName(v.spec.name))
      .sort((a, b) => a.spec.name.localeCompare(b.spec.name)).map(v => this.observe(v))
  }

  async inspect (name: string): Promise<VmObserved | undefined> {
    this.calls.push({ op: 'inspect', name })
    const vm = this.host.vms.get(name)
    return vm === undefined ? undefined : this.observe(vm)
  }

  async start (spec: VmSpec): Promise<VmObserved> {
    this.calls.push({ op: 'start', name: spec.name })
    validateSpec(spec)
    const failure = this.startFailures.get(spec.name) ?? this.startFailures.get('*')
    if (failure !== undefined) {
      this.startFailures.delete(this.startFailures.has(spec.name) ? spec.name : '*')
      throw new PicocloudError(ErrorCode.VmStartFailed, `QEMU for ${spec.name} exited: ${failure}`, 500)
    }
    const vm = this.host.vms.get(spec.name)
    if (vm !== undefined && (vm.state === 'running' || vm.state === 'paused')) return this.observe(vm)
    const next: FakeVm = { spec: structuredClone(spec), state: 'running', pid: this.host.nextPid++, since: this.now().toISOString() }
    this.host.vms.set(spec.name, next)
    return this.observe(next)
  }

  async stop (name: string, _options?: StopOptions): Promise<void> {
    this.calls.push({ op: 'stop', name })
    const vm = this.host.vms.get(name)
    if (vm === undefined) throw new PicocloudError(ErrorCode.VmNotFound, `no VM ${name} on this host`, 404)
    if (vm.state === 'stopped' && vm.pid === undefined) return
    Object.assign(vm, { state: 'stopped', pid: undefined, reason: 'stopped by picocloud', since: this.now().toISOString() })
  }

  async destroy (name: string): Promise<void> {
    this.calls.push({ op: 'destroy', name })
    this.host.vms.delete(name)
  }

  consolePath (name: string): string { return `/fake/vms/${name}/console.sock` }
  logPath (name: string): string { return `/fake/vms/${name}/serial.log` }
}
