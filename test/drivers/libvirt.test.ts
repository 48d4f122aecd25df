/**
 * The libvirt driver for real, against a libvirtd on this machine. If none runs, the test starts
 * `virtlogd -d` and `libvirtd -d` with their default configuration and stops them afterwards.
 * Needs root, libvirt-daemon-system, libvirt-daemon-driver-qemu, libvirt-clients, qemu-utils and
 * the tiny image's packages.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { statSync } from 'node:fs'
import { mkdtemp, rm, chmod, readFile, access } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { LibvirtDriver, domainXml, mapDomstate } from '../../node/drivers/hypervisor/libvirt.ts'
import { type VmSpec } from '../../node/drivers/hypervisor/types.ts'
import { tinyImage, readLog, BOOT_LINE, type TinyImage } from '../helpers/tiny-image.ts'
import { waitFor } from '../helpers/wait.ts'
import { bootDisk } from '../helpers/boot-disk.ts'
import { runHypervisorContract, baseSpec, newVmId } from '../contracts/hypervisor.ts'

function has (cmd: string): boolean {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); return true } catch { return false }
}
const missing = ['libvirtd', 'virtlogd', 'virsh', 'qemu-system-x86_64', 'qemu-img', 'cpio', 'apt-get'].filter(c => !has(c))
const isRoot = process.getuid?.() === 0
const available = isRoot && missing.length === 0
if (!available) {
  console.log(`skipping real libvirt driver tests: ${!isRoot ? 'not root; ' : ''}${missing.length > 0 ? `missing ${missing.join(', ')}` : ''} (CI installs them: .ci/install-system-packages)`)
}

function running (daemon: string): boolean {
  try { execFileSync('pgrep', ['-x', daemon], { stdio: 'ignore' }); return true } catch { return false }
}

async function exists (p: string): Promise<boolean> {
  try { await access(p); return true } catch { return false }
}

function specFor (img: TinyImage, id: string): VmSpec {
  return { ...baseSpec(id, { baseImage: img.disk, format: 'raw' }), boot: { kernel: img.kernel, initrd: img.initrd, append: img.append } }
}

describe('libvirt domain XML', () => {
  it('escapes every value and maps domain states', () => {
    const spec = baseSpec('0123456789abcdef', { baseImage: '/img', format: 'raw' })
    spec.boot = { kernel: '/k', initrd: '/i', append: "console=ttyS0 x='</cmdline><devices>&" }
    const xml = domainXml(spec, { overlay: '/s/o', console: '/s/c', serialLog: '/s/l' }, 'tcg')
    expect(xml).toContain('<cmdline>console=ttyS0 x=&apos;&lt;/cmdline&gt;&lt;devices&gt;&amp;</cmdline>')
    expect(xml).toContain("<domain type='qemu'>")
    expect(xml.match(/<devices>/g)).toHaveLength(1)
    expect(mapDomstate('running (booted)')).toEqual({ state: 'running', reason: 'booted' })
    expect(mapDomstate('shut off (crashed)').state).toBe('crashed')
    expect(mapDomstate('shut off (destroyed)').state).toBe('stopped')
    expect(mapDomstate('paused (user)').state).toBe('paused')
  })
})

describe.skipIf(!available)('libvirt driver (real)', () => {
  const startedPids: number[] = []
  let img: TinyImage

  beforeAll(async () => {
    img = await tinyImage()
    // libvirt checks /dev/kvm as its QEMU user (libvirt-qemu, group kvm). Where udev has not set
    // the usual root:kvm 0660 (containers, micro-VMs), the probe (run as root) finds KVM and the
    // check does not, and libvirtd re-probes QEMU forever: every `virsh define` hangs
    // ("KVM was enabled when probing …, but it is not available now"). Do what udev would do.
    try {
      const st = statSync('/dev/kvm')
      if ((st.mode & 0o060) !== 0o060) {
        console.log('libvirt test: /dev/kvm is not root:kvm 0660 (no udev here); setting it as udev would')
        execFileSync('chgrp', ['kvm', '/dev/kvm'])
        execFileSync('chmod', ['0660', '/dev/kvm'])
      }
    } catch {}
    for (const [daemon, pidfile] of [['virtlogd', '/run/virtlogd.pid'], ['libvirtd', '/run/libvirtd.pid']]) {
      if (running(daemon)) continue
      execFileSync(daemon, ['-d'])
      const pid = await waitFor(async () => Number.parseInt(await readFile(pidfile, 'utf8').catch(() => ''), 10) || undefined, { what: `${daemon} pidfile` })
      startedPids.push(pid)
    }
    await waitFor(() => { try { execFileSync('virsh', ['-c', 'qemu:///system', 'version'], { stdio: 'ignore', timeout: 5000 }); return true } catch { return false } }, { timeoutMs: 30_000, what: 'libvirtd to answer' })
  }, 300_000)

  afterAll(async () => {
    for (const pid of startedPids.reverse()) {
      try { process.kill(pid, 'SIGTERM') } catch {}
      await waitFor(async () => !(await exists(`/proc/${pid}/cmdline`)) || (await readFile(`/proc/${pid}/stat`, 'utf8')).includes(') Z'), { timeoutMs: 15_000, what: `pid ${pid} to exit` })
    }
  })

  runHypervisorContract('libvirt', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'pc-libvirt-'))
    await chmod(stateDir, 0o711) // libvirt's QEMU (user libvirt-qemu) must reach the overlay
    const image = await tinyImage()
    const driver = new LibvirtDriver({ stateDir })
    const mine = new Set<string>()
    return {
      driver,
      spec: id => { const s = specFor(image, id); mine.add(s.name); return s },
      reopen: () => new LibvirtDriver({ stateDir }),
      kill: async (_name, pid) => { if (pid !== undefined) process.kill(pid, 'SIGKILL') },
      cleanup: async () => {
        for (const vm of await driver.list()) if (mine.has(vm.name)) await driver.destroy(vm.name)
        await rm(stateDir, { recursive: true, force: true })
      },
      timeoutMs: 15_000
    }
  })

  // Boots from its disk, as VMs made from `picocloud image add` do (SYSLINUX on the test disk).
  // Direct kernel boot under libvirt left the initramfs unpacked (kernel: "Failed to execute
  // /init"), not yet diagnosed; the disk path is the one the daemon uses.
  it('boots the tiny disk and shows the boot line on the serial log; destroy leaves nothing', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'pc-libvirt-'))
    await chmod(stateDir, 0o711)
    const driver = new LibvirtDriver({ stateDir })
    const disk = (await bootDisk()).path
    const spec = { ...baseSpec(newVmId(), { baseImage: disk, format: 'raw' }), memMiB: 256 }
    try {
      const t0 = Date.now()
      const vm = await driver.start(spec)
      expect(vm).toMatchObject({ state: 'running' })
      console.log(`libvirt: running after ${Date.now() - t0} ms`)
      await waitFor(async () => (await readLog(driver.logPath(spec.name))).includes(BOOT_LINE), { timeoutMs: 60_000, intervalMs: 100, what: 'boot line' })
      console.log(`libvirt: boot line after ${Date.now() - t0} ms`)
      const t1 = Date.now()
      await driver.stop(spec.name, { timeoutMs: 20_000 })
      console.log(`libvirt: ACPI power-down took ${Date.now() - t1} ms`)
      expect(Date.now() - t1).toBeLessThan(20_000)
      expect(await driver.inspect(spec.name)).toMatchObject({ state: 'stopped' })
      await driver.destroy(spec.name)
      expect(await driver.inspect(spec.name)).toBeUndefined()
      expect(await exists(join(stateDir, 'vms', spec.name))).toBe(false)
      expect(() => execFileSync('ip', ['link', 'show', 'dev', spec.nics[0].tap], { stdio: 'ignore' })).toThrow()
    } finally {
      await driver.destroy(spec.name).catch(() => {})
      await rm(stateDir, { recursive: true, force: true })
    }
  }, 120_000)
})
