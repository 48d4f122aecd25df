/**
 * A partition {A} | {B, C} under a `--ha restart` VM, for real: three daemons in three network
 * namespaces on one underlay bridge, QEMU guests, and the holder's port on the bridge taken down
 * for 3 × the lease, then brought back. QEMU processes of the VM on every host are sampled every
 * 100 ms: never two at once, and exactly one after the heal. The cut-off holder fences its copy
 * by itself; the majority side starts it; after the heal the old holder starts a new epoch and
 * does not start its copy again.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { realExec } from '../../node/exec.ts'
import type { VmView } from '../../node/control/views.ts'
import type { HostView } from '../../protocol/api.ts'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { createTopology, netnsUnavailableReason, type Topology } from '../helpers/netns.ts'
import { waitFor } from '../helpers/wait.ts'
import { makeUser } from '../helpers/users.ts'
import { hostsRunning, sampleCopies, imageElsewhere, type Sample } from '../helpers/vm-copies.ts'
import { bootDisk, hasBootDiskTools } from '../../node/demo/boot-disk.ts'

const reason = await netnsUnavailableReason() ?? await hasBootDiskTools()
if (reason !== undefined) console.log(`skipping the HA partition test: ${reason} (CI runs as root and installs them: .ci/install-system-packages)`)

const NAMES = ['alpha', 'bravo', 'charlie']
// Beats every second: lease 3 s, declared after 6 s of silence.
const LEASE_MS = 3000

describe.skipIf(reason !== undefined)('--ha restart across a partition (namespaces, QEMU)', () => {
  let topo: Topology
  let mesh: TestMesh
  let keyring: string
  const d: TestDaemon[] = []
  let copies: Sample[] = []
  let stopSampling = (): void => {}

  const vm = async (x: TestDaemon, ref: string): Promise<VmView> => await x.api.call<VmView>('GET', `/v1/vms/${ref}`)
  const running = async (vmName: string): Promise<string[]> => await hostsRunning(d, vmName)

  beforeAll(async () => {
    const disk = (await bootDisk()).path
    topo = await createTopology(3)
    mesh = await TestMesh.create()
    for (let i = 0; i < 3; i++) {
      const config = ['network = "none"', 'vcpus = 8', 'mem_mib = 4096', 'disk_gib = 200', 'heartbeat_interval = 1', 'reconnect_interval = 0.5'].join('\n')
      d.push(await mesh.daemon(NAMES[i], config, {}, { netns: topo.hosts[i].ns, listen: `/ip4/${topo.hosts[i].underlayAddr}/tcp/9777` }))
    }
    expect((await d[0].cli('init', '--name', 'hamesh')).code).toBe(0)
    const addr = (await d[0].id()).addresses[0]
    for (const x of d.slice(1)) {
      expect((await d[0].cli('admit', (await x.id()).peerId, '--name', x.name)).code).toBe(0)
      const j = await x.cli('join', addr)
      if (j.code !== 0) throw new Error(`join failed: ${j.stderr}\n${x.log}`)
    }
    const owner = await makeUser(d[0], mesh.dir, 'owner')
    keyring = owner.keyring
    for (const x of d) expect((await x.cli('trust', 'add', owner.keyFile)).code).toBe(0)
    const added = await d[0].as(keyring, 'image', 'add', disk, '--name', 'tiny')
    expect(added.code, added.stderr).toBe(0)
    await waitFor(async () => (await d[2].hosts()).every(h => h.reachable), { timeoutMs: 30_000, what: 'every host reachable' })
  }, 180_000)

  afterAll(async () => {
    stopSampling()
    await mesh?.stopAll()
    await topo?.cleanup() // QEMU and every other process of the namespaces
  }, 60_000)

  it('the cut-off holder fences, the majority runs the VM, and after the heal exactly one copy runs', async () => {
    const r = await d[0].as(keyring, 'vm', 'create', 'p1', '--image', 'tiny', '--cpus', '1', '--mem', '256', '--ha', 'restart')
    expect(r.code, r.stderr).toBe(0)
    await waitFor(async () => (await vm(d[0], 'p1')).status === 'running', { timeoutMs: 60_000, what: 'p1 running' })
    const v = await vm(d[0], 'p1')
    const name = `pc-${v.id.slice(0, 8)}`
    const a = NAMES.indexOf(v.hostName as string)
    const others = [0, 1, 2].filter(i => i !== a)
    ;({ samples: copies, stop: stopSampling } = sampleCopies(d, name))
    await waitFor(() => copies.length > 5, { what: 'samples' })
    expect(copies.at(-1)?.hosts).toEqual([NAMES[a]])

    await imageElsewhere(d[0], NAMES[a])
    const port = topo.hosts[a].underlayPort
    const cut = Date.now()
    const down = await realExec('ip', ['netns', 'exec', topo.underlayNs, 'ip', 'link', 'set', port, 'down'])
    expect(down.code, down.stderr).toBe(0)
    try {
      await waitFor(async () => {
        const w = await vm(d[others[0]], 'p1')
        return w.status === 'running' && w.hostName !== NAMES[a]
      }, { timeoutMs: 60_000, intervalMs: 100, what: 'p1 running on the majority side' }).catch(async err => {
        for (const i of others) {
          console.log(NAMES[i], JSON.stringify(await vm(d[i], 'p1')), JSON.stringify((await d[i].hosts()).map(h => [h.name, h.reachable, h.lost, h.declaredBy.length, h.epoch])))
          console.log(d[i].log.split('\n').filter(l => /lease|declar|epoch|claim|schedul|fenc|VM/.test(l)).slice(-30).join('\n'))
        }
        throw err
      })
      const after = copies.filter(c => c.at >= cut)
      const fenced = after.find(c => !c.hosts.includes(NAMES[a]))?.at ?? Infinity
      const started = after.find(c => c.hosts.some(h => h !== NAMES[a]))?.at ?? Infinity
      console.log(`partition: holder fenced after ${fenced - cut} ms, the majority started it after ${started - cut} ms`)
      expect(fenced).toBeLessThan(started)
      expect(fenced - cut).toBeLessThan(LEASE_MS + 1500)
      // The minority side sees it differently: its holder is not lost in its own eyes, but fenced.
      expect((await vm(d[a], 'p1')).status).toMatch(/fenced|placed|host-lost|pending/)
      await new Promise(resolve => setTimeout(resolve, Math.max(0, cut + 3 * LEASE_MS - Date.now())))
    } finally {
      await realExec('ip', ['netns', 'exec', topo.underlayNs, 'ip', 'link', 'set', port, 'up'])
    }
    const healed = Date.now()
    // The old holder hears the others again, learns it was lost, starts a new epoch.
    await waitFor(async () => ((await d[a].hosts()) as HostView[]).find(h => h.self)?.epoch === 1, { timeoutMs: 60_000, what: 'a new epoch on the old holder' })
    await waitFor(() => Date.now() - healed > 8000, { timeoutMs: 10_000, intervalMs: 500, what: '8 s after the heal' })
    const afterHeal = await running(name)
    if (afterHeal.length !== 1) {
      for (const x of d) {
        console.log(x.name, JSON.stringify(await vm(x, 'p1')), JSON.stringify((await x.hosts()).map(h => [h.name, h.reachable, h.lost, h.declaredBy.length, h.epoch])))
        console.log(x.log.split('\n').filter(l => /lease|declar|epoch|claim|schedul|fenc|VM|silent/.test(l)).slice(-40).join('\n'))
      }
    }
    expect(afterHeal).toHaveLength(1)
    expect(afterHeal[0]).not.toBe(NAMES[a])
    expect((await vm(d[a], 'p1')).status).toBe('running')
    const twice = copies.filter(c => c.hosts.length > 1)
    expect(twice, JSON.stringify(twice.slice(0, 3))).toEqual([])
    expect(copies.length).toBeGreaterThan(100)
  }, 240_000)
})
