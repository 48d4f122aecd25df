/**
 * In-memory network driver: keeps an ActualState, applies steps to it the way Linux would, and
 * records every step. `failOn` injects a failure for a step type.
 *
 * @example
 * const driver = fakeNetworkDriver()
 * driver.addLink({ ifname: 'pc-tap1', kind: 'tun' })
 * await reconcileNetwork(driver, input)
 * driver.applied // the steps, in order
 */
import { PicocloudError, ErrorCode } from '../../../protocol/errors.ts'
import type { ActualFirewall, ActualLink, ActualPeer, ActualState, ActualWireguard, Step, StepType } from '../plan.ts'
import type { NetworkDriver, ReadStateOptions } from './types.ts'

export interface FakeNetworkDriver extends NetworkDriver {
  readonly applied: Step[]
  readonly links: Map<string, ActualLink>
  readonly wireguard: Map<string, ActualWireguard>
  readonly fdb: Array<{ ifname: string, dst: string }>
  addLink: (link: Partial<ActualLink> & { ifname: string }) => ActualLink
  /** dnsmasq instances by directory: pid, hash and configuration (as started). */
  readonly dnsmasq: Map<string, { pid?: number, hash: string, config: string, ifname: string }>
  /** The `inet pc-net` table, when it exists. */
  firewall: (ActualFirewall & { ruleset: string }) | undefined
  ipv4Forwarding: boolean
  failOn?: StepType
}

