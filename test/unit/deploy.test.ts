/**
 * deploy/: the example config documents every setting node/config.ts accepts (and parses), the
 * installer is valid bash and shows its steps, and the systemd unit keeps what the daemon needs.
 */
import { describe, it, expect } from 'vitest'
import { spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { KNOWN_KEYS, resolveConfig } from '../../node/config.ts'

const ROOT = resolve(import.meta.dirname, '../..')
const EXAMPLE = join(ROOT, 'deploy/config.example.toml')
const INSTALL = join(ROOT, 'deploy/install.sh')

/** `# key = value` lines: the documented settings, commented out (the defaults). */
function documented (text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const m = /^# ([a-z_]+) = (.+)$/.exec(line)
    if (m !== null) out.set(m[1], `${m[1]} = ${m[2]}`)
  }
  return out
}

describe('deploy/config.example.toml', () => {
  it('parses as it is (everything commented out: the defaults)', async () => {
    const c = await resolveConfig({ config: EXAMPLE }, {})
    expect(c.configFile).toBe(EXAMPLE)
    expect(c.metricsListen).toBeUndefined()
  })

  it('documents every key node/config.ts accepts, and no other', async () => {
    const keys = documented(await readFile(EXAMPLE, 'utf8'))
    expect([...KNOWN_KEYS].filter(k => !keys.has(k)), 'settings missing from the example').toEqual([])
    expect([...keys.keys()].filter(k => !KNOWN_KEYS.has(k)), 'example settings the daemon does not know').toEqual([])
  })

  it('every documented line, uncommented, is a valid setting', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pc-example-'))
    try {
      const file = join(dir, 'config.toml')
      await writeFile(file, [...documented(await readFile(EXAMPLE, 'utf8')).values()].join('\n') + '\n')
      const c = await resolveConfig({ config: file }, {})
      expect(c.name).toBe('roof-node')
      expect(c.metricsListen).toBe('127.0.0.1:9778')
      expect(c.labels).toEqual({ zone: 'roof', power: 'solar' })
      expect(c.capacity).toEqual({ vcpus: 4, memMiB: 7680, diskGiB: 100 })
      expect(c.socketGroup).toBe('picocloud')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('deploy/install.sh', () => {
  it('is valid bash', () => {
    const r = spawnSync('bash', ['-n', INSTALL], { encoding: 'utf8' })
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
  })

  it('prints its help', () => {
    const r = spawnSync('bash', [INSTALL, '--help'], { encoding: 'utf8' })
    expect(r.status).toBe(0)
    expect(r.stdout).toContain('--prefix DIR')
  })

  it('refuses unknown options and relative prefixes', () => {
    expect(spawnSync('bash', [INSTALL, '--bogus'], { encoding: 'utf8' }).status).toBe(2)
    expect(spawnSync('bash', [INSTALL, '--prefix', 'opt/x', '--dry-run'], { encoding: 'utf8' }).status).toBe(2)
  })

  it('--dry-run shows every step without doing it', () => {
    const prefix = join(tmpdir(), `pc-install-dry-${process.pid}`)
    const r = spawnSync('bash', [INSTALL, '--dry-run', '--no-packages', '--prefix', prefix], { encoding: 'utf8' })
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
    for (const step of ['npm ci', `ln -sfn ${prefix}/bin/picocloud /usr/local/bin/picocloud`, 'systemd-sysusers', '/etc/picocloud/config.example.toml', `s|/opt/picocloud|${prefix}|g`, 'systemctl enable picocloud.service']) {
      expect(r.stdout, step).toContain(step)
    }
    expect(spawnSync('test', ['-e', prefix]).status, 'nothing was installed').not.toBe(0)
  })
})

describe('deploy/picocloud.service', () => {
  it('runs the daemon as root with its directories, restarts on failure, and keeps VMs across restarts', async () => {
    const unit = await readFile(join(ROOT, 'deploy/picocloud.service'), 'utf8')
    const settings = new Map(unit.split('\n').filter(l => /^[A-Z]\w+=/.test(l)).map(l => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
    expect(settings.get('ExecStart')).toBe('/opt/picocloud/bin/picocloud daemon')
    expect(settings.get('Type')).toBe('simple')
    expect(settings.get('User')).toBe('root')
    expect(settings.get('RuntimeDirectory')).toBe('picocloud')
    expect(settings.get('RuntimeDirectoryMode')).toBe('0750')
    expect(settings.get('StateDirectory')).toBe('picocloud')
    expect(settings.get('StateDirectoryMode')).toBe('0700')
    expect(settings.get('ConfigurationDirectory')).toBe('picocloud')
    expect(settings.get('Restart')).toBe('on-failure')
    expect(settings.get('KillMode')).toBe('process')
    // Restrictions that would hide /dev/kvm or /dev/net/tun, or take CAP_NET_ADMIN away.
    for (const forbidden of ['PrivateDevices', 'DevicePolicy', 'DeviceAllow', 'PrivateNetwork', 'RestrictAddressFamilies', 'CapabilityBoundingSet', 'ProtectKernelTunables', 'MemoryDenyWriteExecute', 'ProtectClock', 'SystemCallFilter', 'DynamicUser']) {
      expect(settings.has(forbidden), forbidden).toBe(false)
    }
  })

  it('the sysusers.d file creates the socket group', async () => {
    expect(await readFile(join(ROOT, 'deploy/sysusers.d/picocloud.conf'), 'utf8')).toMatch(/^g picocloud -$/m)
  })
})
