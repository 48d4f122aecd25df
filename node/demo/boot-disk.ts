/**
 * A bootable disk made from the tiny image (node/demo/tiny-image.ts): a FAT "superfloppy" with
 * SYSLINUX, the kernel and the initramfs, that SeaBIOS boots on its own. This is what a user adds
 * with `picocloud image add`, so the daemon's VMs boot from their disk like real ones; the kernel
 * command line may carry `pc.ip=…` for guests that need an address.
 *
 * Needs the Debian packages syslinux, mtools and dosfstools (CI installs them).
 */
import { access, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { check, realExec, type Exec } from '../exec.ts'
import { tinyImage, type TinyImage } from './tiny-image.ts'

export interface BootDisk { path: string, image: TinyImage }

export async function hasBootDiskTools (exec: Exec = realExec): Promise<string | undefined> {
  for (const tool of ['syslinux', 'mcopy', 'mkfs.vfat', 'qemu-system-x86_64']) {
    const r = await exec('sh', ['-c', `command -v ${tool}`]).catch(() => ({ code: 1 }))
    if (r.code !== 0) return `${tool} is not installed (Debian packages syslinux, mtools, dosfstools, qemu-system-x86)`
  }
  return undefined
}

/** Builds (once, cached beside the tiny image) a 48 MiB bootable raw disk. `append` is the kernel command line. */
export async function bootDisk (append = 'console=ttyS0 panic=-1 loglevel=4', exec: Exec = realExec): Promise<BootDisk> {
  const image = await tinyImage(exec)
  const key = createHash('sha256').update(append).digest('hex').slice(0, 16)
  const path = join(image.dir, `boot-${key}.raw`)
  try { await access(path); return { path, image } } catch {}
  const tmp = `${path}.${randomBytes(4).toString('hex')}`
  const cfg = `${tmp}.cfg`
  try {
    await check(exec, 'truncate', ['-s', '48M', tmp])
    await check(exec, 'mkfs.vfat', ['-n', 'PCBOOT', tmp])
    await writeFile(cfg, `DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  APPEND ${append}\n`)
    await check(exec, 'mcopy', ['-i', tmp, image.kernel, '::vmlinuz'])
    await check(exec, 'mcopy', ['-i', tmp, image.initrd, '::initrd.gz'])
    await check(exec, 'mcopy', ['-i', tmp, cfg, '::syslinux.cfg'])
    await check(exec, 'syslinux', ['--install', tmp])
    await rename(tmp, path)
  } finally {
    await rm(tmp, { force: true })
    await rm(cfg, { force: true })
  }
  return { path, image }
}
