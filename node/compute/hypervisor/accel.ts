/**
 * Which accelerator QEMU should use: `kvm` when it really runs guests, else `tcg`.
 *
 * Opening /dev/kvm is not enough: under nested virtualisation KVM may create the VM and then hang
 * or crawl. The probe boots a 512-byte boot sector under `-accel kvm` that exits through
 * `isa-debug-exit`; it must finish within `timeoutMs` (TCG does it in ~0.1 s, working KVM in
 * well under 1 s). The verdict is cached per QEMU binary for the life of the process.
 */
import { access, constants, mkdtemp, readFile, writeFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import type { Exec } from '../../exec.ts'
import type { Logger } from '../../log.ts'

export type Accel = 'kvm' | 'tcg'

export interface AccelVerdict {
  accel: Accel
  reason: string
}

const cache = new Map<string, Promise<AccelVerdict>>()

/** mov al,0; out 0xf4,al; hlt; jmp $-1 — then the boot signature. */
function bootSector (): Buffer {
  const b = Buffer.alloc(512)
  Buffer.from([0xb0, 0x00, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(b)
  b[510] = 0x55
  b[511] = 0xaa
  return b
}

async function probe (exec: Exec, qemu: string, timeoutMs: number): Promise<AccelVerdict> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK)
  } catch (err) {
    return { accel: 'tcg', reason: `/dev/kvm is not usable: ${(err as Error).message}` }
  }
  if (!qemu.endsWith('x86_64')) return { accel: 'tcg', reason: `no KVM probe for ${qemu}` }
  // A /dev/kvm with no vmx/svm flag on the CPU (seen in sandboxes): it runs a trivial probe guest,
  // then hangs or fails real ones. Without the flag, KVM is not used.
  const flags = await readFile('/proc/cpuinfo', 'utf8').then(t => /^flags\s*:.*\b(vmx|svm)\b/m.test(t), () => true)
  if (!flags) return { accel: 'tcg', reason: '/dev/kvm exists but the CPU shows no vmx or svm flag (nested virtualisation not exposed)' }
  const dir = await mkdtemp(join(tmpdir(), 'pc-kvm-probe-'))
  try {
    const img = join(dir, 'boot.img')
    await writeFile(img, bootSector())
    const started = Date.now()
    const r = await exec(qemu, ['-accel', 'kvm', '-machine', 'pc', '-nodefaults', '-no-user-config', '-display', 'none',
      '-serial', 'none', '-monitor', 'none', '-device', 'isa-debug-exit,iobase=0xf4,iosize=1',
      '-drive', `file=${img.replaceAll(',', ',,')},format=raw,if=ide`], { timeoutMs })
    const ms = Date.now() - started
    // isa-debug-exit turns the guest's 0 into exit status (0 << 1) | 1 = 1.
    if (r.code === 1 && !/error/i.test(r.stderr)) return { accel: 'kvm', reason: `KVM probe guest ran in ${ms} ms` }
    if (r.code === -1 || ms >= timeoutMs) return { accel: 'tcg', reason: `KVM probe guest did not finish within ${timeoutMs} ms (nested KVM that hangs or crawls)` }
    return { accel: 'tcg', reason: `KVM probe failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-2).join(' ')}` }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** The accelerator to use with `qemu`, probed once per process. */
export async function detectAccel (exec: Exec, qemu: string, log: Logger, timeoutMs = 2000): Promise<AccelVerdict> {
  let p = cache.get(qemu)
  if (p === undefined) {
    p = probe(exec, qemu, timeoutMs).then(v => {
      if (v.accel === 'kvm') log.info('using KVM', { reason: v.reason })
      else log.warn('KVM unusable, using TCG (slow)', { reason: v.reason })
      return v
    })
    cache.set(qemu, p)
  }
  return await p
}

/**
 * KVM passed the probe but failed a real guest (an "emulation failure": nested virtualisation
 * without what the guest's boot code needs). From now on this process uses TCG for `qemu`.
 */
export function markKvmBroken (qemu: string, reason: string, log: Logger): void {
  log.warn('KVM failed a guest; using TCG (slow) from now on', { reason })
  cache.set(qemu, Promise.resolve({ accel: 'tcg', reason: `KVM failed a guest: ${reason}` }))
}

/** What QEMU writes when KVM cannot run the guest (the vCPU stops with status internal-error). */
export const KVM_FAILURE = /KVM internal error|emulation failure|kvm run failed/i
