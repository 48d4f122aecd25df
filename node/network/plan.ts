/**
 * The data plane of one host as a pure function: `planHost(input)` gives the desired devices and
 * services, `diff(desired, actual)` the ordered, minimal steps that make the actual state match
 * (after innernet's `PeerDiff`: nothing for what is already right, readable descriptions for the rest).
 *
 * Input the daemon builds from the replicated state (every host passes the same mesh-wide lists,
 * only `self`, `localTaps` and `runtimeDir` are its own):
 *
 *     PlanInput {
 *       self: { peerId, wgPrivateKey, listenPort }
 *       members: [{ peerId, wgPublicKey, endpoints, overlayAddr }]    // every member, self included
 *       networks: [{                                                  // every network of the mesh
 *         id, name,
 *         subnet4?: 'a.b.c.d/len', subnet6?: 'prefix::/64',
 *         mode: 'static' | 'dhcp' | 'slaac' | 'dhcpv6',
 *         gateway?: 'none' | 'host-nat' | { vm: '<VM name or id>' }, // default 'none'
 *         hostsWithVms: [peerId],                                     // hosts carrying its VMs
 *         localTaps: ['pc-…'],                                        // this host's taps on it
 *         vms?: [{ id, name?, mac, ip?, ip6?, hostPeerId, created? }] // ALL its VMs, mesh-wide
 *       }]
 *       underlayMtu, underlayIpv6?, wgIfname?,
 *       runtimeDir?: '<state>/net'   // needed when this host runs dnsmasq: files in <runtimeDir>/<network>/
 *     }
 *
 * Per network and host (see ipam.ts for addresses, services.ts for dnsmasq and nftables):
 * - `dhcp`: one dnsmasq on this host's bridge with static leases for THIS host's VMs only (other
 *   hosts' VMs are ignored and answered by their own host); addresses from `allocateIpv4`, so no
 *   two hosts hand out the same one. With a subnet6 it also sends router advertisements (SLAAC).
 * - `slaac`: dnsmasq sends router advertisements (prefix, MTU, router lifetime 0); needs a /64.
 * - `static`: VMs' static addresses are checked (inside the subnet, unique); nothing is served.
 * - A host that serves DHCPv4 or is a `host-nat` gateway has its OWN address on the bridge, from
 *   the top of the subnet (one L2 spans the hosts: a shared gateway address would be claimed by
 *   several hosts in ARP). With `host-nat` each host hands its own address to its own VMs as the
 *   router and NATs their IPv4 traffic out of its default route (nftables `inet pc-net`); a VM
 *   that moves gets the new host's router at its next DHCP renewal. `{ vm }`: that VM's address is
 *   the router; `none`: no router option.
 * - The MTU goes to VMs in DHCP option 26 and in the RA MTU option.
 *
 * @example
 * const desired = planHost(input)
 * const steps = diff(desired, await driver.readState({ wgIfname: desired.wireguard.ifname }))
 * await driver.apply(steps)
 */
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import {
  assignVnis, bridgeName, vxlanName, networkMtu, wireguardMtu, canonicalIp, checkIfname, deriveMac,
  compareStrings, parseIpv6, formatIpv6, DEFAULT_WG_IFNAME, HOST_PREFIX_LEN, VXLAN_PORT, WG_KEEPALIVE, BRIDGE_PREFIX, VXLAN_PREFIX
} from './addressing.ts'
import { allocateIpv4, allocateIpv6, parseSubnet6, subnets4Overlap, inSubnet6, hostInterfaceIds6, joinIpv6, LINK_LOCAL_PREFIX } from './ipam.ts'
import type { Subnet4 } from './ipam.ts'
import { renderDnsmasqConfig, renderFirewall, shortHash } from './services.ts'
import type { FirewallNetwork, DnsmasqDns } from './services.ts'

// ---------------------------------------------------------------------------------------------
// Input

export interface PlanSelf {
  peerId: string
  /** Base64 X25519 private key (as `wg genkey`). Never logged, never in a step description. */
  wgPrivateKey: string
  listenPort: number
}

export interface PlanMember {
  peerId: string
  /** Base64 X25519 public key (as `wg pubkey`). */
  wgPublicKey: string
  /** Underlay endpoints `host:port` or `[v6]:port`, best first; empty when not reachable. */
  endpoints: string[]
  /** From `assignOverlayAddresses` (addressing.ts). */
  overlayAddr: string
}

export type NetworkMode = 'static' | 'dhcp' | 'slaac' | 'dhcpv6'

/** `host-nat`: each host is the IPv4 router of its own VMs and NATs them; `{ vm }`: that VM routes. */
export type NetworkGateway = 'none' | 'host-nat' | { vm: string }

export interface PlanVm {
  id: string
  /** Human name; a `{ vm }` gateway may name it (or give the id). */
  name?: string
  /** MAC of the VM's interface on this network (static DHCP leases are by MAC). */
  mac: string
  /** Static IPv4 address; wins over allocation (must be inside subnet4 and unique). */
  ip?: string
  /** Static IPv6 address (inside subnet6, unique); VMs otherwise configure themselves by SLAAC. */
  ip6?: string
  /** The host that runs the VM. */
  hostPeerId: string
  /** Creation order (ms since epoch from the VM record): earlier VMs keep their addresses. @default 0 */
  created?: number
}

export interface PlanNetwork {
  id: string
  name: string
  subnet4?: string
  subnet6?: string
  mode: NetworkMode
  /** Hosts that carry VMs of this network (this host included when it does). */
  hostsWithVms: string[]
  /** Tap (or veth) devices of this host's VMs on this network; they exist before the plan runs. */
  localTaps: string[]
  /** @default 'none' */
  gateway?: NetworkGateway
  /** Every VM of this network, mesh-wide (addresses are allocated from the whole list). @default [] */
  vms?: PlanVm[]
}

