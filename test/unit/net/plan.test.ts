import { describe, it, expect } from 'vitest'
import nacl from 'tweetnacl'
import { planHost, diff } from '../../../node/network/plan.ts'
import type { ActualState, PlanInput, PlanNetwork } from '../../../node/network/plan.ts'
import { assignOverlayAddresses, assignVnis, bridgeName, vxlanName } from '../../../node/network/addressing.ts'
import { fakeNetworkDriver } from '../../../node/network/drivers/fake.ts'
import { reconcileNetwork } from '../../../node/network/reconcile.ts'

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const keys = ['A', 'B', 'C'].map(() => nacl.box.keyPair())
const peers = ['peer-a', 'peer-b', 'peer-c']
const addrs = assignOverlayAddresses('mesh', peers)
const members = peers.map((p, i) => ({ peerId: p, wgPublicKey: b64(keys[i].publicKey), endpoints: [`10.255.0.${i + 1}:51820`], overlayAddr: addrs.get(p)! }))
const net = (over: Partial<PlanNetwork> = {}): PlanNetwork => ({ id: 'net-1', name: 'lan', subnet4: '10.10.0.0/24', mode: 'static', hostsWithVms: ['peer-a', 'peer-c'], localTaps: [], ...over })
const input = (over: Partial<PlanInput> = {}): PlanInput => ({
  self: { peerId: 'peer-a', wgPrivateKey: b64(keys[0].secretKey), listenPort: 51820 },
  members,
  networks: [net({ localTaps: ['pc-tap1'] })],
  underlayMtu: 1500,
  ...over
})
const empty: ActualState = { links: [], fdb: [] }
const vni = assignVnis(['net-1']).get('net-1')!

describe('planHost', () => {
  it('describes the WireGuard interface, peers and networks of one host', () => {
    const d = planHost(input())
    expect(d.wireguard).toMatchObject({ ifname: 'pc-wg0', listenPort: 51820, mtu: 1440, address: `${addrs.get('peer-a')}/64` })
    expect(d.wireguard.peers.map(p => p.peerId)).toEqual(['peer-b', 'peer-c'])
    expect(d.wireguard.peers[0]).toMatchObject({ allowedIps: [`${addrs.get('peer-b')}/128`], keepalive: 25, endpoints: ['10.255.0.2:51820'] })
    expect(d.networks).toHaveLength(1)
    expect(d.networks[0]).toMatchObject({ vni, mtu: 1370, bridge: { ifname: bridgeName(vni) }, vxlan: { ifname: vxlanName(vni), local: addrs.get('peer-a'), port: 4789 }, fdb: [addrs.get('peer-c')], taps: ['pc-tap1'] })
  })
  it('uses the IPv6 WireGuard overhead when an endpoint is IPv6', () => {
    const m = members.map((x, i) => i === 1 ? { ...x, endpoints: ['[fd00::2]:51820'] } : x)
    expect(planHost(input({ members: m })).wireguard.mtu).toBe(1420)
    expect(planHost(input({ members: m })).networks[0].mtu).toBe(1350)
  })
  it('gives no devices for a network this host does not carry', () => {
    expect(planHost(input({ self: { ...input().self, peerId: 'peer-b' }, networks: [net()] })).networks).toEqual([])
  })
  it('rejects inconsistent input with BAD_NETWORK_PLAN', () => {
    const code = expect.objectContaining({ code: 'BAD_NETWORK_PLAN' })
    expect(() => planHost(input({ members: members.slice(1) }))).toThrow(code)
    expect(() => planHost(input({ members: [...members, { ...members[1], peerId: 'peer-d' }] }))).toThrow(code)
    expect(() => planHost(input({ networks: [net({ hostsWithVms: ['peer-a', 'peer-x'] })] }))).toThrow(code)
    expect(() => planHost(input({ networks: [net({ localTaps: ['pc-t'] }), net({ id: 'net-2', localTaps: ['pc-t'] })] }))).toThrow(code)
    expect(() => planHost(input({ wgIfname: 'wg0' }))).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
  })
})

