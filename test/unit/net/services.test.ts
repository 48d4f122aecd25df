import { describe, it, expect } from 'vitest'
import nacl from 'tweetnacl'
import { planHost } from '../../../node/network/plan.ts'
import type { PlanInput, PlanNetwork, PlanVm } from '../../../node/network/plan.ts'
import { assignOverlayAddresses } from '../../../node/network/addressing.ts'
import { fakeNetworkDriver } from '../../../node/network/drivers/fake.ts'
import { parseNftTable } from '../../../node/network/drivers/linux.ts'
import { reconcileNetwork } from '../../../node/network/reconcile.ts'
import { renderFirewall } from '../../../node/network/services.ts'
import { meshDomain } from '../../../node/network/reconciler.ts'

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const keys = ['A', 'B', 'C'].map(() => nacl.box.keyPair())
const peers = ['peer-a', 'peer-b', 'peer-c']
const addrs = assignOverlayAddresses('mesh', peers)
const members = peers.map((p, i) => ({ peerId: p, wgPublicKey: b64(keys[i].publicKey), endpoints: [`10.255.0.${i + 1}:51820`], overlayAddr: addrs.get(p)! }))
const vms: PlanVm[] = [
  { id: 'vm-1', name: 'web', mac: '02:00:00:00:00:01', hostPeerId: 'peer-a', created: 1 },
  { id: 'vm-2', name: 'db', mac: '02:00:00:00:00:02', hostPeerId: 'peer-c', created: 2 },
  { id: 'vm-3', name: 'fw', mac: '02:00:00:00:00:03', ip: '10.10.0.3', hostPeerId: 'peer-c', created: 3 }
]
const net = (over: Partial<PlanNetwork> = {}): PlanNetwork => ({
  id: 'net-1', name: 'lan', subnet4: '10.10.0.0/24', mode: 'dhcp', gateway: 'host-nat', hostsWithVms: ['peer-a', 'peer-c'], localTaps: ['pc-tap1'], vms, ...over
})
const input = (over: Partial<PlanInput> = {}, self = 0): PlanInput => ({
  self: { peerId: peers[self], wgPrivateKey: b64(keys[self].secretKey), listenPort: 51820 },
  members,
  networks: [net()],
  underlayMtu: 1500,
  runtimeDir: '/run/pc/net',
  ...over
})
const code = expect.objectContaining({ code: 'BAD_NETWORK_PLAN' })
const lan = (i: PlanInput) => planHost(i).networks[0]

