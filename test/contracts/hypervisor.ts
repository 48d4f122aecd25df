/**
 * The behaviour every hypervisor driver promises, run against the fake (test/unit) and the real
 * qemu and libvirt drivers (test/drivers).
 *
 * @example
 * runHypervisorContract('fake', async () => { const d = new FakeHypervisor(); return { driver: d, … } })
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { waitFor } from '../helpers/wait.ts'
import { tapName, vmMac, vmName, type HypervisorDriver, type VmSpec } from '../../node/compute/hypervisor/types.ts'

export interface HypervisorContractEnv {
  driver: HypervisorDriver
  /** A valid spec for a new VM with this id (bootable for real drivers). */
  spec: (id: string) => VmSpec
  /** A fresh driver over the same host: a daemon restart. */
  reopen: () => HypervisorDriver
  /** Makes the VM's process die abruptly (SIGKILL for real drivers). */
  kill: (name: string, pid: number | undefined) => Promise<void>
  /** Removes everything the test made, also after a failure. */
  cleanup: () => Promise<void>
  /** How long state changes may take to show. @default 5000 */
  timeoutMs?: number
}

export function newVmId (): string {
  return randomBytes(8).toString('hex')
}

export function baseSpec (id: string, disk: VmSpec['disk']): VmSpec {
  return {
    id,
    name: vmName(id),
    vcpus: 1,
    memMiB: 128,
    arch: 'x86_64',
    disk,
    nics: [{ mac: vmMac(id, 0), tap: tapName(id, 0) }],
    restart: 'on-failure'
  }
}

export function runHypervisorContract (name: string, setup: () => Promise<HypervisorContractEnv>): void {
  describe(`hypervisor driver contract: ${name}`, () => {
    let env: HypervisorContractEnv
    const created: string[] = []
    const timeout = (): number => env.timeoutMs ?? 5000
    const make = (): VmSpec => { const s = env.spec(newVmId()); created.push(s.name); return s }
    const stateOf = async (d: HypervisorDriver, n: string, state: string): Promise<boolean> =>
      (await d.inspect(n))?.state === state

    beforeEach(async () => { env = await setup() })
    afterEach(async () => {
      for (const n of created.splice(0)) await env.driver.destroy(n).catch(() => {})
      await env.cleanup()
    })

    it('starts a VM that is then running, listed and inspectable', async () => {
      const spec = make()
      const started = await env.driver.start(spec)
      expect(started).toMatchObject({ name: spec.name, id: spec.id, state: 'running' })
      const listed = (await env.driver.list()).find(v => v.name === spec.name)
      expect(listed).toMatchObject({ name: spec.name, id: spec.id, state: 'running' })
      expect(await env.driver.inspect(spec.name)).toMatchObject({ state: 'running', pid: started.pid })
      expect(env.driver.logPath(spec.name)).toContain(spec.name)
      expect(env.driver.consolePath(spec.name)).toContain(spec.name)
    })

    it('start is idempotent: a running VM is left alone', async () => {
      const spec = make()
      const a = await env.driver.start(spec)
      const b = await env.driver.start(spec)
      expect(b.pid).toBe(a.pid)
      expect((await env.driver.list()).filter(v => v.name === spec.name)).toHaveLength(1)
    })

    it('stops (idempotently) and starts again', async () => {
      const spec = make()
      await env.driver.start(spec)
      await env.driver.stop(spec.name, { timeoutMs: 1000 })
      const stopped = await env.driver.inspect(spec.name)
      expect(stopped).toMatchObject({ state: 'stopped' })
      expect(stopped?.pid).toBeUndefined()
      await env.driver.stop(spec.name, { timeoutMs: 1000 })
      expect(await env.driver.start(spec)).toMatchObject({ state: 'running' })
    })

    it('destroys without a trace, idempotently', async () => {
      const spec = make()
      await env.driver.start(spec)
      await env.driver.destroy(spec.name)
      expect(await env.driver.inspect(spec.name)).toBeUndefined()
      expect((await env.driver.list()).map(v => v.name)).not.toContain(spec.name)
      await env.driver.destroy(spec.name)
    })

    it('refuses to stop an unknown VM with VM_NOT_FOUND', async () => {
      await expect(env.driver.stop(vmName(newVmId()))).rejects.toMatchObject({ code: 'VM_NOT_FOUND' })
      expect(await env.driver.inspect(vmName(newVmId()))).toBeUndefined()
    })

    it('rejects specs outside the allowlist with BAD_VM_SPEC', async () => {
      const spec = env.spec(newVmId())
      await expect(env.driver.start({ ...spec, name: 'web1' })).rejects.toMatchObject({ code: 'BAD_VM_SPEC' })
      await expect(env.driver.start({ ...spec, nics: [{ mac: '01:00:5e:00:00:01', tap: spec.nics[0].tap }] })).rejects.toMatchObject({ code: 'BAD_VM_SPEC' })
      await expect(env.driver.start({ ...spec, nics: [{ mac: spec.nics[0].mac, tap: 'eth0' }] })).rejects.toMatchObject({ code: 'BAD_VM_SPEC' })
      expect(await env.driver.inspect(spec.name)).toBeUndefined()
    })

    it('a new driver instance (daemon restart) adopts the running VM with the same pid', async () => {
      const spec = make()
      const started = await env.driver.start(spec)
      const again = env.reopen()
      const seen = (await again.list()).find(v => v.name === spec.name)
      expect(seen).toMatchObject({ state: 'running', pid: started.pid, id: spec.id })
      expect((await again.start(spec)).pid).toBe(started.pid)
    })

    it('a VM whose process dies abruptly shows crashed, with a reason', async () => {
      const spec = make()
      const started = await env.driver.start(spec)
      await env.kill(spec.name, started.pid)
      await waitFor(async () => await stateOf(env.driver, spec.name, 'crashed'), { timeoutMs: timeout(), what: `${spec.name} crashed` })
      const vm = await env.driver.inspect(spec.name)
      expect(vm?.reason).toMatch(/\w/)
      expect(vm?.pid).toBeUndefined()
      expect(await env.driver.start(spec)).toMatchObject({ state: 'running' })
    })
  })
}
