/**
 * Address management of private networks: pure, deterministic functions that every host evaluates
 * on the same replicated list of VMs, so that hosts never hand out the same address without asking
 * each other.
 *
 * IPv4 (`allocateIpv4`), per network:
 * - Usable addresses: the subnet less its network and broadcast addresses (a /31 or /32 has none
 *   to give: rejected).
 * - Static addresses from the VM records come first: they must be inside the subnet, usable and
 *   unique, else BAD_NETWORK_PLAN names both VMs.
 * - Host addresses (one per host that needs one on the bridge: DHCP server, per-host gateway) are
 *   taken from the TOP of the subnet: each host starts at `broadcast − 1 − (hash(network, peer) mod R)`
 *   (R = the top quarter of the subnet, 1 to 64 addresses) and probes downwards; hosts are taken in
 *   order of peer id. A distinct address per host (not one shared gateway address): the network is
 *   one layer 2 spanning every host, so a shared address would be answered to ARP by several hosts.
 * - VM addresses come from the bottom three quarters: each VM starts at `hash(network, vm) mod size`
 *   and probes upwards (wrapping over the whole usable range) past taken addresses. VMs are taken in
 *   order of (`created`, id), so a VM added later (later `created`) never moves an earlier one;
 *   removing a VM moves only VMs that had probed past its address (rare when the subnet is sparse).
 *   The daemon may pin an address for good by writing it into the VM record (`ip`).
 *
 * IPv6: per-host bridge addresses are `prefix + first 64 bits of sha256(network/peer)` (and the
 * same interface id under fe80::/64 as the link-local source of router advertisements); VMs use
 * SLAAC (EUI-64 or privacy addresses of their own) or a static `ip6`.
 */
import { createHash } from 'node:crypto'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import { compareStrings, formatIpv6, parseIpv6, isReservedInterfaceId } from './addressing.ts'

function bad (message: string): never {
  throw new PicocloudError(ErrorCode.BadNetworkPlan, message)
}

function hash32 (text: string): number {
  return createHash('sha256').update(text, 'utf8').digest().readUInt32BE(0)
}

// ---------------------------------------------------------------------------------------------
// IPv4 text

/** Parses dotted-quad IPv4 to an unsigned 32-bit number; undefined when it is not one. */
export function parseIpv4 (text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text)
  if (m === null) return undefined
  const parts = m.slice(1).map(Number)
  if (parts.some((p, i) => p > 255 || (m[i + 1].length > 1 && m[i + 1].startsWith('0')))) return undefined
  return ((parts[0] << 24) >>> 0) + (parts[1] << 16) + (parts[2] << 8) + parts[3]
}

export function formatIpv4 (n: number): string {
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join('.')
}

export interface Subnet4 {
  /** Network address as a number. */
  base: number
  prefixLen: number
  /** Number of addresses (2^(32 − prefixLen)). */
  size: number
  /** `a.b.c.d/len`, canonical. */
  cidr: string
  netmask: string
}

/** Parses `a.b.c.d/len` (host bits must be zero); throws BAD_NETWORK_PLAN naming `what`. */
export function parseSubnet4 (cidr: string, what = 'subnet'): Subnet4 {
  const [addr, len, ...rest] = cidr.split('/')
  const base = parseIpv4(addr)
  const prefixLen = /^\d{1,2}$/.test(len ?? '') ? Number(len) : NaN
  if (base === undefined || rest.length > 0 || !(prefixLen >= 0 && prefixLen <= 32)) bad(`${what} ${JSON.stringify(cidr)} is not an IPv4 subnet a.b.c.d/len`)
  const size = 2 ** (32 - prefixLen)
  if (base % size !== 0) bad(`${what} ${cidr} has host bits set (did you mean ${formatIpv4(base - (base % size))}/${prefixLen}?)`)
  const mask = prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0
  return { base, prefixLen, size, cidr: `${formatIpv4(base)}/${prefixLen}`, netmask: formatIpv4(mask) }
}

export function inSubnet4 (s: Subnet4, addr: number): boolean {
  return addr >= s.base && addr < s.base + s.size
}

export function subnets4Overlap (a: Subnet4, b: Subnet4): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size
}

export interface Subnet6 {
  /** The first 8 bytes (a /64 or shorter prefix, zero-padded). */
  prefix: Uint8Array
  prefixLen: number
  cidr: string
}

