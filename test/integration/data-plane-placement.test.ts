/**
 * Placement knows the data plane: hosts that build no private networks (`network = "none"`, or no
 * root/WireGuard) say so in their record, and a VM with a NIC is never placed there — the request
 * is rejected with that reason on every such host — while a VM without one is.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { makeUser, type User } from '../helpers/users.ts'
import type { RequestView } from '../../node/control/views.ts'
import type { HostView } from '../../protocol/api.ts'

const CONFIG = 'hypervisor = "none"\nnetwork = "none"\nvcpus = 8\nmem_mib = 8192\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

describe('placement and the data plane', () => {
  let mesh: TestMesh
  let a: TestDaemon, b: TestDaemon
  let dir: string
  let user: User

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-dpp-'))
    mesh = await TestMesh.create()
    ;[a, b] = await mesh.form(['alpha', 'bravo'], CONFIG)
    user = await makeUser(a, dir, 'netuser')
    for (const d of [a, b]) expect((await d.cli('trust', 'add', user.keyFile)).code).toBe(0)
  }, 60_000)
  afterAll(async () => {
    await mesh?.stopAll()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('hosts without a data plane publish it, and a VM with a NIC is rejected with that reason; one without is placed', async () => {
    const net = await a.as(user.keyring, 'net', 'create', 'lan', '--subnet', '10.77.0.0/24')
    expect(net.code, net.stderr).toBe(0)
    const r = await a.as(user.keyring, '--json', 'vm', 'create', 'wired', '--image', 'tiny', '--type', 'small', '--net', 'lan')
    expect(r.code).toBe(1)
    const out = JSON.parse(r.stdout) as RequestView
    expect(out.status).toBe('rejected')
    expect(out.reasons.map(x => [x.hostName, x.reason]).sort()).toEqual([['alpha', 'no-data-plane'], ['bravo', 'no-data-plane']])
    expect(out.reasons[0].detail).toMatch(/builds no private networks/)
    const bare = await a.as(user.keyring, 'vm', 'create', 'bare', '--image', 'tiny', '--type', 'small')
    expect(bare.code, bare.stderr).toBe(0)
    const hosts = JSON.parse((await b.cli('--json', 'hosts')).stdout) as HostView[]
    expect(hosts.map(h => [h.networks, h.hypervisor])).toEqual([[false, 'none'], [false, 'none']])
    // net create's default is what its help says: DHCP (the request format's own default is static).
    const lan = JSON.parse((await a.cli('--json', 'net', 'list')).stdout) as Array<{ name: string, mode: string, gateway: unknown }>
    expect(lan).toMatchObject([{ name: 'lan', mode: 'dhcp', gateway: 'host-nat' }])
    const v6 = await a.as(user.keyring, 'net', 'create', 'v6', '--subnet6', 'fd77::/64', '--mode', 'slaac', '--gateway', 'host-nat')
    expect(v6.code).toBe(1)
    expect(v6.stderr).toMatch(/host-nat NATs IPv4 out of the hosts and needs an IPv4 subnet/)
    expect((await a.as(user.keyring, 'net', 'create', 'v6', '--subnet6', 'fd77::/64', '--mode', 'slaac')).code).toBe(0)
    expect((JSON.parse((await a.cli('--json', 'net', 'list')).stdout) as Array<{ name: string, gateway: unknown }>).find(n => n.name === 'v6')?.gateway).toBe('none')
    // `id` on a member: its addresses (never loopback first when there is another) and no join hint.
    const id = (await a.cli('id')).stdout
    expect(id).toMatch(/This host is in mesh .*: a newcomer joins through one of the addresses above/)
    expect(id).not.toMatch(/To join a mesh/)
    expect((await b.cli('hosts')).stdout).toMatch(/REACHABLE +LAST SEEN +VMS +NETWORKS[\s\S]*alpha .* none +no /)
  })
})