export function fakeNetworkDriver (): FakeNetworkDriver {
  let nextIndex = 10
  const links = new Map<string, ActualLink>()
  const wireguard = new Map<string, ActualWireguard>()
  const fdb: Array<{ ifname: string, dst: string }> = []
  const applied: Step[] = []
  const dnsmasq = new Map<string, { pid?: number, hash: string, config: string, ifname: string }>()
  let nextPid = 1000

  const fail = (msg: string): never => { throw new PicocloudError(ErrorCode.NetworkDriver, msg, 500) }
  const need = (ifname: string): ActualLink => links.get(ifname) ?? fail(`no such device ${ifname}`)
  const addLink = (l: Partial<ActualLink> & { ifname: string }): ActualLink => {
    if (links.has(l.ifname)) fail(`device ${l.ifname} exists`)
    const link: ActualLink = { ifindex: nextIndex++, mtu: 1500, up: false, addresses: [], ...l }
    links.set(l.ifname, link)
    return link
  }
  const wgOf = (ifname: string): ActualWireguard => wireguard.get(ifname) ?? fail(`${ifname} is not a WireGuard device`)

  function applyOne (s: Step): void {
    switch (s.type) {
      case 'dnsmasq.start':
        if (need(s.ifname).kind !== 'bridge') fail(`dnsmasq on ${s.ifname}: not a bridge`)
        dnsmasq.set(s.dir, { pid: nextPid++, hash: s.hash, config: s.config, ifname: s.ifname })
        return
      case 'dnsmasq.stop':
        dnsmasq.delete(s.dir)
        return
      case 'firewall.replace': {
        const rules: Record<string, number> = {}
        let chain: string | undefined
        for (const line of s.ruleset.split('\n').map(l => l.trim())) {
          const m = /^chain (\S+) \{$/.exec(line)
          if (m !== null) { chain = m[1]; rules[chain] = 0 } else if (line === '}') chain = undefined
          else if (chain !== undefined && line !== '' && !line.startsWith('type ')) rules[chain]++
        }
        driver.firewall = { hash: s.hash, rules, ruleset: s.ruleset }
        return
      }
      case 'firewall.delete':
        if (driver.firewall === undefined) fail('no table inet pc-net')
        driver.firewall = undefined
        return
      case 'sysctl.set':
        if (s.key === 'net.ipv4.ip_forward') driver.ipv4Forwarding = s.value === '1'
        return
      case 'link.delete': {
        need(s.ifname)
        links.delete(s.ifname)
        wireguard.delete(s.ifname)
        for (const l of links.values()) if (l.master === s.ifname) delete l.master
        for (let i = fdb.length - 1; i >= 0; i--) if (fdb[i].ifname === s.ifname) fdb.splice(i, 1)
        return
      }
      case 'wg.create':
        addLink({ ifname: s.ifname, kind: 'wireguard', mtu: 1420 })
        wireguard.set(s.ifname, { ifname: s.ifname, listenPort: 0, peers: [] })
        return
      case 'wg.configure': {
        const wg = wgOf(s.ifname)
        if (s.privateKey !== undefined) wg.privateKey = s.privateKey
        if (s.listenPort !== undefined) wg.listenPort = s.listenPort
        return
      }
      case 'wg.peer.set': {
        const wg = wgOf(s.ifname)
        let p: ActualPeer | undefined = wg.peers.find(x => x.publicKey === s.publicKey)
        if (p === undefined) { p = { publicKey: s.publicKey, allowedIps: [], keepalive: 0 }; wg.peers.push(p) }
        if (s.endpoint !== undefined) p.endpoint = s.endpoint
        p.allowedIps = [...s.allowedIps]
        p.keepalive = s.keepalive
        return
      }
      case 'wg.peer.remove': {
        const wg = wgOf(s.ifname)
        wg.peers = wg.peers.filter(p => p.publicKey !== s.publicKey)
        return
      }
      case 'bridge.create':
        addLink({ ifname: s.ifname, kind: 'bridge', mtu: s.mtu, mac: s.mac })
        return
      case 'vxlan.create':
        addLink({ ifname: s.ifname, kind: 'vxlan', mtu: s.mtu, vxlan: { vni: s.vni, local: s.local, port: s.port } })
        return
      case 'link.set': {
        const l = need(s.ifname)
        if (s.mtu !== undefined) l.mtu = s.mtu
        if (s.mac !== undefined) l.mac = s.mac
        if (s.master === null) delete l.master
        else if (s.master !== undefined) { if (need(s.master).kind !== 'bridge') fail(`${s.master} is not a bridge`); l.master = s.master }
        if (s.up === true) l.up = true
        return
      }
      case 'addr.add': {
        const l = need(s.ifname)
        if (l.addresses.includes(s.address)) fail(`address ${s.address} exists on ${s.ifname}`)
        l.addresses.push(s.address)
        return
      }
      case 'addr.remove': {
        const l = need(s.ifname)
        l.addresses = l.addresses.filter(a => a !== s.address)
        return
      }
      case 'fdb.add':
        if (need(s.ifname).kind !== 'vxlan') fail(`${s.ifname} is not a VXLAN`)
        if (fdb.some(e => e.ifname === s.ifname && e.dst === s.dst)) fail(`fdb entry exists: ${s.dst}`)
        fdb.push({ ifname: s.ifname, dst: s.dst })
        return
      case 'fdb.remove': {
        const i = fdb.findIndex(e => e.ifname === s.ifname && e.dst === s.dst)
        if (i < 0) fail(`no fdb entry ${s.dst} on ${s.ifname}`)
        fdb.splice(i, 1)
      }
    }
  }

  const driver: FakeNetworkDriver = {
    applied,
    links,
    wireguard,
    fdb,
    addLink,
    dnsmasq,
    firewall: undefined,
    ipv4Forwarding: false,
    async readState (options: ReadStateOptions): Promise<ActualState> {
      const wg = wireguard.get(options.wgIfname)
      const fw = driver.firewall
      return structuredClone({
        links: [...links.values()],
        ...(wg !== undefined ? { wireguard: wg } : {}),
        fdb: fdb.filter(e => e.ifname.startsWith('pc-vx')),
        ...(options.runtimeDir !== undefined
          ? { dnsmasq: [...dnsmasq.entries()].filter(([dir]) => dir.startsWith(options.runtimeDir + '/')).map(([dir, d]) => ({ dir, ...(d.pid !== undefined ? { pid: d.pid } : {}), hash: d.hash })) }
          : {}),
        ...(fw !== undefined ? { firewall: { ...(fw.hash !== undefined ? { hash: fw.hash } : {}), rules: fw.rules } } : {}),
        ipv4Forwarding: driver.ipv4Forwarding
      })
    },
    async apply (steps: readonly Step[]): Promise<void> {
      for (const s of steps) {
        if (driver.failOn === s.type) fail(`injected failure: ${s.description}`)
        applyOne(s)
        applied.push(s)
      }
    }
  }
  return driver
}