export interface PlanInput {
  self: PlanSelf
  /** Every member of the mesh, this host included. */
  members: PlanMember[]
  /** Every network of the mesh (VNIs depend on the whole set). */
  networks: PlanNetwork[]
  underlayMtu: number
  /** Outer header family for the WireGuard overhead. @default true when any endpoint is IPv6 */
  underlayIpv6?: boolean
  /** @default 'pc-wg0' */
  wgIfname?: string
  /** Directory for per-network service files (`<runtimeDir>/<network>/dnsmasq.*`); needed for dhcp/slaac. */
  runtimeDir?: string
  /**
   * The mesh's DNS domain (`meshDomain`, from its name): where this host runs dnsmasq for a network
   * (dhcp, slaac), it also answers `<vm>.<net>.<domain>`, `<vm>.<net>` and `<vm>` for the
   * network's VMs. @default no names
   */
  domain?: string
}

// ---------------------------------------------------------------------------------------------
// Desired and actual state

export interface DesiredPeer {
  peerId: string
  publicKey: string
  /** Acceptable endpoints; the first is configured, a roamed endpoint among them is kept. */
  endpoints: string[]
  allowedIps: string[]
  keepalive: number
}

export interface DesiredWireguard {
  ifname: string
  privateKey: string
  listenPort: number
  mtu: number
  /** `addr/64` of this host in the overlay. */
  address: string
  peers: DesiredPeer[]
}

export interface DesiredNetwork {
  networkId: string
  name: string
  vni: number
  mtu: number
  bridge: { ifname: string, mac: string }
  vxlan: { ifname: string, local: string, port: number }
  /** Overlay addresses of the other hosts that carry VMs of this network (sorted). */
  fdb: string[]
  taps: string[]
  /** This host's addresses on the bridge (`addr/len`: IPv4, IPv6, IPv6 link-local), sorted. */
  bridgeAddresses: string[]
  /** IPv4 router of this host's VMs (this host's bridge address with host-nat, a VM's with `{ vm }`). */
  gateway4?: string
  /** IPv4 address of every VM of the network (VM id → address), mesh-wide. */
  vmAddresses4: Record<string, string>
  /** IPv6 address the mesh gives every VM of a `dhcpv6` network (static ones included). */
  vmAddresses6: Record<string, string>
  dnsmasq?: DesiredDnsmasq
}

export interface DesiredDnsmasq {
  /** Directory of its files (conf, pid, leases, hash). */
  dir: string
  /** The whole configuration file. */
  config: string
  /** Short hash of `config`, stored beside the pidfile. */
  hash: string
}

export interface DesiredFirewall {
  /** `table inet pc-net { … }`. */
  ruleset: string
  hash: string
  /** Rules per chain. */
  rules: Record<string, number>
}

export interface DesiredState {
  wireguard: DesiredWireguard
  networks: DesiredNetwork[]
  /** The `inet pc-net` nftables table; undefined: no table. */
  firewall?: DesiredFirewall
  /** IPv4 forwarding must be on (some network is host-nat here). It is never turned off. */
  ipv4Forwarding: boolean
}

export interface ActualLink {
  ifname: string
  ifindex: number
  /** `ip -d link` info_kind: bridge, vxlan, wireguard, tun (wireguard-go), veth…; undefined for plain. */
  kind?: string
  mtu: number
  up: boolean
  master?: string
  mac?: string
  vxlan?: { vni: number, local?: string, port: number }
  /** Global addresses as `addr/len` (link-local ones left out, except on `pc-br` bridges). */
  addresses: string[]
}

export interface ActualPeer {
  publicKey: string
  endpoint?: string
  allowedIps: string[]
  /** Seconds, 0 when off. */
  keepalive: number
  /** Unix seconds of the last handshake, 0 never (for status only; diff ignores it). */
  latestHandshake?: number
  /** Bytes received and sent (for status only). */
  rx?: number
  tx?: number
}

export interface ActualWireguard {
  ifname: string
  privateKey?: string
  listenPort: number
  peers: ActualPeer[]
}

export interface ActualFdbEntry { ifname: string, dst: string }

export interface ActualState {
  links: ActualLink[]
  /** State of the configured WireGuard interface, when it exists. */
  wireguard?: ActualWireguard
  /** All-zero (flooding) FDB entries of `pc-vx` devices. */
  fdb: ActualFdbEntry[]
  /** dnsmasq instances found under the runtime dir (read when one is given). */
  dnsmasq?: ActualDnsmasq[]
  /** The `inet pc-net` table when it exists. */
  firewall?: ActualFirewall
  /** net.ipv4.ip_forward, when it could be read. */
  ipv4Forwarding?: boolean
}

export interface ActualDnsmasq {
  dir: string
  /** Pid of a running dnsmasq of this directory (checked in /proc), if any. */
  pid?: number
  /** Hash of the configuration it was started with. */
  hash?: string
}

export interface ActualFirewall {
  /** Hash from the table comment. */
  hash?: string
  rules: Record<string, number>
}

// ---------------------------------------------------------------------------------------------
// Steps

