/**
 * The fence that works when the daemon does not: a tiny separate process that kills this host's
 * `--ha restart` VMs when the daemon stops renewing their lease. QEMU outlives the daemon (a crash,
 * `kill -9`, SIGSTOP, a blocked event loop), and the mesh restarts a lost host's VMs elsewhere once
 * the lease has run out (crdt/lease.ts), so something other than the daemon must kill them in
 * time — Proxmox uses the kernel's watchdog for this; a shell loop is enough here.
 *
 * The daemon writes one line per check: the milliseconds its lease still holds, and `pid:name`
 * of each VM under it. The loop kills them when that time has passed without a new line, or — if
 * the daemon is gone (end of input) — once the last time it granted is over. A pid is killed only
 * if /proc/<pid>/cmdline still names its VM (pids are reused). It runs in its own session, so a
 * signal to the daemon's process group does not reach it; with nothing to guard it exits at EOF.
 *
 * @example
 * const wd = new Watchdog(log)
 * wd.pet(4000, [{ pid: 4242, name: 'pc-0123abcd' }])
 * wd.close()   // the daemon stops: the VMs die when the granted time is over
 */
import { spawn, type ChildProcess } from 'node:child_process'
import type { Logger } from '../log.ts'

// Microsecond times from bash's own clock ($EPOCHREALTIME, no fork); printf is a builtin too.
const SCRIPT = String.raw`set -u
deadline=0; pids=""
secs () { printf -v to '%d.%06d' $(($1/1000000)) $(($1%1000000)); }
while :; do
  if [ -z "$pids" ]; then to=3600; else
    rem=$(( deadline - ${'$'}{EPOCHREALTIME/./} )); [ "$rem" -le 0 ] && break; secs "$rem"
  fi
  if IFS=' ' read -r -t "$to" ms rest; then
    deadline=$(( ${'$'}{EPOCHREALTIME/./} + ms * 1000 )); pids="$rest"
  else
    [ $? -gt 128 ] && continue
    [ -z "$pids" ] && exit 0
    rem=$(( deadline - ${'$'}{EPOCHREALTIME/./} )); if [ "$rem" -gt 0 ]; then secs "$rem"; sleep "$to"; fi
    break
  fi
done
for pn in $pids; do
  pid=${'$'}{pn%%:*}; name=${'$'}{pn#*:}
  if tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -qE -- "-name $name( |,)"; then kill -9 "$pid" && echo "fenced $name (pid $pid)"; fi
done
`

export interface Guarded { pid: number, name: string }

export class Watchdog {
  private proc?: ChildProcess
  private readonly log: Logger

  constructor (log: Logger) {
    this.log = log
  }

  /** The lease holds `ms` more for these VMs (an empty list: nothing to guard). */
  pet (ms: number, vms: readonly Guarded[]): void {
    if (vms.length === 0 && this.proc === undefined) return
    const p = this.proc ?? this.spawn()
    const line = `${Math.max(0, Math.floor(Math.min(ms, 3_600_000)))} ${vms.map(v => `${v.pid}:${v.name}`).join(' ')}\n`
    p.stdin?.write(line)
  }

  private spawn (): ChildProcess {
    const p = spawn('bash', ['-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'], detached: true })
    p.stdout?.on('data', d => { this.log.warn('watchdog', { said: String(d).trim() }) })
    p.stderr?.on('data', d => { this.log.warn('watchdog error', { said: String(d).trim() }) })
    p.stdin?.on('error', () => {})
    p.on('exit', () => { if (this.proc === p) this.proc = undefined })
    p.unref()
    this.proc = p
    return p
  }

  /** The daemon stops: what was granted runs out, then the guarded VMs are killed. */
  close (): void {
    this.proc?.stdin?.end()
    this.proc = undefined
  }
}
