/**
 * Data-plane addressing: pure, deterministic functions that every host evaluates on the same
 * replicated data and so reaches the same answer without asking anyone.
 *
 * Scheme (see DESIGN.md, "Data plane"):
 * - Mesh prefix: an RFC 4193 ULA /48, `fd` + the first 40 bits of sha256("picocloud/mesh/" + meshId).
 * - Host overlay addresses: all hosts live in ONE /64, subnet 0 of the mesh /48
 *   (`fdXX:XXXX:XXXX:0000::/64`); the interface id is the first 64 bits of
 *   sha256("picocloud/host/" + peerId). One /64 means one on-link route on the WireGuard interface
 *   and one `/128` allowed-ip per peer; hosts do not route subnets to each other (private networks
 *   are layer 2 over VXLAN), so a /64 per host would only cost routes. Subnets 1..ffff stay free
 *   for later use (e.g. routed VM prefixes).
 * - Collisions (64-bit: ~n²/2⁶⁵, but checked anyway) are resolved deterministically: peers are
 *   taken in sorted order of peer id, the first keeps its address, a later one rehashes with a
 *   counter until it finds a free, non-reserved interface id.
 * - VNIs: 24 bits from sha256("picocloud/vni/" + networkId), in 1..0xfffffe (0 and 0xffffff are
 *   never used). Collisions are resolved by taking networks in sorted order of id and probing the
 *   next value, so every host computes the same table.
 * - Device names: `pc-` prefix, at most 15 characters (IFNAMSIZ − 1): `pc-br<vni hex>`,
 *   `pc-vx<vni hex>`, WireGuard `pc-wg0` (configurable: test namespaces share the UAPI socket dir).
 * - MTU: underlay − WireGuard (80 with an IPv6 outer header, 60 with IPv4) − VXLAN over the IPv6
 *   overlay (70).
 *
 * @example
 * const prefix = meshPrefix('mesh-1')               // 'fd12:3456:789a::/48'
 * const addrs = assignOverlayAddresses('mesh-1', ['12D3KooA…', '12D3KooB…'])
 * const vnis = assignVnis(['net-a', 'net-b'])       // Map { 'net-a' => 123456, … }
 */
import { createHash } from 'node:crypto'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'

export const IFNAME_MAX = 15
export const DEVICE_PREFIX = 'pc-'
export const DEFAULT_WG_IFNAME = 'pc-wg0'
export const BRIDGE_PREFIX = 'pc-br'
export const VXLAN_PREFIX = 'pc-vx'
export const VXLAN_PORT = 4789
export const WG_DEFAULT_PORT = 51820
export const WG_KEEPALIVE = 25

/** WireGuard encapsulation: outer IP (40 IPv6 / 20 IPv4) + UDP 8 + WireGuard header 16 + tag 16. */
export const WG_OVERHEAD_IPV6 = 80
export const WG_OVERHEAD_IPV4 = 60
/** VXLAN encapsulation: inner Ethernet 14 + VXLAN 8 + UDP 8 + outer IP (20 IPv4 / 40 IPv6). */
export const VXLAN_OVERHEAD_IPV4 = 50
export const VXLAN_OVERHEAD_IPV6 = 70

export const VNI_MIN = 1
export const VNI_MAX = 0xfffffe

function sha256 (text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest()
}

// ---------------------------------------------------------------------------------------------
// IPv6 text

/** Parses an IPv6 address (no zone, no embedded IPv4) into 16 bytes; throws BAD_ADDRESS. */
export function parseIpv6 (text: string): Uint8Array {
  const bad = (): never => { throw new PicocloudError(ErrorCode.BadAddress, `not an IPv6 address: ${JSON.stringify(text)}`) }
  if (!/^[0-9a-fA-F:]+$/.test(text)) bad()
  const halves = text.split('::')
  if (halves.length > 2) bad()
  const parse = (s: string): number[] => s === '' ? [] : s.split(':').map(g => {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) bad()
    return parseInt(g, 16)
  })
  const head = parse(halves[0])
  const tail = halves.length === 2 ? parse(halves[1]) : []
  const fill = 8 - head.length - tail.length
  if (halves.length === 1 ? fill !== 0 : fill < 1) bad()
  const groups = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...tail]
  const out = new Uint8Array(16)
  groups.forEach((g, i) => { out[2 * i] = g >> 8; out[2 * i + 1] = g & 0xff })
  return out
}