interface StepBase { description: string }
export type Step = StepBase & (
  | { type: 'link.delete', ifname: string }
  | { type: 'wg.create', ifname: string }
  | { type: 'wg.configure', ifname: string, privateKey?: string, listenPort?: number }
  | { type: 'wg.peer.set', ifname: string, publicKey: string, endpoint?: string, allowedIps: string[], keepalive: number }
  | { type: 'wg.peer.remove', ifname: string, publicKey: string }
  | { type: 'bridge.create', ifname: string, mtu: number, mac: string }
  | { type: 'vxlan.create', ifname: string, vni: number, local: string, port: number, mtu: number }
  | { type: 'link.set', ifname: string, mtu?: number, mac?: string, master?: string | null, up?: true }
  | { type: 'addr.add', ifname: string, address: string }
  | { type: 'addr.remove', ifname: string, address: string }
  | { type: 'fdb.add', ifname: string, dst: string }
  | { type: 'fdb.remove', ifname: string, dst: string }
  | { type: 'dnsmasq.start', ifname: string, dir: string, config: string, hash: string, stopPid?: number }
  | { type: 'dnsmasq.stop', dir: string, pid?: number }
  | { type: 'firewall.replace', ruleset: string, hash: string }
  | { type: 'firewall.delete' }
  | { type: 'sysctl.set', key: string, value: string }
)
export type StepType = Step['type']

// ---------------------------------------------------------------------------------------------
// planHost

function bad (message: string): never {
  throw new PicocloudError(ErrorCode.BadNetworkPlan, message)
}

/** True when an endpoint `[v6]:port` (or a bare IPv6) is IPv6. */
export function isIpv6Endpoint (endpoint: string): boolean {
  return endpoint.startsWith('[') || endpoint.split(':').length > 2
}

/** Canonical text of `host:port` / `[v6]:port`, so that wg's output and our input compare. */
export function canonicalEndpoint (endpoint: string): string {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(endpoint)
  if (m !== null) return `[${canonicalIp(m[1])}]:${m[2]}`
  return endpoint
}

/**
 * The private key as WireGuard stores and shows it: X25519-clamped (`wg genkey` output already is;
 * `nacl.box.keyPair()` secret keys are not, yet give the same public key).
 */
export function clampPrivateKey (key: string): string {
  const b = Buffer.from(key, 'base64')
  if (b.length !== 32) bad('a WireGuard private key is 32 bytes of base64')
  b[0] &= 248
  b[31] = (b[31] & 127) | 64
  return b.toString('base64')
}

export function planHost (input: PlanInput): DesiredState {
  const ifname = checkIfname(input.wgIfname ?? DEFAULT_WG_IFNAME)
  const { self } = input
  if (!Number.isInteger(self.listenPort) || self.listenPort < 1 || self.listenPort > 65535) bad(`bad listen port ${self.listenPort}`)
  const me = input.members.find(m => m.peerId === self.peerId)
  if (me === undefined) bad(`this host (${self.peerId}) is not among the members`)

  const seenPeer = new Set<string>()
  const seenAddr = new Set<string>()
  const seenKey = new Set<string>()
  for (const m of input.members) {
    const addr = canonicalIp(m.overlayAddr)
    if (seenPeer.has(m.peerId)) bad(`member ${m.peerId} listed twice`)
    if (seenAddr.has(addr)) bad(`overlay address ${addr} given to two members (use assignOverlayAddresses)`)
    if (seenKey.has(m.wgPublicKey)) bad(`WireGuard public key of ${m.peerId} is used by another member`)
    seenPeer.add(m.peerId); seenAddr.add(addr); seenKey.add(m.wgPublicKey)
  }

  const ipv6 = input.underlayIpv6 ?? input.members.some(m => m.endpoints.some(isIpv6Endpoint))
  const wgMtu = wireguardMtu(input.underlayMtu, ipv6)
  const netMtu = networkMtu(input.underlayMtu, ipv6)
  const myAddr = canonicalIp(me.overlayAddr)
  const addrOf = new Map(input.members.map(m => [m.peerId, canonicalIp(m.overlayAddr)]))

  const peers: DesiredPeer[] = input.members
    .filter(m => m.peerId !== self.peerId)
    .sort((a, b) => compareStrings(a.peerId, b.peerId))
    .map(m => ({
      peerId: m.peerId,
      publicKey: m.wgPublicKey,
      endpoints: m.endpoints.map(canonicalEndpoint),
      allowedIps: [`${canonicalIp(m.overlayAddr)}/128`],
      keepalive: WG_KEEPALIVE
    }))

  const vnis = assignVnis(input.networks.map(n => n.id))
  const claimedTaps = new Map<string, string>()
  const networks: DesiredNetwork[] = []
  const hostSubnets4: Array<{ name: string, subnet: Subnet4 }> = []
  const firewallNets: FirewallNetwork[] = []
  for (const n of input.networks) {
    for (const tap of n.localTaps) {
      const other = claimedTaps.get(tap)
      if (other !== undefined && other !== n.id) bad(`tap ${tap} is on two networks (${other}, ${n.id})`)
      claimedTaps.set(tap, n.id)
    }
    const carries = n.hostsWithVms.includes(self.peerId) || n.localTaps.length > 0
    if (!carries) continue
    const vni = vnis.get(n.id)!
    const fdb = [...new Set(n.hostsWithVms.filter(p => p !== self.peerId).map(p => {
      const a = addrOf.get(p)
      if (a === undefined) bad(`network ${n.name}: host ${p} carries VMs but is not a member`)
      return a
    }))].sort(compareStrings)
    const bridge = bridgeName(vni)
    const services = planServices(n, self.peerId, bridge, netMtu, input.runtimeDir, input.domain)
    if (services.hostSubnet4 !== undefined) hostSubnets4.push({ name: n.name, subnet: services.hostSubnet4 })
    firewallNets.push(services.firewall)
    networks.push({
      networkId: n.id,
      name: n.name,
      vni,
      mtu: netMtu,
      bridge: { ifname: bridge, mac: deriveMac(`bridge/${n.id}/${self.peerId}`) },
      vxlan: { ifname: vxlanName(vni), local: myAddr, port: VXLAN_PORT },
      fdb,
      taps: [...new Set(n.localTaps)].sort(compareStrings),
      bridgeAddresses: services.bridgeAddresses,
      ...(services.gateway4 !== undefined ? { gateway4: services.gateway4 } : {}),
      vmAddresses4: services.vmAddresses4,
      vmAddresses6: services.vmAddresses6,
      ...(services.dnsmasq !== undefined ? { dnsmasq: services.dnsmasq } : {})
    })
  }
  networks.sort((a, b) => a.vni - b.vni)
  // This host routes for the subnets it has an address in: they must not overlap.
  for (let i = 0; i < hostSubnets4.length; i++) {
    for (let j = i + 1; j < hostSubnets4.length; j++) {
      const [a, b] = [hostSubnets4[i], hostSubnets4[j]]
      if (subnets4Overlap(a.subnet, b.subnet)) {
        bad(`networks ${a.name} (${a.subnet.cidr}) and ${b.name} (${b.subnet.cidr}) overlap, and this host has an address in both (DHCP or host-nat): give one another subnet`)
      }
    }
  }
  const firewall = renderFirewall(firewallNets)

  return {
    wireguard: {
      ifname,
      privateKey: clampPrivateKey(self.wgPrivateKey),
      listenPort: self.listenPort,
      mtu: wgMtu,
      address: `${myAddr}/${HOST_PREFIX_LEN}`,
      peers
    },
    networks,
    ...(firewall !== undefined ? { firewall } : {}),
    ipv4Forwarding: firewallNets.some(f => f.nat4 !== undefined)
  }
}

