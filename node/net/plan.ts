/**
 * The data plane of one host as a pure function: `planHost(input)` gives the desired devices,
 * `diff(desired, actual)` the ordered, minimal steps that make the actual state match (after
 * innernet's `PeerDiff`: nothing for what is already right, readable descriptions for the rest).
 *
 * @example
 * const desired = planHost(input)
 * const steps = diff(desired, await driver.readState({ wgIfname: desired.wireguard.ifname }))
 * await driver.apply(steps)
 */
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import {
  assignVnis, bridgeName, vxlanName, networkMtu, wireguardMtu, canonicalIp, checkIfname, deriveMac,
  compareStrings, DEFAULT_WG_IFNAME, HOST_PREFIX_LEN, VXLAN_PORT, WG_KEEPALIVE, BRIDGE_PREFIX, VXLAN_PREFIX
} from './addressing.ts'

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

export type NetworkMode = 'static' | 'dhcp' | 'slaac'

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
}

export interface DesiredState {
  wireguard: DesiredWireguard
  networks: DesiredNetwork[]
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
  /** Global addresses as `addr/len` (link-local ones left out). */
  addresses: string[]
}

export interface ActualPeer {
  publicKey: string
  endpoint?: string
  allowedIps: string[]
  /** Seconds, 0 when off. */
  keepalive: number
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
    networks.push({
      networkId: n.id,
      name: n.name,
      vni,
      mtu: netMtu,
      bridge: { ifname: bridgeName(vni), mac: deriveMac(`bridge/${n.id}/${self.peerId}`) },
      vxlan: { ifname: vxlanName(vni), local: myAddr, port: VXLAN_PORT },
      fdb,
      taps: [...new Set(n.localTaps)].sort(compareStrings)
    })
  }
  networks.sort((a, b) => a.vni - b.vni)

  return {
    wireguard: {
      ifname,
      privateKey: clampPrivateKey(self.wgPrivateKey),
      listenPort: self.listenPort,
      mtu: wgMtu,
      address: `${myAddr}/${HOST_PREFIX_LEN}`,
      peers
    },
    networks
  }
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
  }
  return steps
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
