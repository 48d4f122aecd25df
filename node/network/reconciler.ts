/**
 * The network reconciler of this host: from the replicated state, the data plane of DESIGN.md
 * ("Data plane") — one WireGuard interface with a peer for every member (its key derived from its
 * peer id, never read from its record: keys/wireguard.ts), and per private network
 * that has VMs here a bridge and a VXLAN device flooding to exactly the other hosts that carry VMs
 * of it, the local VMs' taps on it, dnsmasq where the network needs it — made real through the
 * network driver. Plan (node/network/plan.ts) → read actual → diff → apply the smallest change →
 * publish a short status per network in this host's record, only when it changes.
 * Runs on every state change and every few seconds; passes never overlap; a failed pass is logged
 * and counted, never thrown. A restart finds every device right and changes nothing.
 *
 * Bad input never breaks the other networks: a static address outside its subnet or already taken
 * (the VM created later, by id on a tie, loses it) is left out with a warning; a network that
 * still cannot be planned (e.g. its subnet overlaps another one this host serves, the later network
 * losing) is not built here, and the reason is published in `netError`.
 *
 * @example
 * const r = new NetworkReconciler({ store, world: () => scheduler.world(), driver, config: config.network, wgPrivateKey, runtimeDir, log })
 * r.start(); await r.settle() // a pass that saw the current state has finished
 */
import { isDeepStrictEqual } from 'node:util'
import type { StateStore } from '../../crdt/store.ts'
import type { World, VmEntry } from '../../crdt/world.ts'
import { isActiveMember, optString, type MeshDoc, type HostRecord, type HostNetStatus } from '../../crdt/schema.ts'
import { tapName, vmMac } from '../devices.ts'
import type { NetworkDriver } from './drivers/types.ts'
import { planHost, diff, type PlanInput, type PlanNetwork, type PlanVm, type PlanMember, type DesiredState, type ActualState } from './plan.ts'
import { assignOverlayAddresses, compareStrings, canonicalIp, parseIpv6, formatIpv6, WG_DEFAULT_PORT } from './addressing.ts'
import { parseIpv4, parseSubnet4, inSubnet4, parseSubnet6, inSubnet6 } from './ipam.ts'
import { isEndpoint, type NetworkConfig } from './config.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import { wireguardPublicKeyForPeer, wireguardKeyPairFromPrivate } from '../../keys/wireguard.ts'
import type { Logger } from '../log.ts'

export interface NetworkReconcilerInit {
  store: StateStore
  world: () => World
  driver: NetworkDriver
  config: NetworkConfig
  /** Base64 X25519 private key of this host: `loadWireguardKey` (keys/wireguard.ts), derived from its peer key. */
  wgPrivateKey: string
  /** @deprecated ignored: every host's public key, this one's too, is derived from its peer id. */
  wgPublicKey?: string
  /** `<state>/net`: dnsmasq files per network. */
  runtimeDir: string
  log: Logger
  /**
   * How often the data plane is checked against the state with nothing changed (drift: an
   * interface someone removed). Every change of the state kicks a pass at once anyway. Each pass
   * reads links, addresses, WireGuard and nftables through a few commands, whose spawning is most
   * of an idle daemon's CPU: at 5 s an idle 10-host mesh used 0.63 % of a core per host, at 15 s
   * 0.43 % (ten idle daemons, CPU over 30 s). @default 15000
   */
  intervalMs?: number
}

export interface NetworkReconcileStats { passes: number, errors: number, lastMs: number, totalMs: number, steps: number }