const SAFE_DIR = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/

/** Directory name of a network's service files: its id when safe as a file name, else a hash. */
export function networkDirName (networkId: string): string {
  return SAFE_DIR.test(networkId) && networkId !== '..' ? networkId : `h-${shortHash(networkId)}`
}

function normalMac (mac: string, where: string): string {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) bad(`${where}: bad MAC ${JSON.stringify(mac)} (expected aa:bb:cc:dd:ee:ff)`)
  if ((parseInt(mac.slice(0, 2), 16) & 1) === 1) bad(`${where}: MAC ${mac} is multicast`)
  return mac.toLowerCase()
}

interface ServicesPlan {
  bridgeAddresses: string[]
  gateway4?: string
  vmAddresses4: Record<string, string>
  vmAddresses6: Record<string, string>
  dnsmasq?: DesiredDnsmasq
  firewall: FirewallNetwork
  /** Subnet this host has an IPv4 address in. */
  hostSubnet4?: Subnet4
}

/**
 * The names a network's dnsmasq answers: each named VM of the network (on any host) as
 * `<vm>.<net>.<domain>`, `<vm>.<net>` and `<vm>`, with the IPv4 address the mesh gave it (static
 * or allocated) and its IPv6 address (static, or allocated in `dhcpv6` mode). SLAAC addresses are the guest's own and not known
 * here. A name two VMs share (a VM on the network twice) goes to the first.
 */
function dnsRecords (n: PlanNetwork, vms: readonly PlanVm[], vmAddresses4: Record<string, string>, vmAddresses6: Record<string, string>, domain: string): DnsmasqDns {
  const seen = new Set<string>()
  const records: DnsmasqDns['records'] = []
  for (const v of vms) {
    if (v.name === undefined || seen.has(v.name)) continue
    seen.add(v.name)
    const ip4 = vmAddresses4[v.id]
    const ip6 = vmAddresses6[v.id] ?? (v.ip6 === undefined ? undefined : formatIpv6(parseIpv6(v.ip6)))
    if (ip4 === undefined && ip6 === undefined) continue
    records.push({ names: [`${v.name}.${n.name}.${domain}`, `${v.name}.${n.name}`, v.name], ...(ip4 === undefined ? {} : { ip4 }), ...(ip6 === undefined ? {} : { ip6 }) })
  }
  return { domain: `${n.name}.${domain}`, meshDomain: domain, records }
}

