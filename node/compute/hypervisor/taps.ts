/**
 * Tap devices of VM NICs, created before QEMU opens them (`ifname=…,script=no`) and removed when
 * the VM is destroyed. Only names starting `pc-t` are ever touched.
 */
import { check, type Exec } from '../../exec.ts'
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'

export async function linkExists (exec: Exec, dev: string): Promise<boolean> {
  return (await exec('ip', ['link', 'show', 'dev', dev])).code === 0
}

/** Creates the tap if missing, brings it up and attaches it to `bridge` if given. */
export async function ensureTap (exec: Exec, tap: string, bridge?: string): Promise<void> {
  if (!tap.startsWith('pc-t')) throw new PicocloudError(ErrorCode.BadVmSpec, `refusing to manage tap ${tap}: not a pc-t name`)
  if (!(await linkExists(exec, tap))) await check(exec, 'ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap'])
  if (bridge !== undefined) {
    if (!(await linkExists(exec, bridge))) {
      throw new PicocloudError(ErrorCode.VmStartFailed, `bridge ${bridge} for tap ${tap} does not exist (the network driver creates it)`, 409)
    }
    await check(exec, 'ip', ['link', 'set', 'dev', tap, 'master', bridge])
  }
  await check(exec, 'ip', ['link', 'set', 'dev', tap, 'up'])
}

/** Names of existing links that start with `prefix`. */
export async function linksWithPrefix (exec: Exec, prefix: string): Promise<string[]> {
  const out = await check(exec, 'ip', ['-o', 'link', 'show'])
  const names: string[] = []
  for (const line of out.split('\n')) {
    const m = /^\d+:\s+([^:@\s]+)/.exec(line)
    if (m !== null && m[1].startsWith(prefix)) names.push(m[1])
  }
  return names
}

export async function removeTap (exec: Exec, tap: string): Promise<void> {
  if (!tap.startsWith('pc-t')) return
  if (await linkExists(exec, tap)) {
    const r = await exec('ip', ['link', 'del', 'dev', tap])
    if (r.code !== 0 && await linkExists(exec, tap)) throw new PicocloudError(ErrorCode.Hypervisor, `cannot remove tap ${tap}: ${r.stderr.trim()}`, 500)
  }
}
