import { describe, it, expect } from 'vitest'
import { tapName, vmMac, vmName, validateSpec } from '../../node/compute/hypervisor/types.ts'
import { qemuArgs, SANDBOX } from '../../node/compute/hypervisor/qemu.ts'
import { baseSpec } from '../contracts/hypervisor.ts'

const id = '0123456789abcdef'

describe('VM names, taps and MACs', () => {
  it('are derived deterministically from the VM id and fit Linux limits', () => {
    expect(vmName(id)).toBe('pc-01234567')
    expect(tapName(id, 15)).toBe('pc-t0123456715')
    expect(tapName(id, 15).length).toBeLessThanOrEqual(15)
    expect(vmMac(id, 0)).toBe(vmMac(id, 0))
    expect(vmMac(id, 0)).not.toBe(vmMac(id, 1))
    for (let i = 0; i < 50; i++) {
      const first = parseInt(vmMac(id + i.toString(16), i).slice(0, 2), 16)
      expect(first & 0x02).toBe(0x02) // locally administered
      expect(first & 0x01).toBe(0) // unicast
    }
  })
  it('validate rejects what is not in the allowlist', () => {
    const spec = baseSpec(id, { baseImage: '/img', format: 'raw' })
    expect(() => validateSpec(spec)).not.toThrow()
    expect(() => validateSpec({ ...spec, disk: { baseImage: 'rel/path', format: 'raw' } })).toThrow(/absolute/)
    expect(() => validateSpec({ ...spec, memMiB: 1.5 })).toThrow(/memMiB/)
    expect(() => validateSpec({ ...spec, boot: { kernel: '/k', initrd: '/i', append: 'a\nb' } })).toThrow(/one line/)
  })
})

describe('qemu argument vector', () => {
  it('sandboxes, names, and escapes commas in option values', () => {
    const spec = baseSpec(id, { baseImage: '/img', format: 'raw' })
    const dir = '/state,x/vms/pc-01234567'
    const paths = { dir, spec: `${dir}/spec.json`, pidfile: `${dir}/qemu.pid`, qmp: `${dir}/qmp.sock`, console: `${dir}/console.sock`, serialLog: `${dir}/serial.log`, qemuLog: `${dir}/qemu.log`, overlay: `${dir}/overlay.qcow2`, stopped: `${dir}/stopped` }
    const args = qemuArgs(spec, paths, 'tcg')
    expect(args).toEqual(expect.arrayContaining(['-nodefaults', '-no-user-config', '-sandbox', SANDBOX, '-accel', 'tcg']))
    expect(args[args.indexOf('-name') + 1]).toBe('pc-01234567,process=pc-01234567')
    expect(args[args.indexOf('-qmp') + 1]).toBe('unix:/state,,x/vms/pc-01234567/qmp.sock,server=on,wait=off')
    expect(args).toContain(`virtio-net-pci,netdev=n0,mac=${spec.nics[0].mac}`)
    expect(args).toContain('tap,id=n0,ifname=pc-t012345670,script=no,downscript=no')
  })
})