/** Addresses, dnsmasq and firewall of one network this host carries. */
function planServices (n: PlanNetwork, self: string, bridge: string, mtu: number, runtimeDir: string | undefined, domain?: string): ServicesPlan {
  const label = `network ${n.name}`
  const gateway = n.gateway ?? 'none'
  const vms = n.vms ?? []
  if (!['static', 'dhcp', 'slaac', 'dhcpv6'].includes(n.mode)) bad(`${label}: unknown mode ${JSON.stringify(n.mode)} (static, dhcp, slaac or dhcpv6)`)
  if (typeof gateway === 'string' && gateway !== 'none' && gateway !== 'host-nat') bad(`${label}: unknown gateway ${JSON.stringify(gateway)} ('none', 'host-nat' or { vm: name })`)
  const macs = new Map<string, string>()
  for (const vm of vms) {
    const mac = normalMac(vm.mac, `${label}, VM ${vm.id}`)
    const other = macs.get(mac)
    if (other !== undefined && other !== vm.id) bad(`${label}: VMs ${other} and ${vm.id} have the same MAC ${mac}`)
    macs.set(mac, vm.id)
  }
  const hosts = [...new Set([...n.hostsWithVms, ...vms.map(v => v.hostPeerId), self])].sort(compareStrings)
  const localVms = vms.filter(v => v.hostPeerId === self)

  // IPv4
  const dhcp4 = (n.mode === 'dhcp' || n.mode === 'dhcpv6') && n.subnet4 !== undefined
  const nat = gateway === 'host-nat'
  if (nat && n.subnet4 === undefined) bad(`${label}: gateway host-nat needs a subnet4`)
  if ((n.mode === 'dhcp' || n.mode === 'dhcpv6') && n.subnet4 === undefined && n.subnet6 === undefined) bad(`${label}: mode dhcp needs a subnet4 (or a subnet6 for router advertisements)`)
  const bridgeAddresses: string[] = []
  let vmAddresses4: Record<string, string> = {}
  let gateway4: string | undefined
  let subnet4: Subnet4 | undefined
  let hostAddr4: string | undefined
  if (n.subnet4 !== undefined) {
    const needHost = dhcp4 || nat
    // Only dhcp allocates; in other modes VMs without a static address get none from us.
    const ipamVms = dhcp4 ? vms : vms.filter(v => v.ip !== undefined)
    const alloc = allocateIpv4(n.id, n.subnet4, ipamVms.map(v => ({ id: v.id, ...(v.ip !== undefined ? { ip: v.ip } : {}), ...(v.created !== undefined ? { created: v.created } : {}) })), needHost ? hosts : [])
    subnet4 = alloc.subnet
    vmAddresses4 = Object.fromEntries([...alloc.vms.entries()].sort((a, b) => compareStrings(a[0], b[0])))
    hostAddr4 = alloc.hosts.get(self)
    if (hostAddr4 !== undefined) bridgeAddresses.push(`${hostAddr4}/${alloc.subnet.prefixLen}`)
    if (nat) gateway4 = hostAddr4
  } else if (vms.some(v => v.ip !== undefined)) {
    bad(`${label}: a VM has a static IPv4 address but the network has no subnet4`)
  }
  if (typeof gateway === 'object') {
    const gw = vms.find(v => v.name === gateway.vm) ?? vms.find(v => v.id === gateway.vm)
    if (gw === undefined) bad(`${label}: the gateway VM ${JSON.stringify(gateway.vm)} is not on this network`)
    gateway4 = vmAddresses4[gw.id]
    if (gateway4 === undefined) bad(`${label}: the gateway VM ${JSON.stringify(gateway.vm)} has no IPv4 address (give it a static ip, or use mode dhcp)`)
  }

  // IPv6
  const ra = n.subnet6 !== undefined && (n.mode === 'slaac' || n.mode === 'dhcp' || n.mode === 'dhcpv6')
  if ((n.mode === 'slaac' || n.mode === 'dhcpv6') && n.subnet6 === undefined) bad(`${label}: mode ${n.mode} needs a subnet6 (a /64)`)
  let vmAddresses6: Record<string, string> = {}
  if (n.subnet6 !== undefined) {
    const s6 = parseSubnet6(n.subnet6, `${label}: subnet6`)
    if (ra && s6.prefixLen !== 64) bad(`${label}: subnet6 ${s6.cidr} must be a /64 for SLAAC`)
    const seen6 = new Map<string, string>()
    for (const vm of vms) {
      if (vm.ip6 === undefined) continue
      let a: Uint8Array
      try { a = parseIpv6(vm.ip6) } catch { bad(`${label}: VM ${vm.id} has a static IPv6 address ${JSON.stringify(vm.ip6)} that is not IPv6`) }
      if (!inSubnet6(s6, a)) bad(`${label}: VM ${vm.id} has the static address ${vm.ip6}, outside the subnet ${s6.cidr}`)
      const text = formatIpv6(a)
      const other = seen6.get(text)
      if (other !== undefined) bad(`${label}: the static address ${text} is given to two VMs (${other} and ${vm.id})`)
      seen6.set(text, vm.id)
    }
    if (n.mode === 'dhcpv6') {
      if (s6.prefixLen !== 64) bad(`${label}: subnet6 ${s6.cidr} must be a /64 for DHCPv6`)
      const statics = Object.fromEntries(vms.filter(v => v.ip6 !== undefined).map(v => [v.id, formatIpv6(parseIpv6(v.ip6 as string))]))
      const alloc = allocateIpv6(n.id, s6.prefix, vms.filter(v => v.ip6 === undefined).map(v => v.id), new Set(seen6.keys()))
      vmAddresses6 = Object.fromEntries([...Object.entries(statics), ...alloc].sort((a, b) => compareStrings(a[0], b[0])))
    }
    if (ra) {
      const iid = hostInterfaceIds6(n.id, hosts).get(self)!
      const mine = joinIpv6(s6.prefix, iid)
      const owner = seen6.get(mine)
      if (owner !== undefined) bad(`${label}: VM ${owner} has the static address ${mine}, this host's address on the network`)
      bridgeAddresses.push(`${mine}/64`, `${joinIpv6(LINK_LOCAL_PREFIX, iid)}/64`)
    }
  } else if (vms.some(v => v.ip6 !== undefined)) {
    bad(`${label}: a VM has a static IPv6 address but the network has no subnet6`)
  }

  let dnsmasq: DesiredDnsmasq | undefined
  if (dhcp4 || ra) {
    if (runtimeDir === undefined) bad(`${label}: mode ${n.mode} runs dnsmasq, which needs a runtime directory (runtimeDir)`)
    const dir = `${runtimeDir.replace(/\/+$/, '')}/${networkDirName(n.id)}`
    const config = renderDnsmasqConfig({
      networkId: n.id,
      name: n.name,
      bridge,
      dir,
      mtu,
      ...(dhcp4 && subnet4 !== undefined
        ? {
            dhcp4: {
              base: parseSubnetBase(subnet4),
              netmask: subnet4.netmask,
              ...(gateway4 !== undefined ? { router: gateway4 } : {}),
              hosts: localVms.filter(v => vmAddresses4[v.id] !== undefined).map(v => ({ mac: v.mac.toLowerCase(), ip: vmAddresses4[v.id] }))
            }
          }
        : {}),
      ...(ra ? { ra: { prefix: parseSubnet6(n.subnet6!).cidr.split('/')[0] } } : {}),
      ...(n.mode === 'dhcpv6' ? { dhcp6: { hosts: localVms.filter(v => vmAddresses6[v.id] !== undefined).map(v => ({ mac: v.mac.toLowerCase(), ip6: vmAddresses6[v.id] })) } } : {}),
      ...(domain === undefined ? {} : { dns: dnsRecords(n, vms, vmAddresses4, vmAddresses6, domain) })
    })
    dnsmasq = { dir, config, hash: shortHash(config) }
  }
  const guardHost = bridgeAddresses.length > 0
  // Every network on this host has its rules, also one the host has no address in (isolation).
  const firewall: FirewallNetwork = { bridge, guardHost, dhcp4, ...(n.mode === 'dhcpv6' && ra ? { dhcp6: true } : {}), ...(dnsmasq !== undefined && domain !== undefined ? { dns: true } : {}), ...(nat && subnet4 !== undefined ? { nat4: subnet4.cidr } : {}) }
  bridgeAddresses.sort(compareStrings)
  return {
    bridgeAddresses,
    ...(gateway4 !== undefined ? { gateway4 } : {}),
    vmAddresses4,
    vmAddresses6,
    ...(dnsmasq !== undefined ? { dnsmasq } : {}),
    firewall,
    ...(hostAddr4 !== undefined && subnet4 !== undefined ? { hostSubnet4: subnet4 } : {})
  }
}