describe('planHost: network services', () => {
  it('dhcp + host-nat: static leases for this host\'s VMs only, own address as router, MTU, NAT', () => {
    const a = lan(input())
    const c = lan(input({}, 2))
    expect(a.vmAddresses4).toEqual(c.vmAddresses4)
    expect(a.vmAddresses4['vm-3']).toBe('10.10.0.3')
    expect(a.gateway4).not.toBe(c.gateway4)
    expect(a.bridgeAddresses).toEqual([`${a.gateway4}/24`])
    const conf = a.dnsmasq!.config
    expect(a.dnsmasq!.dir).toBe('/run/pc/net/net-1')
    expect(conf).toContain(`interface=${a.bridge.ifname}\nbind-interfaces\nexcept-interface=lo\nport=0\n`)
    expect(conf).toContain('dhcp-range=10.10.0.0,static,255.255.255.0,1h\ndhcp-ignore=tag:!known\n')
    expect(conf).toContain('dhcp-option=option:mtu,1370\n')
    expect(conf).toContain(`dhcp-option=option:router,${a.gateway4}\n`)
    expect(conf).toContain(`dhcp-host=02:00:00:00:00:01,${a.vmAddresses4['vm-1']}\n`)
    expect(conf).not.toContain('02:00:00:00:00:02') // C's VM: C answers it
    expect(conf).not.toContain('enable-ra')
    expect(c.dnsmasq!.config).toContain(`dhcp-host=02:00:00:00:00:02,${c.vmAddresses4['vm-2']}\n`)
    const d = planHost(input())
    expect(d.ipv4Forwarding).toBe(true)
    expect(d.firewall!.ruleset).toContain(`ip saddr 10.10.0.0/24 oifname != "${a.bridge.ifname}" masquerade`)
    expect(d.firewall!.ruleset).toContain(`iifname "${a.bridge.ifname}" udp dport 67 accept`)
    expect(d.firewall!.rules).toEqual({ input: 4, forward: 6, postrouting: 1 })
  })
  it('names: with the mesh\'s domain, dnsmasq answers every VM of the network (on any host) by three names, forwards nothing of the domain, and the firewall lets DNS in', () => {
    const a = lan(input({ domain: 'roofnet' }))
    const conf = a.dnsmasq!.config
    expect(conf).toContain('port=53\nlocal=/roofnet/\ndomain=lan.roofnet\n')
    expect(conf).not.toContain('port=0')
    expect(conf).not.toContain('dhcp-option=6') // dnsmasq hands its own address out as the resolver
    expect(conf).toContain(`host-record=web.lan.roofnet,web.lan,web,${a.vmAddresses4['vm-1']}\n`)
    expect(conf).toContain(`host-record=db.lan.roofnet,db.lan,db,${a.vmAddresses4['vm-2']}\n`) // on host C
    expect(conf).toContain('host-record=fw.lan.roofnet,fw.lan,fw,10.10.0.3\n')
    // Every host answers the same names.
    expect(lan(input({ domain: 'roofnet' }, 2)).dnsmasq!.config).toContain(`host-record=web.lan.roofnet,web.lan,web,${a.vmAddresses4['vm-1']}\n`)
    const fw = planHost(input({ domain: 'roofnet' })).firewall!
    expect(fw.ruleset).toContain(`iifname "${a.bridge.ifname}" meta l4proto { tcp, udp } th dport 53 accept`)
    // Without a domain: no DNS at all (as before), and no port 53 in the firewall.
    expect(lan(input()).dnsmasq!.config).toContain('port=0\nno-resolv\n')
    expect(planHost(input()).firewall!.ruleset).not.toContain('dport 53')
    // A static network runs no dnsmasq: no names there.
    expect(lan(input({ domain: 'roofnet', networks: [net({ mode: 'static', gateway: 'none', vms: vms.filter(v => v.ip !== undefined) })] })).dnsmasq).toBeUndefined()
  })

  it('dhcpv6: every VM of the network gets an IPv6 address from the mesh (the same on every host), handed out by DHCPv6 to this host\'s VMs, with a managed RA', () => {
    const v6vms: PlanVm[] = [...vms, { id: 'vm-4', name: 'ns', mac: '02:00:00:00:00:04', ip6: 'fd40::53', hostPeerId: 'peer-a', created: 4 }]
    const n6 = net({ subnet6: 'fd40::/64', mode: 'dhcpv6', vms: v6vms })
    const a = lan(input({ networks: [n6], domain: 'roofnet' }))
    const c = lan(input({ networks: [n6], domain: 'roofnet' }, 2))
    expect(a.vmAddresses6).toEqual(c.vmAddresses6)
    expect(Object.keys(a.vmAddresses6).sort()).toEqual(['vm-1', 'vm-2', 'vm-3', 'vm-4'])
    expect(a.vmAddresses6['vm-4']).toBe('fd40::53') // static wins
    for (const ip of Object.values(a.vmAddresses6)) expect(ip).toMatch(/^fd40::/)
    expect(new Set(Object.values(a.vmAddresses6)).size).toBe(4)
    // IPv4 as in dhcp mode.
    expect(a.vmAddresses4).toMatchObject(lan(input()).vmAddresses4)
    const conf = a.dnsmasq!.config
    expect(conf).toContain('dhcp-range=fd40::,static,64,1h')
    expect(conf).not.toContain('ra-only')
    expect(conf).toContain(`dhcp-host=02:00:00:00:00:01,[${a.vmAddresses6['vm-1']}]`)
    expect(conf).not.toContain('02:00:00:00:00:02,[') // C's VM: C answers it
    expect(c.dnsmasq!.config).toContain(`dhcp-host=02:00:00:00:00:02,[${c.vmAddresses6['vm-2']}]`)
    // Names carry the IPv6 address too.
    expect(conf).toContain(`host-record=web.lan.roofnet,web.lan,web,${a.vmAddresses4['vm-1']},${a.vmAddresses6['vm-1']}`)
    expect(planHost(input({ networks: [n6] })).firewall!.ruleset).toContain('udp dport 547 accept')
    // A new VM does not move the others' addresses.
    const more = lan(input({ networks: [net({ subnet6: 'fd40::/64', mode: 'dhcpv6', vms: [...v6vms, { id: 'vm-0', name: 'new', mac: '02:00:00:00:00:09', hostPeerId: 'peer-a', created: 9 }] })] }))
    for (const id of ['vm-1', 'vm-2', 'vm-3', 'vm-4']) expect(more.vmAddresses6[id]).toBe(a.vmAddresses6[id])
  })

  it('the mesh\'s name becomes a DNS label', () => {
    expect(meshDomain('roofnet')).toBe('roofnet')
    expect(meshDomain('Ninux Roma!')).toBe('ninux-roma')
    expect(meshDomain('--')).toBe('mesh')
    expect(meshDomain('')).toBe('mesh')
    expect(meshDomain('a'.repeat(80))).toHaveLength(63)
    expect(meshDomain('x\nhost-record=evil,1.2.3.4')).toBe('x-host-record-evil-1-2-3-4')
  })

  it('isolates every network on the host: nothing is routed between two, nor from or into one but host-nat and its replies', () => {
    const two = planHost(input({ networks: [net(), net({ id: 'net-2', name: 'lan2', subnet4: '10.20.0.0/24', mode: 'static', gateway: 'none', vms: [], localTaps: ['pc-tap2'] })] }))
    const [b1, b2] = two.networks.map(n => `"${n.bridge.ifname}"`)
    expect(two.networks[1].bridgeAddresses).toEqual([]) // no address on lan2: still its rules
    const rules = two.firewall!.ruleset
    const forward = rules.slice(rules.indexOf('chain forward')).split('\n').map(l => l.trim())
    const at = (rule: string): number => { const i = forward.indexOf(rule); expect(i, rule).toBeGreaterThan(-1); return i }
    // Inside one network (bridged frames under br_netfilter) first, then another network: dropped,
    // before host-nat's accept could let it through and masquerade it.
    expect(at(`iifname ${b1} oifname ${b1} accept`)).toBeLessThan(at(`iifname ${b1} oifname "pc-br*" drop`))
    expect(at(`iifname ${b1} oifname "pc-br*" drop`)).toBeLessThan(at(`iifname ${b1} ip saddr 10.10.0.0/24 accept`))
    expect(at(`iifname ${b1} ip saddr 10.10.0.0/24 accept`)).toBeLessThan(at(`iifname ${b1} drop`))
    for (const b of [b2]) {
      expect(at(`iifname ${b} oifname "pc-br*" drop`)).toBeLessThan(at(`iifname ${b} drop`))
      at(`oifname ${b} drop`)
    }
    expect(two.firewall!.ruleset).not.toMatch(/iifname "pc-br[0-9a-f]+" ip saddr 10\.20/)
    // A host that carries only a network without addresses still gets the table.
    const bare = planHost(input({ networks: [net({ mode: 'static', gateway: 'none', vms: [] })] }))
    expect(bare.networks[0].bridgeAddresses).toEqual([])
    expect(bare.firewall!.rules).toEqual({ forward: 4 })
  })
  it('gateway none sends no router; gateway { vm } sends that VM\'s address; neither NATs', () => {
    const none = planHost(input({ networks: [net({ gateway: 'none' })] }))
    expect(none.networks[0].dnsmasq!.config).toContain('dhcp-option=3\n')
    expect(none.networks[0].gateway4).toBeUndefined()
    expect(none.ipv4Forwarding).toBe(false)
    expect(none.firewall!.ruleset).not.toContain('masquerade') // the host guard stays: it has an address
    const viaVm = planHost(input({ networks: [net({ gateway: { vm: 'fw' } })] }))
    expect(viaVm.networks[0].gateway4).toBe('10.10.0.3')
    expect(viaVm.networks[0].dnsmasq!.config).toContain('dhcp-option=option:router,10.10.0.3\n')
    expect(viaVm.firewall!.ruleset).not.toContain('masquerade')
    expect(lan(input({ networks: [net({ gateway: { vm: 'vm-2' } })] })).gateway4).toBe(lan(input()).vmAddresses4['vm-2'])
  })
  it('slaac: RA with prefix, MTU and router lifetime 0 from a per-host address and link-local', () => {
    const n = lan(input({ networks: [net({ mode: 'slaac', subnet4: undefined, subnet6: 'fd20::/64', gateway: 'none', vms: [] })] }))
    expect(n.bridgeAddresses).toHaveLength(2)
    expect(n.bridgeAddresses[0]).toMatch(/^fd20::[0-9a-f:]+\/64$/)
    expect(n.bridgeAddresses[1]).toMatch(/^fe80::[0-9a-f:]+\/64$/)
    expect(n.bridgeAddresses[0].replace('fd20', 'fe80')).toBe(n.bridgeAddresses[1])
    expect(n.dnsmasq!.config).toContain(`enable-ra\ndhcp-range=fd20::,ra-only,64,1h\nra-param=${n.bridge.ifname},mtu:1370,60,0\n`)
    expect(n.dnsmasq!.config).not.toContain('dhcp-range=10.')
    const other = lan(input({ networks: [net({ mode: 'slaac', subnet4: undefined, subnet6: 'fd20::/64', gateway: 'none', vms: [] })] }, 2))
    expect(other.bridgeAddresses[0]).not.toBe(n.bridgeAddresses[0])
  })
  it('static: checks addresses, serves nothing, gives the host no address', () => {
    const d = planHost(input({ networks: [net({ mode: 'static', gateway: 'none' })] }))
    expect(d.networks[0]).toMatchObject({ bridgeAddresses: [], vmAddresses4: { 'vm-3': '10.10.0.3' } })
    expect(d.networks[0].dnsmasq).toBeUndefined()
    expect(d.firewall!.rules).toEqual({ forward: 4 }) // isolation only: no host guard, no NAT
    expect(() => planHost(input({ networks: [net({ mode: 'static', vms: [...vms, { id: 'vm-9', mac: '02:00:00:00:00:09', ip: '10.10.0.3', hostPeerId: 'peer-a' }] })] }))).toThrow(code)
  })
  it('does not serve or NAT networks this host does not carry', () => {
    const d = planHost(input({ networks: [net({ localTaps: [] })] }, 1))
    expect(d.networks).toEqual([])
    expect(d.firewall).toBeUndefined()
    expect(d.ipv4Forwarding).toBe(false)
  })
  it('rejects bad input with BAD_NETWORK_PLAN and a message naming the problem', () => {
    const bad = (over: Partial<PlanNetwork>, extra: PlanNetwork[] = []) => () => planHost(input({ networks: [net(over), ...extra] }))
    expect(bad({ vms: [...vms, { id: 'vm-9', mac: '02:00:00:00:00:09', ip: '10.11.0.3', hostPeerId: 'peer-a' }] })).toThrow(expect.objectContaining({ message: expect.stringContaining('outside the subnet') }))
    expect(bad({ vms: [...vms, { id: 'vm-9', mac: '02:00:00:00:00:01', hostPeerId: 'peer-a' }] })).toThrow(expect.objectContaining({ message: expect.stringContaining('same MAC') }))
    expect(bad({ vms: [...vms, { id: 'vm-9', mac: '03:00:00:00:00:09', hostPeerId: 'peer-a' }] })).toThrow(expect.objectContaining({ message: expect.stringContaining('multicast') }))
    expect(bad({ gateway: { vm: 'nope' } })).toThrow(expect.objectContaining({ message: expect.stringContaining('not on this network') }))
    expect(bad({ gateway: 'host-nat', subnet4: undefined, subnet6: 'fd20::/64' })).toThrow(expect.objectContaining({ message: expect.stringContaining('needs a subnet4') }))
    expect(bad({ mode: 'slaac', subnet6: undefined })).toThrow(expect.objectContaining({ message: expect.stringContaining('needs a subnet6') }))
    expect(bad({ mode: 'slaac', subnet6: 'fd20::/56' })).toThrow(expect.objectContaining({ message: expect.stringContaining('/64') }))
    expect(bad({ subnet4: '10.10.0.1/24' })).toThrow(code)
    expect(bad({}, [net({ id: 'net-2', name: 'lan2', subnet4: '10.10.0.128/25', localTaps: ['pc-tap2'], vms: [] })])).toThrow(expect.objectContaining({ message: expect.stringMatching(/lan .*and lan2 .*overlap/) }))
    // The same subnet on two static networks (no host address) is fine: they are separate L2s.
    expect(() => planHost(input({ networks: [net({ mode: 'static', gateway: 'none' }), net({ id: 'net-2', mode: 'static', gateway: 'none', localTaps: ['pc-tap2'] })] }))).not.toThrow()
    expect(() => planHost(input({ runtimeDir: undefined }))).toThrow(expect.objectContaining({ message: expect.stringContaining('runtimeDir') }))
  })
  it('names service directories safely', () => {
    const d = lan(input({ networks: [net({ id: '../../etc' })] }))
    expect(d.dnsmasq!.dir).toMatch(/^\/run\/pc\/net\/h-[0-9a-f]{16}$/)
  })
})

