/**
 * End to end, as a community network would run it: three hosts as network namespaces on a shared
 * underlay, each with its own daemon (separate processes, state dirs and sockets), wireguard-go and
 * QEMU under TCG with the tiny image. Hosts join one by one by exchanging peer keys; two users with
 * their own keys; host A trusts user 1, hosts B and C trust users 1 and 2 with quotas. User 1's two
 * VMs on A and C get their addresses by DHCP and ping each other across the encrypted overlay,
 * checked from inside the guest through its serial console. User 2's VM pinned to A is refused
 * (not trusted). C's daemon dies: A and B go on, and user 2's next VM is placed and started on B.
 * Everything is torn down at the end, also on failure.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { request } from 'node:http'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { createTopology, netnsUnavailableReason, wireguardUnavailableReason, type Topology } from '../helpers/netns.ts'
import { bootDisk, hasBootDiskTools } from '../../node/demo/boot-disk.ts'
import { BOOT_LINE } from '../../node/demo/tiny-image.ts'
import { waitFor } from '../helpers/wait.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'

const reason = await netnsUnavailableReason(['dnsmasq', 'qemu-system-x86_64']) ?? await wireguardUnavailableReason() ?? await hasBootDiskTools()
if (reason !== undefined) console.log(`skipping the end-to-end test: ${reason}`)

const NAMES = ['alpha', 'bravo', 'charlie']
const BOOT_MS = Number(process.env.PICOCLOUD_E2E_BOOT_MS ?? 240_000)

/** Types a command on a VM's serial console (through the daemon socket) until `until` shows up. */
async function onConsole (d: TestDaemon, vm: string, command: string, until: RegExp, timeoutMs: number): Promise<string> {
  return await new Promise<string>((resolve, reject) => {
    const req = request({ socketPath: d.socket, path: `/v1/vms/${vm}/console`, headers: { connection: 'Upgrade', upgrade: 'picocloud-console' } })
    req.on('response', res => reject(new Error(`console refused: HTTP ${res.statusCode ?? '?'}`)))
    req.on('upgrade', (_res, socket) => {
      let got = ''
      const deadline = setTimeout(() => { socket.destroy(); reject(new Error(`no ${String(until)} on ${vm}'s console after ${timeoutMs} ms:\n${got.slice(-2000)}`)) }, timeoutMs)
      socket.on('data', chunk => {
        got += chunk
        if (until.test(got)) { clearTimeout(deadline); socket.end(); resolve(got) }
      })
      socket.write(`\n${command}\n`)
    })
    req.on('error', reject)
    req.end()
  })
}