function parseSubnetBase (s: Subnet4): string {
  return s.cidr.split('/')[0]
}

// ---------------------------------------------------------------------------------------------
// diff

function short (key: string): string { return key.slice(0, 8) + '…' }

function sameSet (a: readonly string[], b: readonly string[]): boolean {
  const sa = new Set(a)
  return sa.size === new Set(b).size && b.every(x => sa.has(x))
}

function canonicalCidr (cidr: string): string {
  const [addr, len] = cidr.split('/')
  return `${canonicalIp(addr)}/${len}`
}

/** True for a device that the data plane owns and may delete (bridges and VXLANs of ours). */
export function isManagedLink (l: ActualLink): boolean {
  return (l.ifname.startsWith(BRIDGE_PREFIX) && l.kind === 'bridge') ||
    (l.ifname.startsWith(VXLAN_PREFIX) && l.kind === 'vxlan')
}

const WG_KINDS = new Set(['wireguard', 'tun'])

/**
 * Ordered steps from `actual` to `desired`: deletions first (they free names and VNIs), then the
 * WireGuard interface and its peers, then each network (bridge, VXLAN, taps, FDB).
 */
export function diff (desired: DesiredState, actual: ActualState): Step[] {
  const steps: Step[] = []
  const links = new Map(actual.links.map(l => [l.ifname, l]))
  const wanted = new Map<string, 'bridge' | 'vxlan'>()
  for (const n of desired.networks) {
    wanted.set(n.bridge.ifname, 'bridge')
    wanted.set(n.vxlan.ifname, 'vxlan')
  }

  // 0. dnsmasq instances of networks that are gone (before their bridges go).
  const wantedDirs = new Set(desired.networks.flatMap(n => n.dnsmasq !== undefined ? [n.dnsmasq.dir] : []))
  const actualDnsmasq = new Map((actual.dnsmasq ?? []).map(d => [d.dir, d]))
  for (const d of [...actualDnsmasq.values()].sort((a, b) => compareStrings(a.dir, b.dir))) {
    if (wantedDirs.has(d.dir)) continue
    steps.push({ type: 'dnsmasq.stop', dir: d.dir, ...(d.pid !== undefined ? { pid: d.pid } : {}), description: `stop dnsmasq of ${d.dir} and remove its files (network not served here)` })
  }

  // 1. Deletions: managed devices not desired, or desired with the wrong kind or VXLAN settings.
  const gone = new Set<string>()
  const vxlanOf = new Map(desired.networks.map(n => [n.vxlan.ifname, n]))
  const doomed = actual.links.filter(l => {
    const kind = wanted.get(l.ifname)
    if (kind === undefined) return isManagedLink(l)
    if (l.kind !== kind) return true
    if (kind === 'vxlan') {
      const n = vxlanOf.get(l.ifname)!
      const v = l.vxlan
      return v === undefined || v.vni !== n.vni || v.port !== n.vxlan.port ||
        v.local === undefined || canonicalIp(v.local) !== n.vxlan.local
    }
    return false
  })
  // VXLANs before bridges, each group by name, so the order is stable.
  doomed.sort((a, b) => (a.kind === 'vxlan' ? 0 : 1) - (b.kind === 'vxlan' ? 0 : 1) || compareStrings(a.ifname, b.ifname))
  for (const l of doomed) {
    const why = wanted.has(l.ifname) ? 'settings changed, will be recreated' : 'not desired'
    steps.push({ type: 'link.delete', ifname: l.ifname, description: `delete ${l.kind ?? 'device'} ${l.ifname} (${why})` })
    gone.add(l.ifname)
  }

  // 2. WireGuard.
  steps.push(...diffWireguard(desired.wireguard, links.get(desired.wireguard.ifname), actual.wireguard))

  // 3. Networks.
  const fdbBy = new Map<string, string[]>()
  for (const e of actual.fdb) fdbBy.set(e.ifname, [...(fdbBy.get(e.ifname) ?? []), canonicalIp(e.dst)])
  const tapOwner = new Map<string, string>()
  for (const n of desired.networks) for (const t of n.taps) tapOwner.set(t, n.bridge.ifname)

  for (const n of desired.networks) {
    const br = gone.has(n.bridge.ifname) ? undefined : links.get(n.bridge.ifname)
    const vx = gone.has(n.vxlan.ifname) ? undefined : links.get(n.vxlan.ifname)
    const label = `network ${n.name} (VNI ${n.vni})`
    if (br === undefined) {
      steps.push({ type: 'bridge.create', ifname: n.bridge.ifname, mtu: n.mtu, mac: n.bridge.mac, description: `create bridge ${n.bridge.ifname} for ${label}, MTU ${n.mtu}` })
    } else {
      pushLinkSet(steps, br, { mtu: n.mtu, mac: n.bridge.mac })
    }
    if (vx === undefined) {
      steps.push({ type: 'vxlan.create', ifname: n.vxlan.ifname, vni: n.vni, local: n.vxlan.local, port: n.vxlan.port, mtu: n.mtu, description: `create VXLAN ${n.vxlan.ifname} VNI ${n.vni} local ${n.vxlan.local} port ${n.vxlan.port} for ${label}, MTU ${n.mtu}` })
    }
    pushLinkSet(steps, vx ?? { ifname: n.vxlan.ifname, mtu: n.mtu, up: false }, { mtu: n.mtu, master: n.bridge.ifname })
    for (const tap of n.taps) {
      const t = links.get(tap)
      if (t === undefined) continue // the hypervisor has not made it yet; the next round will see it
      pushLinkSet(steps, t, { mtu: n.mtu, master: n.bridge.ifname })
    }
    // Ports of our bridge that are not ours any more are released (not deleted: the hypervisor owns taps).
    for (const l of actual.links) {
      if (l.master === n.bridge.ifname && l.ifname !== n.vxlan.ifname && !n.taps.includes(l.ifname) &&
          tapOwner.get(l.ifname) === undefined && !gone.has(l.ifname)) {
        steps.push({ type: 'link.set', ifname: l.ifname, master: null, description: `release ${l.ifname} from bridge ${n.bridge.ifname} (not a tap of ${label})` })
      }
    }
    if (br === undefined || !br.up) steps.push({ type: 'link.set', ifname: n.bridge.ifname, up: true, description: `bring ${n.bridge.ifname} up` })
    if (vx === undefined || !vx.up) steps.push({ type: 'link.set', ifname: n.vxlan.ifname, up: true, description: `bring ${n.vxlan.ifname} up` })
    for (const tap of n.taps) {
      const t = links.get(tap)
      if (t !== undefined && !t.up) steps.push({ type: 'link.set', ifname: tap, up: true, description: `bring tap ${tap} up` })
    }
    const have = vx === undefined ? [] : (fdbBy.get(n.vxlan.ifname) ?? [])
    for (const dst of have) {
      if (!n.fdb.includes(dst)) steps.push({ type: 'fdb.remove', ifname: n.vxlan.ifname, dst, description: `stop flooding ${label} to ${dst} (carries none of its VMs)` })
    }
    for (const dst of n.fdb) {
      if (!have.includes(dst)) steps.push({ type: 'fdb.add', ifname: n.vxlan.ifname, dst, description: `flood ${label} to host ${dst}` })
    }
    // This host's addresses on the bridge (DHCP server, gateway, RA source).
    const brAddrs = (br?.addresses ?? []).map(canonicalCidr)
    const wantAddrs = n.bridgeAddresses.map(canonicalCidr)
    for (const a of brAddrs) {
      if (!wantAddrs.includes(a)) steps.push({ type: 'addr.remove', ifname: n.bridge.ifname, address: a, description: `remove address ${a} from ${n.bridge.ifname} (${label})` })
    }
    for (const a of wantAddrs) {
      if (!brAddrs.includes(a)) steps.push({ type: 'addr.add', ifname: n.bridge.ifname, address: a, description: `add host address ${a} to ${n.bridge.ifname} (${label})` })
    }
    // dnsmasq: (re)started only when it is not running or its configuration changed.
    if (n.dnsmasq !== undefined) {
      const d = actualDnsmasq.get(n.dnsmasq.dir)
      if (d?.pid === undefined || d.hash !== n.dnsmasq.hash) {
        const why = d?.pid === undefined ? 'not running' : 'configuration changed'
        steps.push({
          type: 'dnsmasq.start',
          ifname: n.bridge.ifname,
          dir: n.dnsmasq.dir,
          config: n.dnsmasq.config,
          hash: n.dnsmasq.hash,
          ...(d?.pid !== undefined ? { stopPid: d.pid } : {}),
          description: `${d?.pid === undefined ? 'start' : 'restart'} dnsmasq for ${label} on ${n.bridge.ifname} (${why})`
        })
      }
    }
  }

  // 4. Firewall (nftables table inet pc-net), replaced whole and atomically when it differs.
  const fw = desired.firewall
  const afw = actual.firewall
  if (fw === undefined) {
    if (afw !== undefined) steps.push({ type: 'firewall.delete', description: 'delete nftables table inet pc-net (no network on this host)' })
  } else if (afw === undefined || afw.hash !== fw.hash || !sameRules(afw.rules, fw.rules)) {
    steps.push({ type: 'firewall.replace', ruleset: fw.ruleset, hash: fw.hash, description: `${afw === undefined ? 'create' : 'replace'} nftables table inet pc-net (${Object.entries(fw.rules).map(([c, k]) => `${c}: ${k} rules`).join(', ')})` })
  }
  if (desired.ipv4Forwarding && actual.ipv4Forwarding !== true) {
    steps.push({ type: 'sysctl.set', key: 'net.ipv4.ip_forward', value: '1', description: 'turn IPv4 forwarding on (host-nat)' })
  }
  return steps
}

