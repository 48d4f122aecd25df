/**
 * A libvirtd (with virtlogd) for tests: reuses a running one, else starts both with their default
 * configuration and stops them afterwards. Sets /dev/kvm to root:kvm 0660 where no udev did (see
 * test/drivers/libvirt.test.ts for why libvirtd hangs otherwise).
 */
import { execFileSync } from 'node:child_process'
import { statSync } from 'node:fs'
import { access, readFile } from 'node:fs/promises'
import { waitFor } from './wait.ts'

function has (cmd: string): boolean {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); return true } catch { return false }
}
function running (daemon: string): boolean {
  try { execFileSync('pgrep', ['-x', daemon], { stdio: 'ignore' }); return true } catch { return false }
}

export function libvirtMissing (): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root'
  const missing = ['libvirtd', 'virtlogd', 'virsh', 'qemu-system-x86_64', 'qemu-img'].filter(c => !has(c))
  return missing.length > 0 ? `missing ${missing.join(', ')} (CI installs them: .ci/install-system-packages)` : undefined
}

/** Starts what is not running; returns a function that stops what it started. */
export async function ensureLibvirtd (): Promise<() => Promise<void>> {
  try {
    const st = statSync('/dev/kvm')
    if ((st.mode & 0o060) !== 0o060) {
      execFileSync('chgrp', ['kvm', '/dev/kvm'])
      execFileSync('chmod', ['0660', '/dev/kvm'])
    }
  } catch {}
  const started: number[] = []
  for (const [daemon, pidfile] of [['virtlogd', '/run/virtlogd.pid'], ['libvirtd', '/run/libvirtd.pid']]) {
    if (running(daemon)) continue
    execFileSync(daemon, ['-d'])
    started.push(await waitFor(async () => Number.parseInt(await readFile(pidfile, 'utf8').catch(() => ''), 10) || undefined, { what: `${daemon} pidfile` }))
  }
  await waitFor(() => { try { execFileSync('virsh', ['-c', 'qemu:///system', 'version'], { stdio: 'ignore', timeout: 5000 }); return true } catch { return false } }, { timeoutMs: 90_000, what: 'libvirtd to answer' })
  return async () => {
    for (const pid of started.reverse()) {
      try { process.kill(pid, 'SIGTERM') } catch {}
      await waitFor(async () => !(await access(`/proc/${pid}/cmdline`).then(() => true, () => false)) || (await readFile(`/proc/${pid}/stat`, 'utf8')).includes(') Z'), { timeoutMs: 15_000, what: `pid ${pid} to exit` })
    }
  }
}