/** Parses an IPv6 prefix `addr/len`, len ≤ 64 (host bits zero); throws BAD_NETWORK_PLAN. */
export function parseSubnet6 (cidr: string, what = 'subnet'): Subnet6 {
  const [addr, len, ...rest] = cidr.split('/')
  const prefixLen = /^\d{1,3}$/.test(len ?? '') ? Number(len) : NaN
  let bytes: Uint8Array
  try { bytes = parseIpv6(addr) } catch { bad(`${what} ${JSON.stringify(cidr)} is not an IPv6 prefix addr/len`) }
  if (rest.length > 0 || !(prefixLen >= 1 && prefixLen <= 64)) bad(`${what} ${cidr}: IPv6 prefixes of private networks are /64 or shorter`)
  for (let bit = prefixLen; bit < 128; bit++) {
    if ((bytes[bit >> 3] & (0x80 >> (bit & 7))) !== 0) bad(`${what} ${cidr} has host bits set`)
  }
  return { prefix: bytes.slice(0, 8), prefixLen, cidr: `${formatIpv6(bytes)}/${prefixLen}` }
}

export function inSubnet6 (s: Subnet6, addr: Uint8Array): boolean {
  for (let bit = 0; bit < s.prefixLen; bit++) {
    const m = 0x80 >> (bit & 7)
    if ((addr[bit >> 3] & m) !== (s.prefix[bit >> 3] & m)) return false
  }
  return true
}

// ---------------------------------------------------------------------------------------------
// IPv4 allocation

export interface IpamVm {
  id: string
  /** Static IPv4 address from the VM record; wins over allocation. */
  ip?: string
  /** Creation order (e.g. ms since epoch from the VM record); ties by id. @default 0 */
  created?: number
}

export interface Ipv4Allocation {
  subnet: Subnet4
  /** VM id → address. */
  vms: Map<string, string>
  /** Peer id → this host's address on the network's bridge. */
  hosts: Map<string, string>
}

/** The top region holds host addresses: a quarter of the usable range, 1 to 64 addresses. */
export function hostRegionSize (usable: number): number {
  return Math.max(1, Math.min(64, Math.floor(usable / 4)))
}

/**
 * Addresses for every VM of a network (static ones checked, others allocated) and for the hosts
 * in `hostsNeedingAddress`; see the module comment for the scheme. Deterministic: the same for any
 * order of the input; throws BAD_NETWORK_PLAN for a bad subnet, a bad or duplicate static address,
 * or a full subnet.
 */
export function allocateIpv4 (networkId: string, subnet4: string, vms: readonly IpamVm[], hostsNeedingAddress: readonly string[] = []): Ipv4Allocation {
  const subnet = parseSubnet4(subnet4, `network ${networkId}: subnet4`)
  if (subnet.size < 4) bad(`network ${networkId}: subnet4 ${subnet.cidr} is too small (a /30 at most: network and broadcast addresses are not usable)`)
  const first = subnet.base + 1
  const usable = subnet.size - 2
  const last = first + usable - 1
  const taken = new Map<number, string>() // address → who
  const vmOut = new Map<string, string>()
  const seenIds = new Set<string>()
  for (const vm of vms) {
    if (seenIds.has(vm.id)) bad(`network ${networkId}: VM ${vm.id} listed twice`)
    seenIds.add(vm.id)
  }
  const ordered = [...vms].sort((a, b) => (a.created ?? 0) - (b.created ?? 0) || compareStrings(a.id, b.id))

  // 1. Static addresses.
  for (const vm of [...ordered].sort((a, b) => compareStrings(a.id, b.id))) {
    if (vm.ip === undefined) continue
    const a = parseIpv4(vm.ip)
    if (a === undefined) bad(`network ${networkId}: VM ${vm.id} has a static address ${JSON.stringify(vm.ip)} that is not IPv4`)
    if (!inSubnet4(subnet, a)) bad(`network ${networkId}: VM ${vm.id} has the static address ${vm.ip}, outside the subnet ${subnet.cidr}`)
    if (a < first || a > last) bad(`network ${networkId}: VM ${vm.id} has the static address ${vm.ip}, the ${a === subnet.base ? 'network' : 'broadcast'} address of ${subnet.cidr}`)
    const other = taken.get(a)
    if (other !== undefined) bad(`network ${networkId}: the static address ${vm.ip} is given to two VMs (${other} and ${vm.id})`)
    taken.set(a, vm.id)
    vmOut.set(vm.id, formatIpv4(a))
  }

  const probe = (start: number, step: 1 | -1, who: string): number => {
    let a = start
    for (let i = 0; i < usable; i++) {
      if (!taken.has(a)) { taken.set(a, who); return a }
      a += step
      if (a > last) a = first
      if (a < first) a = last
    }
    return bad(`network ${networkId}: subnet ${subnet.cidr} is full (${usable} usable addresses for ${vms.length} VMs and ${hostsNeedingAddress.length} hosts)`)
  }

  // 2. Host addresses, from the top.
  const region = hostRegionSize(usable)
  const hostOut = new Map<string, string>()
  for (const peer of [...new Set(hostsNeedingAddress)].sort(compareStrings)) {
    const start = last - (hash32(`picocloud/ipam-host/${networkId}/${peer}`) % region)
    hostOut.set(peer, formatIpv4(probe(start, -1, `host ${peer}`)))
  }

  // 3. VM addresses, hashed into the bottom of the subnet.
  const vmSpace = Math.max(1, usable - region)
  for (const vm of ordered) {
    if (vm.ip !== undefined) continue
    const start = first + (hash32(`picocloud/ipam-vm/${networkId}/${vm.id}`) % vmSpace)
    vmOut.set(vm.id, formatIpv4(probe(start, 1, `VM ${vm.id}`)))
  }
  return { subnet, vms: vmOut, hosts: hostOut }
}