function sameRules (a: Record<string, number>, b: Record<string, number>): boolean {
  const ka = Object.keys(a).sort()
  const kb = Object.keys(b).sort()
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k])
}

function pushLinkSet (steps: Step[], link: Pick<ActualLink, 'ifname' | 'mtu' | 'master' | 'mac'> & { up?: boolean }, want: { mtu?: number, mac?: string, master?: string }): void {
  const change: { mtu?: number, mac?: string, master?: string } = {}
  const what: string[] = []
  if (want.mtu !== undefined && link.mtu !== want.mtu) { change.mtu = want.mtu; what.push(`MTU ${link.mtu} → ${want.mtu}`) }
  if (want.mac !== undefined && link.mac?.toLowerCase() !== want.mac) { change.mac = want.mac; what.push(`MAC → ${want.mac}`) }
  if (want.master !== undefined && link.master !== want.master) { change.master = want.master; what.push(`attach to ${want.master}`) }
  if (what.length === 0) return
  steps.push({ type: 'link.set', ifname: link.ifname, ...change, description: `${link.ifname}: ${what.join(', ')}` })
}

function diffWireguard (want: DesiredWireguard, link: ActualLink | undefined, wg: ActualWireguard | undefined): Step[] {
  const steps: Step[] = []
  const { ifname } = want
  let current = link
  if (current !== undefined && (current.kind === undefined || !WG_KINDS.has(current.kind))) {
    steps.push({ type: 'link.delete', ifname, description: `delete ${current.kind ?? 'device'} ${ifname} (in the way of the WireGuard interface)` })
    current = undefined
  }
  if (current === undefined) {
    steps.push({ type: 'wg.create', ifname, description: `create WireGuard interface ${ifname}` })
    wg = undefined
  }
  const keyWrong = wg?.privateKey !== want.privateKey
  const portWrong = wg?.listenPort !== want.listenPort
  if (keyWrong || portWrong) {
    steps.push({
      type: 'wg.configure',
      ifname,
      ...(keyWrong ? { privateKey: want.privateKey } : {}),
      ...(portWrong ? { listenPort: want.listenPort } : {}),
      description: `set ${[keyWrong ? 'private key' : '', portWrong ? `listen port ${want.listenPort}` : ''].filter(Boolean).join(' and ')} on ${ifname}`
    })
  }
  if (current === undefined || current.mtu !== want.mtu) {
    steps.push({ type: 'link.set', ifname, mtu: want.mtu, description: `${ifname}: MTU ${current?.mtu ?? '(new)'} → ${want.mtu}` })
  }
  const addresses = (current?.addresses ?? []).map(canonicalCidr)
  for (const a of addresses) {
    if (a !== want.address) steps.push({ type: 'addr.remove', ifname, address: a, description: `remove address ${a} from ${ifname}` })
  }
  if (!addresses.includes(want.address)) steps.push({ type: 'addr.add', ifname, address: want.address, description: `add overlay address ${want.address} to ${ifname}` })
  if (current === undefined || !current.up) steps.push({ type: 'link.set', ifname, up: true, description: `bring ${ifname} up` })

  const actualPeers = new Map((wg?.peers ?? []).map(p => [p.publicKey, p]))
  const wantedKeys = new Set(want.peers.map(p => p.publicKey))
  for (const p of wg?.peers ?? []) {
    if (!wantedKeys.has(p.publicKey)) steps.push({ type: 'wg.peer.remove', ifname, publicKey: p.publicKey, description: `remove peer ${short(p.publicKey)} from ${ifname} (not a member)` })
  }
  for (const p of want.peers) {
    const a = actualPeers.get(p.publicKey)
    const endpointOk = p.endpoints.length === 0 || (a?.endpoint !== undefined && p.endpoints.includes(canonicalEndpoint(a.endpoint)))
    const allowedOk = a !== undefined && sameSet(a.allowedIps.map(canonicalCidr), p.allowedIps)
    const keepaliveOk = a !== undefined && a.keepalive === p.keepalive
    if (a !== undefined && endpointOk && allowedOk && keepaliveOk) continue
    const endpoint = endpointOk ? undefined : p.endpoints[0]
    const verb = a === undefined ? 'add' : 'update'
    const detail = [
      endpoint !== undefined ? `endpoint ${endpoint}` : '',
      a === undefined || !allowedOk ? `allowed-ips ${p.allowedIps.join(',')}` : '',
      a === undefined || !keepaliveOk ? `keepalive ${p.keepalive}` : ''
    ].filter(Boolean).join(' ')
    steps.push({
      type: 'wg.peer.set',
      ifname,
      publicKey: p.publicKey,
      ...(endpoint !== undefined ? { endpoint } : {}),
      allowedIps: p.allowedIps,
      keepalive: p.keepalive,
      description: `${verb} peer ${p.peerId} (${short(p.publicKey)}) on ${ifname}: ${detail}`
    })
  }
  return steps
}