/** What the last pass saw and did (for `status`). */
export interface NetworkObservation {
  at: number
  desired?: DesiredState
  actual?: ActualState
  steps: number
  error?: string
  problems: string[]
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/**
 * Underlay endpoints from libp2p multiaddrs (`/ip4/a.b.c.d/tcp/…`, `/ip6/…/tcp/…`) and a WireGuard
 * port: unspecified, loopback and link-local addresses are left out unless that is all there is.
 */
export function deriveEndpoints (multiaddrs: readonly string[], port: number): string[] {
  const all: Array<{ ep: string, good: boolean }> = []
  for (const a of multiaddrs) {
    const m = /^\/(ip4|ip6)\/([^/]+)\//.exec(String(a))
    if (m === null) continue
    const v6 = m[1] === 'ip6'
    let ip = m[2]
    if (v6) { try { ip = canonicalIp(ip) } catch { continue } }
    const ep = v6 ? `[${ip}]:${port}` : `${ip}:${port}`
    if (!isEndpoint(ep)) continue
    const good = v6 ? !(ip === '::' || ip === '::1' || /^fe[89ab]/i.test(ip)) : !(ip === '0.0.0.0' || ip.startsWith('127.') || ip.startsWith('169.254.'))
    if (!all.some(x => x.ep === ep)) all.push({ ep, good })
  }
  const good = all.filter(x => x.good)
  return (good.length > 0 ? good : all.filter(x => !x.ep.startsWith('0.0.0.0') && !x.ep.startsWith('[::]'))).map(x => x.ep)
}

/** The endpoints other hosts use for a member: what it published, else derived from its libp2p addresses. */
export function memberEndpoints (rec: Partial<HostRecord> | undefined): string[] {
  if (rec === undefined) return []
  if (Array.isArray(rec.wgEndpoints)) return rec.wgEndpoints.map(String).filter(isEndpoint)
  const port = typeof rec.wgPort === 'number' ? rec.wgPort : WG_DEFAULT_PORT
  return deriveEndpoints((rec.addresses ?? []).map(String), port)
}

// ---------------------------------------------------------------------------------------------
// Plan input from the state

export interface BuiltInput { input: PlanInput, problems: string[] }

export interface BuildOptions {
  self: string
  /** Should be the key derived from `self`'s peer key (keys/wireguard.ts); a problem is reported when it is not. */
  wgPrivateKey: string
  /** @deprecated ignored: derived from `self`. */
  wgPublicKey?: string
  config: NetworkConfig
  runtimeDir: string
}

const liveOn = (vm: VmEntry): boolean => vm.desired !== 'destroyed' && vm.rejected === undefined && vm.host !== null

/**
 * The WireGuard public key of each member that takes part in the data plane. Keys are derived from
 * the peer ids (keys/wireguard.ts), never taken from the records, so no member can claim another
 * host's key; a record that publishes another value is reported and the value ignored.
 * A member takes part once it has written its record (self always): only the holder of a peer key
 * can write that host's record, so an admitted peer id that nobody holds — e.g. another host's
 * Ed25519 key with the sign of x flipped, which maps to the same X25519 key — never becomes a peer.
 */
function wireguardKeys (doc: MeshDoc, peers: readonly string[], o: BuildOptions, problems: string[]): Map<string, string> {
  const who = (p: string): string => `${p} (${JSON.stringify(optString(doc.members?.[p]?.name ?? doc.hosts?.[p]?.name) ?? '?')})`
  const keyOf = new Map<string, string>()
  for (const p of peers) {
    const rec = doc.hosts?.[p] as Partial<HostRecord> | undefined
    if (rec === undefined && p !== o.self) continue
    let key: string
    try {
      key = wireguardPublicKeyForPeer(p)
    } catch (err: any) {
      problems.push(`host ${who(p)} is left out of WireGuard: ${String(err.message)}`)
      continue
    }
    const published = optString(rec?.wgPublicKey)
    if (published !== undefined && published !== key) {
      problems.push(`host ${who(p)} publishes WireGuard key ${published.slice(0, 8)}…, not the one derived from its peer id (${key.slice(0, 8)}…): the published key is ignored`)
    }
    keyOf.set(p, key)
  }
  let own: string | undefined
  try { own = wireguardKeyPairFromPrivate(o.wgPrivateKey).publicKey } catch {}
  const mine = keyOf.get(o.self)
  if (mine !== undefined && own !== mine) {
    problems.push('this host\'s WireGuard private key is not the one derived from its peer key (keys/wireguard.ts loadWireguardKey): other hosts will not accept its tunnels')
  }
  // Two peer ids with one derived key: the same X25519 key behind both, which only the holder of
  // that key can have arranged (each needs a record signed by its own key). Neither is used, but
  // this host is never left out of its own plan.
  const owners = new Map<string, string[]>()
  for (const [p, k] of keyOf) owners.set(k, [...(owners.get(k) ?? []), p])
  for (const [k, ps] of owners) {
    if (ps.length < 2) continue
    for (const p of ps) if (p !== o.self) keyOf.delete(p)
    problems.push(`peer ids ${ps.join(', ')} have the same WireGuard key ${k.slice(0, 8)}…: ${ps.filter(p => p !== o.self).join(', ')} left out`)
  }
  return keyOf
}

/** PlanInput from the replicated state: every host builds the same mesh-wide lists. */
export function buildPlanInput (doc: MeshDoc, world: World, o: BuildOptions): BuiltInput {
  const problems: string[] = []
  const peers = Object.keys(doc.members ?? {}).filter(p => isActiveMember(doc, p)).sort(compareStrings)
  const overlay = assignOverlayAddresses(doc.mesh.id, peers)
  const keyOf = wireguardKeys(doc, peers, o, problems)
  const members: PlanMember[] = [...keyOf].map(([peerId, wgPublicKey]) => ({
    peerId,
    wgPublicKey,
    endpoints: memberEndpoints(doc.hosts?.[peerId]),
    overlayAddr: overlay.get(peerId) as string
  }))
  const memberSet = new Set(keyOf.keys())

  const networks: PlanNetwork[] = []
  const vms = [...world.vms.values()].filter(liveOn).sort((a, b) => a.created - b.created || compareStrings(a.id, b.id))
  for (const net of [...world.nets.values()].sort((a, b) => compareStrings(a.id, b.id))) {
    const planVms: PlanVm[] = []
    const hosts = new Set<string>()
    const taps: string[] = []
    const used4 = new Map<number, string>()
    const used6 = new Map<string, string>()
    let s4: ReturnType<typeof parseSubnet4> | undefined
    let s6: ReturnType<typeof parseSubnet6> | undefined
    try { s4 = net.spec.subnet.ipv4 === undefined ? undefined : parseSubnet4(net.spec.subnet.ipv4) } catch {}
    try { s6 = net.spec.subnet.ipv6 === undefined ? undefined : parseSubnet6(net.spec.subnet.ipv6) } catch {}
    for (const vm of vms) {
      vm.nics.forEach((nic, i) => {
        if (nic.net !== net.name || vm.host === null || !memberSet.has(vm.host)) return
        const pv: PlanVm = { id: planVms.some(x => x.id === vm.id) ? `${vm.id}/${i}` : vm.id, name: vm.name, mac: vmMac(vm.id, i), hostPeerId: vm.host, created: vm.created }
        if (nic.ip !== undefined) {
          const drop = (why: string): void => { problems.push(`network ${net.name}: VM ${vm.name} (${vm.id.slice(0, 8)}) keeps no static address: ${why}`) }
          const a4 = parseIpv4(nic.ip)
          if (a4 !== undefined) {
            if (s4 === undefined) drop(`${nic.ip} is IPv4 and the network has no IPv4 subnet`)
            else if (!inSubnet4(s4, a4) || a4 === s4.base || a4 === s4.base + s4.size - 1) drop(`${nic.ip} is not a usable address of ${s4.cidr}`)
            else if (used4.has(a4)) drop(`${nic.ip} is already given to ${used4.get(a4) as string}`)
            else { used4.set(a4, vm.name); pv.ip = nic.ip }
          } else {
            let a6: Uint8Array | undefined
            try { a6 = parseIpv6(nic.ip) } catch {}
            const text = a6 === undefined ? undefined : formatIpv6(a6)
            if (a6 === undefined || text === undefined) drop(`${nic.ip} is not an address`)
            else if (s6 === undefined) drop(`${nic.ip} is IPv6 and the network has no IPv6 subnet`)
            else if (!inSubnet6(s6, a6)) drop(`${nic.ip} is outside ${s6.cidr}`)
            else if (used6.has(text)) drop(`${nic.ip} is already given to ${used6.get(text) as string}`)
            else { used6.set(text, vm.name); pv.ip6 = text }
          }
        }
        planVms.push(pv)
        hosts.add(vm.host)
        if (vm.host === o.self) taps.push(tapName(vm.id, i))
      })
    }
    networks.push({
      id: net.id,
      name: net.name,
      ...(net.spec.subnet.ipv4 !== undefined ? { subnet4: net.spec.subnet.ipv4 } : {}),
      ...(net.spec.subnet.ipv6 !== undefined ? { subnet6: net.spec.subnet.ipv6 } : {}),
      mode: net.spec.mode,
      gateway: typeof net.spec.gateway === 'object' ? { vm: net.spec.gateway.vm } : net.spec.gateway,
      hostsWithVms: [...hosts].sort(compareStrings),
      localTaps: taps.sort(compareStrings),
      vms: planVms
    })
  }
  const input: PlanInput = {
    self: { peerId: o.self, wgPrivateKey: o.wgPrivateKey, listenPort: o.config.wgPort },
    members,
    networks,
    underlayMtu: o.config.underlayMtu,
    wgIfname: o.config.wgIfname,
    runtimeDir: o.runtimeDir,
    domain: meshDomain(optString(doc.mesh.name) ?? '')
  }
  return { input, problems }
}

/**
 * The mesh's name as a DNS label, the domain its VMs' names live under (`web.lan.<domain>`):
 * lower case, anything but a-z, 0-9 and - made a -, at most 63; "mesh" when nothing is left.
 */
export function meshDomain (name: string): string {
  const label = name.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63).replace(/-+$/, '')
  return label === '' ? 'mesh' : label
}

