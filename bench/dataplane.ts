/**
 * Data-plane throughput (root): iperf3 TCP between two hosts in network namespaces over
 *   1. the bare underlay (veth + bridge),
 *   2. WireGuard alone (host overlay addresses),
 *   3. a private network: guest to guest over VXLAN over WireGuard,
 * with the same plan and Linux driver that the daemon uses.
 *
 * Usage: node bench/dataplane.ts [--seconds 5] [--json]
 */
import { parseArgs } from 'node:util'
import nacl from 'tweetnacl'
import { createTopology, netnsUnavailableReason, wireguardUnavailableReason, waitForOutput, stopChild } from '../test/helpers/netns.ts'
import type { Topology } from '../test/helpers/netns.ts'
import { check } from '../node/exec.ts'
import type { Exec } from '../node/exec.ts'
import { linuxNetworkDriver } from '../node/network/drivers/linux.ts'
import { reconcileNetwork } from '../node/network/reconcile.ts'
import { assignOverlayAddresses, networkMtu, wireguardMtu } from '../node/network/addressing.ts'
import type { PlanInput } from '../node/network/plan.ts'

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, json: { type: 'boolean', default: false } } })
const seconds = Number(values.seconds)
const UNDERLAY_MTU = 1500

const reason = await netnsUnavailableReason(['iperf3']) ?? await wireguardUnavailableReason()
if (reason !== undefined) {
  console.error(`cannot run the data-plane benchmark: ${reason}`)
  process.exit(2)
}

interface Result { path: string, mtu: number, gbitPerSecond: number, retransmits: number }

async function iperf (topo: Topology, serverNs: string, client: Exec, address: string): Promise<{ bps: number, retransmits: number }> {
  const server = topo.spawnIn(serverNs, 'iperf3', ['-s', '-1', '--forceflush', '-B', address])
  try {
    await waitForOutput(server, 'Server listening')
    const out = await check(client, 'iperf3', ['-c', address, '-t', String(seconds), '-J'], { timeoutMs: (seconds + 30) * 1000 })
    const report = JSON.parse(out) as { end: { sum_received: { bits_per_second: number }, sum_sent: { retransmits?: number } } }
    return { bps: report.end.sum_received.bits_per_second, retransmits: report.end.sum_sent.retransmits ?? 0 }
  } finally {
    await stopChild(server)
  }
}

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const topo = await createTopology(2)
const results: Result[] = []
let backend: string | undefined
try {
  const peers = ['peer-a', 'peer-c']
  const keys = peers.map(() => nacl.box.keyPair())
  const addrs = assignOverlayAddresses(`bench-${topo.prefix}`, peers)
  const members = peers.map((p, i) => ({ peerId: p, wgPublicKey: b64(keys[i].publicKey), endpoints: [`${topo.hosts[i].underlayAddr}:51820`], overlayAddr: addrs.get(p)! }))
  const mtu = networkMtu(UNDERLAY_MTU, false)
  const ga = await topo.addGuest(topo.hosts[0], { name: 'a', addr4: '10.20.0.1/24', mtu })
  const gc = await topo.addGuest(topo.hosts[1], { name: 'c', addr4: '10.20.0.3/24', mtu })
  const drivers = topo.hosts.map(h => linuxNetworkDriver({ exec: h.exec }))
  const input = (i: number): PlanInput => ({
    self: { peerId: peers[i], wgPrivateKey: b64(keys[i].secretKey), listenPort: 51820 },
    members,
    networks: [{ id: 'bench-net', name: 'bench', subnet4: '10.20.0.0/24', mode: 'static', hostsWithVms: peers, localTaps: [i === 0 ? ga.tap : gc.tap] }],
    underlayMtu: UNDERLAY_MTU,
    wgIfname: topo.hosts[i].wgIfname
  })
  await Promise.all(drivers.map(async (d, i) => await reconcileNetwork(d, input(i))))
  backend = drivers[0].backend()

  const [a, c] = topo.hosts
  const run = async (path: string, pathMtu: number, serverNs: string, client: Exec, address: string): Promise<void> => {
    const r = await iperf(topo, serverNs, client, address)
    results.push({ path, mtu: pathMtu, gbitPerSecond: Math.round(r.bps / 1e7) / 100, retransmits: r.retransmits })
  }
  await run('bare underlay (veth + bridge)', UNDERLAY_MTU, c.ns, a.exec, c.underlayAddr)
  await run(`WireGuard alone (${backend ?? '?'})`, wireguardMtu(UNDERLAY_MTU, false), c.ns, a.exec, addrs.get('peer-c')!)
  await run('guest to guest: VXLAN over WireGuard', mtu, gc.ns, ga.exec, '10.20.0.3')
} finally {
  await topo.cleanup()
}

if (values.json) {
  console.log(JSON.stringify({ seconds, backend, results }, null, 2))
} else {
  console.log(`iperf3 TCP, ${seconds} s each, one stream, WireGuard backend: ${backend ?? '?'}`)
  for (const r of results) console.log(`${r.path.padEnd(40)} MTU ${String(r.mtu).padStart(4)}  ${r.gbitPerSecond.toFixed(2).padStart(7)} Gbit/s  retransmits ${r.retransmits}`)
}