describe('reconcile: network services with the fake driver', () => {
  it('starts, keeps, restarts only on change, and removes dnsmasq and the table', async () => {
    const driver = fakeNetworkDriver()
    driver.addLink({ ifname: 'pc-tap1', kind: 'tun' })
    const first = await reconcileNetwork(driver, input())
    expect(first.filter(s => !('ifname' in s) || !s.ifname.startsWith('pc-wg')).map(s => s.type).filter(t => t !== 'link.set' && t !== 'fdb.add')).toEqual([
      'bridge.create', 'vxlan.create', 'addr.add', 'dnsmasq.start', 'firewall.replace', 'sysctl.set'
    ])
    expect(await reconcileNetwork(driver, input())).toEqual([])
    const [dir, d] = [...driver.dnsmasq.entries()][0]
    // A VM on another host changes nothing here; one on this host restarts dnsmasq.
    const more = (vm: PlanVm) => input({ networks: [net({ vms: [...vms, vm] })] })
    expect(await reconcileNetwork(driver, more({ id: 'vm-4', mac: '02:00:00:00:00:04', hostPeerId: 'peer-c', created: 4 }))).toEqual([])
    const steps = await reconcileNetwork(driver, more({ id: 'vm-4', mac: '02:00:00:00:00:04', hostPeerId: 'peer-a', created: 4 }))
    expect(steps).toMatchObject([{ type: 'dnsmasq.start', dir, stopPid: d.pid, description: expect.stringContaining('configuration changed') }])
    // A table changed behind our back is replaced.
    driver.firewall!.rules.postrouting = 0
    expect((await reconcileNetwork(driver, more({ id: 'vm-4', mac: '02:00:00:00:00:04', hostPeerId: 'peer-a', created: 4 }))).map(s => s.type)).toEqual(['firewall.replace'])
    const gone = await reconcileNetwork(driver, input({ networks: [] }))
    expect(gone.map(s => s.type)).toEqual(['dnsmasq.stop', 'link.delete', 'link.delete', 'firewall.delete'])
    expect(driver.dnsmasq.size).toBe(0)
    expect(driver.firewall).toBeUndefined()
    expect(driver.ipv4Forwarding).toBe(true) // never turned off: other things may need it
  })
})

describe('nftables text', () => {
  it('reads back the hash and rule counts of a rendered table', () => {
    const fw = renderFirewall([{ bridge: 'pc-br000001', nat4: '10.1.0.0/24', guardHost: true, dhcp4: true }])!
    // As `nft list table` prints it: tabs, and the same rules.
    const listed = fw.ruleset.replace(/^ {4}/gm, '\t\t').replace(/^ {2}/gm, '\t')
    expect(parseNftTable(listed)).toEqual({ hash: fw.hash, rules: fw.rules })
    expect(renderFirewall([])).toBeUndefined()
  })
})