/**
 * planHost, and when it refuses the input: networks are added one at a time (in the order they
 * were created) and a network that makes the plan fail is kept out of this host's data plane (it
 * still counts for VNIs, so the others' VNIs do not move). Throws only when even no network plans.
 */
export function planResilient (input: PlanInput, createdOrder: readonly string[]): { desired: DesiredState, excluded: Array<{ network: string, reason: string }> } {
  try {
    return { desired: planHost(input), excluded: [] }
  } catch (err) {
    if (!(err instanceof PicocloudError) || err.code !== ErrorCode.BadNetworkPlan) throw err
  }
  const off = (n: PlanNetwork): PlanNetwork => ({ ...n, hostsWithVms: [], localTaps: [], vms: [] })
  const order = [...input.networks].sort((a, b) => createdOrder.indexOf(a.id) - createdOrder.indexOf(b.id))
  const kept = new Set<string>()
  const excluded: Array<{ network: string, reason: string }> = []
  const attempt = (): DesiredState => planHost({ ...input, networks: input.networks.map(n => kept.has(n.id) ? n : off(n)) })
  let desired = attempt()
  for (const n of order) {
    kept.add(n.id)
    try {
      desired = attempt()
    } catch (err: any) {
      kept.delete(n.id)
      excluded.push({ network: n.name, reason: String(err.message) })
    }
  }
  return { desired, excluded }
}