describe('diff', () => {
  it('builds everything from nothing, in order, without leaking the private key into descriptions', () => {
    const d = planHost(input())
    const steps = diff(d, { links: [{ ifname: 'pc-tap1', ifindex: 5, kind: 'tun', mtu: 1500, up: false, addresses: [] }], fdb: [] })
    expect(steps.map(s => s.type)).toEqual([
      'wg.create', 'wg.configure', 'link.set', 'addr.add', 'link.set', 'wg.peer.set', 'wg.peer.set',
      'bridge.create', 'vxlan.create', 'link.set', 'link.set', 'link.set', 'link.set', 'link.set', 'fdb.add',
      'firewall.replace' // every network has its isolation rules
    ])
    expect(steps.find(s => s.type === 'link.set' && s.ifname === 'pc-tap1' && s.master !== undefined)).toMatchObject({ master: bridgeName(vni), mtu: 1370 })
    for (const s of steps) expect(s.description).not.toContain(d.wireguard.privateKey)
  })
  it('returns nothing when the actual state already matches (fake driver round trip)', async () => {
    const driver = fakeNetworkDriver()
    driver.addLink({ ifname: 'pc-tap1', kind: 'tun' })
    const first = await reconcileNetwork(driver, input())
    expect(first.length).toBeGreaterThan(0)
    const indexes = [...driver.links.values()].map(l => [l.ifname, l.ifindex])
    expect(await reconcileNetwork(driver, input())).toEqual([])
    expect([...driver.links.values()].map(l => [l.ifname, l.ifindex])).toEqual(indexes)
  })
  it('keeps a roamed endpoint that is one of the member endpoints, fixes a foreign one', async () => {
    const driver = fakeNetworkDriver()
    await reconcileNetwork(driver, input())
    const wg = driver.wireguard.get('pc-wg0')!
    const m = members.map((x, i) => i === 1 ? { ...x, endpoints: ['10.255.0.2:51820', '192.0.2.2:51820'] } : x)
    wg.peers[0].endpoint = '192.0.2.2:51820'
    expect(await reconcileNetwork(driver, input({ members: m }))).toEqual([])
    wg.peers[0].endpoint = '198.51.100.7:4000'
    const steps = await reconcileNetwork(driver, input({ members: m }))
    expect(steps).toMatchObject([{ type: 'wg.peer.set', endpoint: '10.255.0.2:51820' }])
  })
  it('adds and removes FDB entries as hosts come and go', async () => {
    const driver = fakeNetworkDriver()
    await reconcileNetwork(driver, input())
    const steps = await reconcileNetwork(driver, input({ networks: [net({ hostsWithVms: ['peer-a', 'peer-b'] })] }))
    expect(steps.map(s => [s.type, 'dst' in s ? s.dst : ''])).toEqual([
      ['fdb.remove', addrs.get('peer-c')], ['fdb.add', addrs.get('peer-b')]
    ])
  })
  it('removes peers that left, and only pc- bridges and VXLANs that are not desired', async () => {
    const driver = fakeNetworkDriver()
    driver.addLink({ ifname: 'pc-tap1', kind: 'tun' })
    await reconcileNetwork(driver, input())
    driver.addLink({ ifname: 'br-other', kind: 'bridge' })
    driver.addLink({ ifname: 'pc-vmtap', kind: 'tun' })
    const steps = await reconcileNetwork(driver, input({ members: members.slice(0, 2), networks: [] }))
    expect(steps.map(s => s.description)).toEqual([
      `delete vxlan ${vxlanName(vni)} (not desired)`,
      `delete bridge ${bridgeName(vni)} (not desired)`,
      expect.stringMatching(/^remove peer .* from pc-wg0 \(not a member\)$/),
      'delete nftables table inet pc-net (no network on this host)'
    ])
    expect([...driver.links.keys()].sort()).toEqual(['br-other', 'pc-tap1', 'pc-vmtap', 'pc-wg0'])
    expect(driver.links.get('pc-tap1')!.master).toBeUndefined()
  })
  it('recreates a VXLAN whose VNI or local address is wrong, and releases foreign ports', () => {
    const d = planHost(input())
    const n = d.networks[0]
    const actual: ActualState = {
      links: [
        { ifname: n.bridge.ifname, ifindex: 2, kind: 'bridge', mtu: 1370, up: true, mac: n.bridge.mac, addresses: [] },
        { ifname: n.vxlan.ifname, ifindex: 3, kind: 'vxlan', mtu: 1370, up: true, master: n.bridge.ifname, vxlan: { vni: n.vni, local: 'fd00::99', port: 4789 }, addresses: [] },
        { ifname: 'pc-stray', ifindex: 4, kind: 'tun', mtu: 1370, up: true, master: n.bridge.ifname, addresses: [] }
      ],
      fdb: [{ ifname: n.vxlan.ifname, dst: n.fdb[0] }]
    }
    const steps = diff({ ...d, wireguard: d.wireguard }, actual).filter(s => (!('ifname' in s) || !s.ifname.startsWith('pc-wg')) && s.type !== 'firewall.replace')
    expect(steps.map(s => s.description)).toEqual([
      `delete vxlan ${n.vxlan.ifname} (settings changed, will be recreated)`,
      `create VXLAN ${n.vxlan.ifname} VNI ${n.vni} local ${n.vxlan.local} port 4789 for network lan (VNI ${n.vni}), MTU 1370`,
      `${n.vxlan.ifname}: attach to ${n.bridge.ifname}`,
      `release pc-stray from bridge ${n.bridge.ifname} (not a tap of network lan (VNI ${n.vni}))`,
      `bring ${n.vxlan.ifname} up`,
      `flood network lan (VNI ${n.vni}) to host ${n.fdb[0]}`
    ])
  })
  it('fixes a wrong private key, port, MTU and stray address on the WireGuard interface', () => {
    const d = planHost(input())
    const actual: ActualState = {
      links: [{ ifname: 'pc-wg0', ifindex: 2, kind: 'tun', mtu: 1420, up: true, addresses: ['fd00:0:0:0::1/64', d.wireguard.address] }],
      wireguard: { ifname: 'pc-wg0', privateKey: b64(keys[1].secretKey), listenPort: 1, peers: [] },
      fdb: []
    }
    const steps = diff({ ...d, networks: [], firewall: undefined }, actual)
    expect(steps.map(s => s.description)).toEqual([
      'set private key and listen port 51820 on pc-wg0',
      'pc-wg0: MTU 1420 → 1440',
      'remove address fd00::1/64 from pc-wg0',
      expect.stringMatching(/^add peer peer-b/),
      expect.stringMatching(/^add peer peer-c/)
    ])
    expect(diff({ ...d, networks: [] }, empty)[0]).toMatchObject({ type: 'wg.create' })
  })
  it('the fake driver reports failures with NETWORK_DRIVER_ERROR', async () => {
    const driver = fakeNetworkDriver()
    driver.failOn = 'bridge.create'
    await expect(reconcileNetwork(driver, input())).rejects.toMatchObject({ code: 'NETWORK_DRIVER_ERROR' })
  })
})