/** Formats 16 bytes as RFC 5952 canonical text (lowercase, longest zero run compressed). */
export function formatIpv6 (bytes: Uint8Array): string {
  const groups: number[] = []
  for (let i = 0; i < 8; i++) groups.push((bytes[2 * i] << 8) | bytes[2 * i + 1])
  let bestStart = -1
  let bestLen = 0
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLen) { bestStart = i; bestLen = j - i }
    i = j
  }
  const hex = (gs: number[]): string => gs.map(g => g.toString(16)).join(':')
  if (bestLen < 2) return hex(groups)
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`
}

/** Canonical text of an IPv6 address, or the input unchanged when it is not IPv6 (e.g. IPv4). */
export function canonicalIp (text: string): string {
  if (!text.includes(':')) return text
  return formatIpv6(parseIpv6(text))
}

// ---------------------------------------------------------------------------------------------
// Mesh prefix and host addresses

/** The first 48 bits (6 bytes) of the mesh ULA: 0xfd + 40 bits of sha256. */
export function meshPrefixBytes (meshId: string): Uint8Array {
  if (meshId === '') throw new PicocloudError(ErrorCode.BadRequest, 'mesh id is empty')
  const h = sha256('picocloud/mesh/' + meshId)
  return Uint8Array.from([0xfd, h[0], h[1], h[2], h[3], h[4]])
}

/** The mesh ULA /48, e.g. `fd12:3456:789a::/48`. */
export function meshPrefix (meshId: string): string {
  const b = new Uint8Array(16)
  b.set(meshPrefixBytes(meshId), 0)
  return `${formatIpv6(b)}/48`
}

/** The /64 that holds every host's overlay address (subnet 0 of the mesh /48). */
export function hostSubnet (meshId: string): string {
  const b = new Uint8Array(16)
  b.set(meshPrefixBytes(meshId), 0)
  return `${formatIpv6(b)}/64`
}

export const HOST_PREFIX_LEN = 64

/**
 * Interface ids that must not be given to a host: the subnet-router anycast (all zero) and the
 * RFC 5453 reserved anycast range fdff:ffff:ffff:ff80 – ffff.
 */
export function isReservedInterfaceId (iid: Uint8Array): boolean {
  if (iid.every(b => b === 0)) return true
  const reservedHead = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
  return reservedHead.every((v, i) => iid[i] === v) && iid[7] >= 0x80
}

function interfaceId (peerId: string, attempt: number): Uint8Array {
  const seed = attempt === 0 ? `picocloud/host/${peerId}` : `picocloud/host/${peerId}#${attempt}`
  return Uint8Array.from(sha256(seed).subarray(0, 8))
}

function hostAddress (prefix: Uint8Array, iid: Uint8Array): string {
  const b = new Uint8Array(16)
  b.set(prefix, 0) // bytes 6 and 7 (subnet id) stay 0
  b.set(iid, 8)
  return formatIpv6(b)
}

/** The address a host would get alone (no collision): useful for display; use assign… for real. */
export function overlayAddress (meshId: string, peerId: string): string {
  return hostAddress(meshPrefixBytes(meshId), firstFree(peerId, () => false))
}

/** Interface id of a peer for a given attempt (0 first, then 1, 2… after collisions). */
export type InterfaceIdFn = (peerId: string, attempt: number) => Uint8Array

function firstFree (peerId: string, taken: (key: string) => boolean, iidOf: InterfaceIdFn = interfaceId): Uint8Array {
  for (let attempt = 0; ; attempt++) {
    const iid = iidOf(peerId, attempt)
    if (!isReservedInterfaceId(iid) && !taken(Buffer.from(iid).toString('hex'))) return iid
  }
}

/**
 * Overlay address of every member, collision-free. Deterministic for a given set of peer ids
 * (order and duplicates in the input do not matter).
 */
export function assignOverlayAddresses (meshId: string, peerIds: Iterable<string>, iidOf: InterfaceIdFn = interfaceId): Map<string, string> {
  const prefix = meshPrefixBytes(meshId)
  const sorted = [...new Set(peerIds)].sort(compareStrings)
  const used = new Set<string>()
  const out = new Map<string, string>()
  for (const peerId of sorted) {
    const iid = firstFree(peerId, key => used.has(key), iidOf)
    used.add(Buffer.from(iid).toString('hex'))
    out.set(peerId, hostAddress(prefix, iid))
  }
  return out
}

/** Collisions of the naive (attempt 0) addresses (the prefix is common: only interface ids count): groups of peer ids that would share one. */
export function findAddressCollisions (peerIds: Iterable<string>, iidOf: InterfaceIdFn = interfaceId): string[][] {
  const byIid = new Map<string, string[]>()
  for (const peerId of [...new Set(peerIds)].sort(compareStrings)) {
    const key = Buffer.from(iidOf(peerId, 0)).toString('hex')
    byIid.set(key, [...(byIid.get(key) ?? []), peerId])
  }
  return [...byIid.values()].filter(g => g.length > 1)
}