// ---------------------------------------------------------------------------------------------
// The loop

export class NetworkReconciler {
  private readonly init: NetworkReconcilerInit
  private running?: Promise<void>
  private again = false
  private timer?: NodeJS.Timeout
  private stopped = false
  private lastProblems = ''
  readonly stats: NetworkReconcileStats = { passes: 0, errors: 0, lastMs: 0, totalMs: 0, steps: 0 }
  /** The last pass: what it wanted, found and did. */
  last?: NetworkObservation

  constructor (init: NetworkReconcilerInit) {
    this.init = init
  }

  start (): void {
    this.stopped = false
    this.timer = setInterval(() => this.kick(), this.init.intervalMs ?? 15_000)
    this.timer.unref()
    this.kick()
  }

  stop (): void {
    this.stopped = true
    clearInterval(this.timer)
  }

  kick (): void {
    if (this.stopped) return
    if (this.running !== undefined) { this.again = true; return }
    this.running = (async () => {
      do {
        this.again = false
        const t0 = performance.now()
        try {
          await this.pass()
        } catch (err: any) {
          this.stats.errors++
          // Once per distinct error: a lasting failure is retried every pass without flooding the log.
          if (this.last?.error !== String(err.message)) this.init.log.error('network reconcile pass failed', { error: err.message })
          else this.init.log.debug('network reconcile pass failed again', { error: err.message })
          this.last = { at: Date.now(), steps: 0, error: String(err.message), problems: this.last?.problems ?? [] }
          await this.publishError(String(err.message)).catch(() => {})
        }
        const ms = performance.now() - t0
        this.stats.passes++; this.stats.lastMs = ms; this.stats.totalMs += ms
      } while (this.again && !this.stopped)
    })().finally(() => { this.running = undefined })
  }

  async idle (): Promise<void> {
    while (this.running !== undefined) await this.running
  }

  /** Runs a pass that sees the current state and waits for it (e.g. before a VM needs its bridge). */
  async settle (): Promise<void> {
    this.kick()
    await this.idle()
  }