// ---------------------------------------------------------------------------------------------
// IPv6 host addresses

/**
 * A made-up IPv6 interface id: the first 64 bits of sha256 of `seed` (and `#attempt` after a
 * collision), with the universal/local bit clear (RFC 4291 "local" scope) and outside the EUI-64
 * range of ids derived from MACs (ff:fe in the middle), where guests' SLAAC addresses live.
 */
function hashedInterfaceId (seed: string, attempt: number): Uint8Array {
  const iid = Uint8Array.from(createHash('sha256').update(seed + (attempt === 0 ? '' : `#${attempt}`), 'utf8').digest().subarray(0, 8))
  iid[0] &= 0xfd
  if (iid[3] === 0xff && iid[4] === 0xfe) iid[4] = 0xfd
  return iid
}

/**
 * Interface ids for the hosts of a network (for their bridge addresses in the network's prefix and
 * their link-local addresses): first 64 bits of sha256, rehashed on a (practically impossible)
 * collision or a reserved id, hosts in order of peer id.
 */
export function hostInterfaceIds6 (networkId: string, peers: readonly string[]): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>()
  const used = new Set<string>()
  for (const peer of [...new Set(peers)].sort(compareStrings)) {
    for (let attempt = 0; ; attempt++) {
      const iid = hashedInterfaceId(`picocloud/ipam-host6/${networkId}/${peer}`, attempt)
      const key = Buffer.from(iid).toString('hex')
      if (isReservedInterfaceId(iid) || used.has(key)) continue
      used.add(key)
      out.set(peer, iid)
      break
    }
  }
  return out
}

/**
 * IPv6 addresses of the VMs of a `dhcpv6` network in its /64 (`prefix`): each VM's interface id
 * is the first 64 bits of sha256 of the network and VM ids (rehashed on a collision with another
 * VM, a static address or a reserved id, VMs in order of id), so every host computes the same
 * address for a VM whatever else it knows. `taken`: static addresses of the network (text).
 */
export function allocateIpv6 (networkId: string, prefix: Uint8Array, vmIds: readonly string[], taken: ReadonlySet<string> = new Set()): Map<string, string> {
  const out = new Map<string, string>()
  const used = new Set(taken)
  for (const id of [...new Set(vmIds)].sort(compareStrings)) {
    for (let attempt = 0; ; attempt++) {
      const iid = hashedInterfaceId(`picocloud/ipam-vm6/${networkId}/${id}`, attempt)
      const text = joinIpv6(prefix, iid)
      if (isReservedInterfaceId(iid) || used.has(text)) continue
      used.add(text)
      out.set(id, text)
      break
    }
  }
  return out
}

/** `prefix::iid` as text. */
export function joinIpv6 (prefix: Uint8Array, iid: Uint8Array): string {
  const b = new Uint8Array(16)
  b.set(prefix.subarray(0, 8), 0)
  b.set(iid, 8)
  return formatIpv6(b)
}

export const LINK_LOCAL_PREFIX = Uint8Array.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0])
