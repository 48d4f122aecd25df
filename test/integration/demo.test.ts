/**
 * `picocloud demo` runs start to end on this machine and leaves nothing behind: what it can do for
 * real it does, the rest it names as skipped.
 */
import { describe, it, expect } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT } from '../helpers/daemon.ts'

describe('picocloud demo', () => {
  it('narrates every step, finishes cleanly and cleans up', async () => {
    // Its own temp dir: another program's picocloud-demo-* folders in /tmp change nothing here.
    const tmp = await mkdtemp(join(tmpdir(), 'pct-demo-'))
    const { code, out } = await new Promise<{ code: number, out: string }>((resolve, reject) => {
      const p = spawn(process.execPath, [join(ROOT, 'node/cli/main.ts'), 'demo'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } })
      let out = ''
      p.stdout.on('data', d => { out += d })
      p.stderr.on('data', d => { out += d })
      p.on('error', reject)
      p.on('close', c => resolve({ code: c ?? 1, out }))
    })
    expect(code, out).toBe(0)
    expect(out).toMatch(/\$ picocloud init --name demo-mesh/)
    expect(out).toMatch(/\$ picocloud admit 12D3KooW/)
    expect(out).toMatch(/ninux-a: not-trusted/)
    expect(out).toMatch(/Demo finished: every step above ran for real\./)
    expect(out).toMatch(/SKIPPED: private networks across hosts/)
    // (The tiny guest image is cached there on purpose: picocloud-tiny-image-*.)
    const left = (await readdir(tmp)).filter(f => f.startsWith('picocloud-demo-'))
    await rm(tmp, { recursive: true, force: true })
    expect(left).toEqual([])
  }, 600_000)
})