  private async pass (): Promise<void> {
    const { store, driver, log, config } = this.init
    if (!store.inMesh || !isActiveMember(store.doc, store.self)) return
    const doc = store.doc
    const world = this.init.world()
    const { input, problems } = buildPlanInput(doc, world, {
      self: store.self, wgPrivateKey: this.init.wgPrivateKey, config, runtimeDir: this.init.runtimeDir
    })
    const order = [...world.nets.values()].sort((a, b) => a.created - b.created || compareStrings(a.id, b.id)).map(n => n.id)
    const { desired, excluded } = planResilient(input, order)
    for (const e of excluded) problems.push(`network ${e.network} is not built on this host: ${e.reason}`)
    const text = problems.join('\n')
    if (text !== this.lastProblems) for (const p of problems) log.warn(p)
    this.lastProblems = text
    const actual = await driver.readState({ wgIfname: desired.wireguard.ifname, runtimeDir: this.init.runtimeDir })
    const steps = diff(desired, actual)
    for (const s of steps) log.info(s.description, { step: s.type })
    try {
      await driver.apply(steps)
    } finally {
      this.stats.steps += steps.length
    }
    this.last = { at: Date.now(), desired, actual, steps: steps.length, problems }
    await this.publish(desired, problems)
  }

  /** This host's view of each network it carries, written only when it changed. */
  private async publish (desired: DesiredState, problems: string[]): Promise<void> {
    const { store } = this.init
    const want: Record<string, HostNetStatus> = {}
    for (const n of desired.networks) {
      want[n.networkId] = { vni: n.vni, bridge: n.bridge.ifname, vxlan: n.vxlan.ifname, mtu: n.mtu, fdb: [...n.fdb], taps: [...n.taps], dnsmasq: n.dnsmasq !== undefined }
    }
    const rec = store.doc.hosts?.[store.self]
    const cur = JSON.parse(JSON.stringify(rec?.nets ?? {}))
    const err = problems.length > 0 ? problems.join('; ') : undefined
    if (isDeepStrictEqual(cur, want) && (rec?.netError ?? undefined) === err) return
    await store.change('publish network status', d => {
      const r = d.host
      if (r === undefined) return
      r.nets ??= {}
      for (const k of Object.keys(r.nets)) if (want[k] === undefined) delete r.nets[k]
      for (const [k, v] of Object.entries(want)) if (!isDeepStrictEqual(JSON.parse(JSON.stringify(r.nets[k] ?? null)), v)) r.nets[k] = v
      if (err === undefined) delete r.netError
      else if (r.netError !== err) r.netError = err
    })
  }

  private async publishError (error: string): Promise<void> {
    const { store } = this.init
    if (!store.inMesh || store.doc.hosts?.[store.self] === undefined || store.doc.hosts[store.self].netError === error) return
    await store.change('publish network error', d => { if (d.host !== undefined) d.host.netError = error })
  }
}

/**
 * Why this host cannot run the data plane (no `ip`, no `wg`, neither kernel WireGuard nor
 * wireguard-go), or undefined when it can.
 */
export async function dataPlaneUnavailableReason (exec: import('../exec.ts').Exec): Promise<string | undefined> {
  const runs = async (cmd: string, args: string[]): Promise<boolean> => {
    try { return (await exec(cmd, args)).code === 0 } catch { return false }
  }
  if (!await runs('ip', ['-V'])) return 'the ip command (iproute2) is missing'
  if (!await runs('bridge', ['-V'])) return 'the bridge command (iproute2) is missing'
  if (!await runs('wg', ['--version'])) return 'the wg command (wireguard-tools) is missing'
  const { access } = await import('node:fs/promises')
  const kernel = await access('/sys/module/wireguard').then(() => true, () => false) || await runs('modprobe', ['-n', 'wireguard'])
  if (kernel) return undefined
  if (!await runs('wireguard-go', ['--version'])) return 'neither kernel WireGuard nor wireguard-go is available'
  if (!await access('/dev/net/tun').then(() => true, () => false)) return 'wireguard-go needs /dev/net/tun'
  return undefined
}

/**
 * One daemon per WireGuard interface name on a machine (the names are machine-wide: wireguard-go's
 * UAPI sockets live in /run/wireguard whatever the namespace). Claims `<dir>/net-<ifname>.pid`;
 * returns the pid of another live daemon that holds it, or undefined once it is ours.
 */
export async function claimInterface (ifname: string, dir = '/run/picocloud'): Promise<number | undefined> {
  const { mkdir, readFile, writeFile } = await import('node:fs/promises')
  const { join } = await import('node:path')
  await mkdir(dir, { recursive: true, mode: 0o755 })
  const file = join(dir, `net-${ifname}.pid`)
  const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim())
  if (Number.isInteger(pid) && pid > 1 && pid !== process.pid) {
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
    if (cmdline.includes('daemon')) return pid
  }
  await writeFile(file, `${process.pid}\n`, { mode: 0o644 })
  return undefined
}
