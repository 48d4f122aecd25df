import { describe, it, expect } from 'vitest'
import { FakeHypervisor } from '../../node/compute/hypervisor/fake.ts'
import { runHypervisorContract, baseSpec, newVmId } from '../contracts/hypervisor.ts'

let last: FakeHypervisor
runHypervisorContract('fake', async () => {
  const driver = new FakeHypervisor()
  last = driver
  return {
    driver,
    spec: id => baseSpec(id, { baseImage: '/images/sha256/00', format: 'qcow2' }),
    reopen: () => driver.sibling(),
    kill: async name => { driver.crash(name, 'killed (test)') },
    cleanup: async () => {}
  }
})

describe('fake hypervisor', () => {
  it('records calls and injects start failures', async () => {
    const hv = new FakeHypervisor()
    const spec = baseSpec(newVmId(), { baseImage: '/i', format: 'raw' })
    hv.failNextStart(spec.name, 'could not open disk')
    await expect(hv.start(spec)).rejects.toMatchObject({ code: 'VM_START_FAILED', message: /could not open disk/ })
    expect(await hv.start(spec)).toMatchObject({ state: 'running' })
    hv.guestPoweroff(spec.name)
    expect(await hv.inspect(spec.name)).toMatchObject({ state: 'stopped', reason: 'the guest powered off' })
    expect(hv.calls.map(c => c.op)).toEqual(['start', 'start', 'inspect'])
    expect(last).toBeInstanceOf(FakeHypervisor)
  })
})