/** Code-unit order, the same on every host whatever its locale. */
export function compareStrings (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

// ---------------------------------------------------------------------------------------------
// VNIs

export function rawVni (networkId: string, attempt = 0): number {
  const h = sha256(attempt === 0 ? `picocloud/vni/${networkId}` : `picocloud/vni/${networkId}#${attempt}`)
  const v = (h[0] << 16) | (h[1] << 8) | h[2]
  return VNI_MIN + (v % (VNI_MAX - VNI_MIN + 1))
}

/**
 * VNI of every network, collision-free: networks in sorted order of id, each takes its hashed VNI
 * or, when taken, the next free one (wrapping within 1..0xfffffe).
 */
export function assignVnis (networkIds: Iterable<string>): Map<string, number> {
  const sorted = [...new Set(networkIds)].sort(compareStrings)
  if (sorted.length > VNI_MAX - VNI_MIN + 1) throw new PicocloudError(ErrorCode.BadRequest, 'more networks than VNIs')
  const used = new Set<number>()
  const out = new Map<string, number>()
  for (const id of sorted) {
    let v = rawVni(id)
    while (used.has(v)) v = v === VNI_MAX ? VNI_MIN : v + 1
    used.add(v)
    out.set(id, v)
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Device names

function vniHex (vni: number): string {
  if (!Number.isInteger(vni) || vni < VNI_MIN || vni > VNI_MAX) {
    throw new PicocloudError(ErrorCode.BadRequest, `VNI out of range: ${vni}`)
  }
  return vni.toString(16).padStart(6, '0')
}

/** `pc-br` + 6 hex digits of the VNI (11 characters). */
export function bridgeName (vni: number): string { return BRIDGE_PREFIX + vniHex(vni) }
/** `pc-vx` + 6 hex digits of the VNI (11 characters). */
export function vxlanName (vni: number): string { return VXLAN_PREFIX + vniHex(vni) }

/** True for a valid Linux interface name of ours: `pc-` prefix, ≤ 15 characters, no / or space. */
export function isOurIfname (name: string): boolean {
  return name.startsWith(DEVICE_PREFIX) && isValidIfname(name)
}

export function isValidIfname (name: string): boolean {
  return name.length > 0 && name.length <= IFNAME_MAX && /^[A-Za-z0-9_.-]+$/.test(name) && name !== '.' && name !== '..'
}

/** Throws BAD_REQUEST unless `name` is a valid `pc-` interface name. */
export function checkIfname (name: string): string {
  if (!isOurIfname(name)) {
    throw new PicocloudError(ErrorCode.BadRequest, `bad interface name ${JSON.stringify(name)}: needs the pc- prefix, at most ${IFNAME_MAX} characters of [A-Za-z0-9_.-]`)
  }
  return name
}

// ---------------------------------------------------------------------------------------------
// MTU

export function wireguardOverhead (underlayIpv6: boolean): number {
  return underlayIpv6 ? WG_OVERHEAD_IPV6 : WG_OVERHEAD_IPV4
}

/** MTU of the WireGuard interface. */
export function wireguardMtu (underlayMtu: number, underlayIpv6: boolean): number {
  return checkMtu(underlayMtu - wireguardOverhead(underlayIpv6))
}

/** MTU of a private network (bridge, VXLAN, taps, and what DHCP/RA hand to VMs). */
export function networkMtu (underlayMtu: number, underlayIpv6: boolean): number {
  return checkMtu(wireguardMtu(underlayMtu, underlayIpv6) - VXLAN_OVERHEAD_IPV6)
}

function checkMtu (mtu: number): number {
  // IPv6 (the overlay and guests' IPv6) needs at least 1280.
  if (!Number.isInteger(mtu) || mtu < 1280) {
    throw new PicocloudError(ErrorCode.BadRequest, `underlay MTU too small: the resulting MTU ${mtu} is below IPv6's 1280`)
  }
  return mtu
}

// ---------------------------------------------------------------------------------------------
// MACs

/** A locally administered, unicast MAC derived from `seed` (e.g. `${networkId}/${peerId}`). */
export function deriveMac (seed: string): string {
  const h = sha256('picocloud/mac/' + seed)
  const b = [...h.subarray(0, 6)]
  b[0] = (b[0] & 0xfc) | 0x02
  return b.map(x => x.toString(16).padStart(2, '0')).join(':')
}