describe.skipIf(reason !== undefined)('picocloud end to end: three hosts, two users, VMs on an encrypted private network', () => {
  let topo: Topology
  let mesh: TestMesh
  let dir: string
  const d: TestDaemon[] = []
  const user: Array<{ keyring: string, keyFile: string }> = []

  const as = async (u: number, host: number, ...args: string[]) => await d[host].as(user[u].keyring, ...args)
  const vm = async (host: number, ref: string): Promise<VmView> => await d[host].api.call<VmView>('GET', `/v1/vms/${ref}`)
  const config = (i: number): string => [
    'network = "linux"', `wireguard_interface = "${topo.hosts[i].wgIfname}"`,
    'vcpus = 4', 'mem_mib = 2048', 'disk_gib = 100', 'heartbeat_interval = 0.5', 'reconnect_interval = 0.5'
  ].join('\n')

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pct-e2e-'))
    topo = await createTopology(3)
    mesh = await TestMesh.create()
    // Hosts come up and join one at a time: A founds the mesh, then each newcomer hands its peer
    // key to A's operator, is admitted, and joins through A.
    for (let i = 0; i < 3; i++) {
      d.push(await mesh.daemon(NAMES[i], config(i), {}, { netns: topo.hosts[i].ns, listen: `/ip4/${topo.hosts[i].underlayAddr}/tcp/9777` }))
      if (i === 0) {
        expect((await d[0].cli('init', '--name', 'e2e')).code).toBe(0)
        continue
      }
      const key = JSON.parse((await d[i].cli('--json', 'id')).stdout).peerId as string
      expect((await d[0].cli('admit', key, '--name', NAMES[i])).code).toBe(0)
      const j = await d[i].cli('join', (await d[0].id()).addresses[0])
      expect(j.code, j.stderr).toBe(0)
    }
    for (const [u, name] of ['one', 'two'].entries()) {
      const keyring = join(dir, `${name}-keyring`)
      expect((await d[0].as(keyring, 'key', 'generate', '--name', `user ${name}`, '--email', `${name}@example.org`)).code).toBe(0)
      const keyFile = join(dir, `${name}.asc`)
      await writeFile(keyFile, (await d[0].as(keyring, 'key', 'export')).stdout)
      user[u] = { keyring, keyFile }
    }
    expect((await d[0].cli('trust', 'add', user[0].keyFile)).code).toBe(0)
    for (const h of [1, 2]) {
      for (const u of [0, 1]) expect((await d[h].cli('trust', 'add', user[u].keyFile, '--max-vms', '3', '--max-mem', '2048')).code).toBe(0)
    }
    for (let i = 0; i < 3; i++) {
      await waitFor(async () => (await d[i].status()).network?.peers.length === 2, { timeoutMs: 60_000, what: `${NAMES[i]}'s WireGuard peers` })
    }
  }, 300_000)

  afterAll(async () => {
    await mesh?.stopAll()
    await topo?.cleanup() // QEMU, wireguard-go, dnsmasq: every process of the host namespaces
    for (const h of topo?.hosts ?? []) await rm(`/run/picocloud/net-${h.wgIfname}.pid`, { force: true })
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('every host lists all three hosts', async () => {
    for (let i = 0; i < 3; i++) {
      const hosts = JSON.parse((await d[i].cli('--json', 'hosts')).stdout) as Array<{ name: string, reachable: boolean }>
      expect(hosts.map(h => h.name).sort()).toEqual(NAMES)
    }
  })

  it('user 1: two VMs on A and C boot, get addresses by DHCP and ping each other across the encrypted overlay', async () => {
    const disk = (await bootDisk('console=ttyS0 panic=-1 loglevel=4 pc.ip=dhcp')).path
    const added = await as(0, 0, 'image', 'add', disk, '--name', 'tiny')
    expect(added.code, added.stderr).toBe(0)
    expect((await as(0, 0, 'net', 'create', 'lan', '--subnet', '10.60.0.0/24', '--mode', 'dhcp', '--gateway', 'none')).code).toBe(0)
    for (const [name, host] of [['g1', 'alpha'], ['g2', 'charlie']]) {
      const r = await as(0, 0, '--json', 'vm', 'create', name, '--image', 'tiny', '--cpus', '1', '--mem', '256', '--net', 'lan', '--on', host)
      expect(r.code, r.stderr).toBe(0)
      expect((JSON.parse(r.stdout) as RequestView).status).toBe('placed')
    }
    const ip = async (host: number, name: string): Promise<string> => {
      let log = ''
      try {
        return await waitFor(async () => {
          log = (await d[host].cli('vm', 'logs', name)).stdout
          return /picocloud-guest ip (\d+\.\d+\.\d+\.\d+)/.exec(log)?.[1]
        }, { timeoutMs: BOOT_MS, intervalMs: 1000, what: `${name} to boot and get its address` })
      } catch (err: any) {
        throw new Error(`${err.message as string}; its serial log ends with:\n${log.slice(-1500)}`)
      }
    }
    const [ip1, ip2] = [await ip(0, 'g1'), await ip(2, 'g2')]
    expect(ip1).toMatch(/^10\.60\.0\./)
    expect(ip2).toMatch(/^10\.60\.0\./)
    expect(ip1).not.toBe(ip2)
    expect((await d[0].cli('vm', 'logs', 'g1')).stdout).toContain(BOOT_LINE)
    // From inside g1 (on A), through its serial console: ping g2 (on C).
    const out = await onConsole(d[0], 'g1', `ping -c 3 -W 2 ${ip2}`, /\d+ packets received/, 60_000)
    expect(/(\d+) packets received/.exec(out)?.[1]).not.toBe('0')
    // And the other way round.
    const back = await onConsole(d[2], 'g2', `ping -c 3 -W 2 ${ip1}`, /\d+ packets received/, 60_000)
    expect(/(\d+) packets received/.exec(back)?.[1]).not.toBe('0')
  }, BOOT_MS * 2 + 120_000)

  it('user 2\'s VM pinned to A is rejected: A does not trust user 2', async () => {
    const r = await as(1, 1, '--json', 'vm', 'create', 'nope', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--on', 'alpha')
    expect(r.code).toBe(1)
    const out = JSON.parse(r.stdout) as RequestView
    expect(out.status).toBe('rejected')
    expect(out.reasons.find(x => x.hostName === 'alpha')?.reason).toBe('not-trusted')
  })

  it('C\'s daemon is killed: A and B go on, and a new VM is placed and started on B', async () => {
    await d[2].kill('SIGKILL')
    await waitFor(async () => {
      const hosts = JSON.parse((await d[0].cli('--json', 'hosts')).stdout) as Array<{ name: string, reachable: boolean }>
      return hosts.find(h => h.name === 'charlie')?.reachable === false
    }, { timeoutMs: 60_000, what: 'A to see C down' })
    // User 2 is trusted on B and C only; C is down, so B takes it (and fetches the image from A).
    const r = await as(1, 0, '--json', 'vm', 'create', 'after', '--image', 'tiny', '--cpus', '1', '--mem', '256')
    expect(r.code, r.stderr).toBe(0)
    expect((JSON.parse(r.stdout) as RequestView).status).toBe('placed')
    await waitFor(async () => { const v = await vm(0, 'after'); return v.hostName === 'bravo' && v.status === 'running' }, { timeoutMs: BOOT_MS, intervalMs: 1000, what: 'the new VM running on B' })
    await waitFor(async () => (await d[1].cli('vm', 'logs', 'after')).stdout.includes(BOOT_LINE), { timeoutMs: BOOT_MS, intervalMs: 1000, what: 'the new VM to boot on B' })
  }, BOOT_MS * 2 + 60_000)
})
