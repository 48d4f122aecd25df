/**
 * Where the copies of a VM run, for the availability tests and the recovery benchmark: each
 * host's pidfile of the VM, checked against /proc (the VM's name is the same on every host), and
 * a sampler that records the hosts running a copy every 100 ms.
 */
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { TestDaemon } from './daemon.ts'
import { waitFor } from './wait.ts'

/** True when `pid` is a live (not zombie) QEMU started for VM `vmName`. */
export async function isQemuOf (pid: number, vmName: string): Promise<boolean> {
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  return cmd.includes(`-name\0${vmName},`) && !/\) Z /.test(stat)
}

async function pidOf (d: TestDaemon, vmName: string): Promise<number | undefined> {
  const pid = Number((await readFile(join(d.state, 'vms', vmName, 'qemu.pid'), 'utf8').catch(() => '')).trim())
  return pid > 0 && await isQemuOf(pid, vmName) ? pid : undefined
}

/** The hosts (by name) where a QEMU of `vmName` runs now. */
export async function hostsRunning (daemons: readonly TestDaemon[], vmName: string): Promise<string[]> {
  const out: string[] = []
  for (const d of daemons) if (await pidOf(d, vmName) !== undefined) out.push(d.name)
  return out
}

/** Every live QEMU of any VM on a host. */
export async function qemuPidsOf (d: TestDaemon): Promise<number[]> {
  const out: number[] = []
  for (const name of await readdir(join(d.state, 'vms')).catch(() => [] as string[])) {
    const pid = await pidOf(d, name)
    if (pid !== undefined) out.push(pid)
  }
  return out
}

export interface Sample { at: number, hosts: string[] }

/** Records `hostsRunning` every 100 ms (a slow read skips a tick, never overlaps) until `stop`. */
export function sampleCopies (daemons: readonly TestDaemon[], vmName: string): { samples: Sample[], stop: () => void } {
  const samples: Sample[] = []
  let busy = false
  const timer = setInterval(() => {
    if (busy) return
    busy = true
    void hostsRunning(daemons, vmName).then(hosts => { samples.push({ at: Date.now(), hosts }) }).finally(() => { busy = false })
  }, 100)
  return { samples, stop: () => { clearInterval(timer) } }
}

/** Waits until image `name` is on a host other than `holder` (the next host in line fetches it ahead). */
export async function imageElsewhere (d: TestDaemon, holder: string, name = 'tiny'): Promise<void> {
  await waitFor(async () => (await d.api.call<Array<{ name: string, holders: string[] }>>('GET', '/v1/images')).find(i => i.name === name)?.holders.some(h => h !== holder) === true,
    { timeoutMs: 30_000, what: `image ${name} on a host other than ${holder}` })
}
