/**
 * Network services of a host, rendered as text by pure functions: the dnsmasq configuration of one
 * network (DHCPv4 with static leases for this host's VMs, router advertisements) and the nftables
 * table `inet pc-net` (NAT for `host-nat` networks, and the filter that keeps VMs off the host's
 * own services on its bridge addresses).
 *
 * Why dnsmasq for router advertisements too (and not radvd): one process per network per host
 * already serves DHCPv4; dnsmasq's `enable-ra` + `ra-only` range + `ra-param` gives the prefix, the
 * MTU and a router lifetime of 0 (hosts are not IPv6 routers of private networks) with no second
 * daemon, config format or pidfile to reconcile. It answers router solicitations at once, so a
 * guest configures itself without waiting for the periodic advertisement.
 *
 * @example
 * const text = renderDnsmasqConfig({ networkId: 'n1', name: 'lan', bridge: 'pc-br00abcd', dir: '/var/lib/picocloud/net/n1', mtu: 1370, dhcp4: { … } })
 */
import { createHash } from 'node:crypto'
import { BRIDGE_PREFIX } from './addressing.ts'

export const FIREWALL_FAMILY = 'inet'
export const FIREWALL_TABLE = 'pc-net'

/** Files of one dnsmasq instance, all in its directory. */
export const DNSMASQ_FILES = {
  conf: 'dnsmasq.conf',
  pid: 'dnsmasq.pid',
  leases: 'dnsmasq.leases',
  /** Hash of the configuration the running instance was started with. */
  hash: 'dnsmasq.hash'
} as const

/** Lease time handed out; leases are static, renewing only refreshes options (router, MTU). */
export const DHCP_LEASE_TIME = '1h'
/** Seconds between unsolicited router advertisements (solicitations are answered at once). */
export const RA_INTERVAL = 60

export interface DnsmasqDhcp4 {
  /** Network address and netmask of the subnet. */
  base: string
  netmask: string
  /** Router handed to VMs; undefined sends no router option. */
  router?: string
  /** Static leases of this host's VMs, by MAC. */
  hosts: Array<{ mac: string, ip: string }>
}

export interface DnsmasqRa {
  /** The /64 prefix (address part, e.g. `fd20::`). */
  prefix: string
}

/** Stateful DHCPv6 (`dhcpv6` mode): static leases of this host's VMs, by MAC, in the RA's prefix. */
export interface DnsmasqDhcp6 {
  hosts: Array<{ mac: string, ip6: string }>
}

/** Names served on the network (node/network/names.ts): each record's names resolve to its addresses. */
export interface DnsmasqDns {
  /** The network's search domain, `<net>.<mesh>`. */
  domain: string
  /** The mesh's domain: answered here only, never forwarded. */
  meshDomain: string
  records: Array<{ names: string[], ip4?: string, ip6?: string }>
}

export interface DnsmasqParams {
  networkId: string
  name: string
  bridge: string
  dir: string
  mtu: number
  dhcp4?: DnsmasqDhcp4
  ra?: DnsmasqRa
  dhcp6?: DnsmasqDhcp6
  dns?: DnsmasqDns
}

export function shortHash (text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, 16)
}

/** The dnsmasq configuration of one network on one host (the whole file, deterministic). */
export function renderDnsmasqConfig (p: DnsmasqParams): string {
  const lines = [
    `# picocloud network ${JSON.stringify(p.name)} (${p.networkId}) on ${p.bridge}: generated, do not edit`,
    `interface=${p.bridge}`,
    'bind-interfaces',
    'except-interface=lo',
    // Without names, no DNS: port 0 also keeps the DNS option out of leases. With names, the
    // host answers the mesh's names itself and forwards other queries to its own resolvers.
    ...(p.dns === undefined
      ? ['port=0', 'no-resolv']
      : ['port=53', `local=/${p.dns.meshDomain}/`, `domain=${p.dns.domain}`, 'domain-needed', 'bogus-priv']),
    'no-hosts',
    `pid-file=${p.dir}/${DNSMASQ_FILES.pid}`,
    `dhcp-leasefile=${p.dir}/${DNSMASQ_FILES.leases}`
  ]
  if (p.dhcp4 !== undefined) {
    const d = p.dhcp4
    lines.push(
      // Static only: addresses come from dhcp-host lines, and MACs that are not this host's VMs
      // (other hosts' VMs, heard over VXLAN) are ignored, so their own host answers alone.
      `dhcp-range=${d.base},static,${d.netmask},${DHCP_LEASE_TIME}`,
      'dhcp-ignore=tag:!known',
      `dhcp-option=option:mtu,${p.mtu}`,
      // An empty option 3 stops dnsmasq from offering itself as the router.
      d.router !== undefined ? `dhcp-option=option:router,${d.router}` : 'dhcp-option=3',
      // With names the host is the VMs' resolver (dnsmasq hands its own address out).
      ...(p.dns === undefined ? ['dhcp-option=6'] : [])
    )
    for (const h of [...d.hosts].sort((a, b) => a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0)) {
      lines.push(`dhcp-host=${h.mac},${h.ip}`)
    }
  }
  if (p.ra !== undefined) {
    lines.push(
      'enable-ra',
      // With DHCPv6 the RA sets the managed flag and no SLAAC; addresses come from dhcp-host lines.
      p.dhcp6 !== undefined ? `dhcp-range=${p.ra.prefix},static,64,${DHCP_LEASE_TIME}` : `dhcp-range=${p.ra.prefix},ra-only,64,${DHCP_LEASE_TIME}`,
      // MTU, interval, router lifetime 0: on-link prefix for SLAAC, not a default router.
      `ra-param=${p.bridge},mtu:${p.mtu},${RA_INTERVAL},0`
    )
  }
  if (p.ra !== undefined && p.dhcp6 !== undefined) {
    if (p.dhcp4 === undefined) lines.push('dhcp-ignore=tag:!known')
    for (const h of [...p.dhcp6.hosts].sort((a, b) => a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0)) lines.push(`dhcp-host=${h.mac},[${h.ip6}]`)
  }
  for (const r of p.dns?.records ?? []) {
    const addrs = [r.ip4, r.ip6].filter((a): a is string => a !== undefined)
    if (addrs.length > 0 && r.names.length > 0) lines.push(`host-record=${[...r.names, ...addrs].join(',')}`)
  }
  return lines.join('\n') + '\n'
}

// ---------------------------------------------------------------------------------------------
// nftables

export interface FirewallNetwork {
  bridge: string
  /** IPv4 subnet NATed out of the host's default route (`host-nat`), if any. */
  nat4?: string
  /** The host has addresses on the bridge: let VMs reach DHCP and ICMP only. */
  guardHost: boolean
  /** Serve DHCPv4 (UDP 67). */
  dhcp4: boolean
  /** Serve DHCPv6 (UDP 547). @default false */
  dhcp6?: boolean
  /** Serve names (DNS, UDP and TCP 53). @default false */
  dns?: boolean
}

export interface RenderedFirewall {
  /** The `table inet pc-net { … }` block, comment included. */
  ruleset: string
  hash: string
  /** Number of rules per chain, to check the table that is there. */
  rules: Record<string, number>
}

/**
 * The whole `inet pc-net` table for this host, or undefined when it needs none (no network here).
 * Its hash is kept in the table comment so the driver can tell whether the table that is there is
 * this one.
 *
 * Networks are isolated: the host routes a network's packets only out of its default route
 * (`host-nat`) and only their replies back in. Any other packet the host would route from or into
 * a network's bridge is dropped, whoever sent it and whatever address it claims, so networks of
 * different owners never reach each other through a host (also on a host that has no address on
 * a network: a VM can still aim a frame at the bridge's MAC). Traffic inside one network (same
 * bridge in and out, as br_netfilter shows bridged frames) is left alone.
 */
export function renderFirewall (networks: readonly FirewallNetwork[]): RenderedFirewall | undefined {
  const sorted = [...networks].sort((a, b) => a.bridge < b.bridge ? -1 : a.bridge > b.bridge ? 1 : 0)
  const input: string[] = []
  const forward: string[] = []
  const post: string[] = []
  for (const n of sorted) {
    const br = `"${n.bridge}"`
    if (n.guardHost) {
      if (n.dhcp4) input.push(`iifname ${br} udp dport 67 accept`)
      if (n.dhcp6 === true) input.push(`iifname ${br} udp dport 547 accept`)
      if (n.dns === true) input.push(`iifname ${br} meta l4proto { tcp, udp } th dport 53 accept`)
      input.push(`iifname ${br} meta l4proto { icmp, ipv6-icmp } accept`)
      input.push(`iifname ${br} ct state established,related accept`)
      input.push(`iifname ${br} drop`)
    }
    forward.push(`iifname ${br} oifname ${br} accept`)
    forward.push(`iifname ${br} oifname "${BRIDGE_PREFIX}*" drop`)
    if (n.nat4 !== undefined) {
      forward.push(`iifname ${br} ip saddr ${n.nat4} accept`)
      forward.push(`oifname ${br} ip daddr ${n.nat4} ct state established,related accept`)
      post.push(`ip saddr ${n.nat4} oifname != ${br} masquerade`)
    }
    forward.push(`iifname ${br} drop`)
    forward.push(`oifname ${br} drop`)
  }
  if (input.length + forward.length + post.length === 0) return undefined
  const chain = (name: string, hook: string, type: string, prio: string, rules: string[]): string[] => rules.length === 0
    ? []
    : [`  chain ${name} {`, `    type ${type} hook ${hook} priority ${prio}; policy accept;`, ...rules.map(r => `    ${r}`), '  }']
  const body = [
    ...chain('input', 'input', 'filter', 'filter', input),
    ...chain('forward', 'forward', 'filter', 'filter', forward),
    ...chain('postrouting', 'postrouting', 'nat', 'srcnat', post)
  ]
  const hash = shortHash(body.join('\n'))
  const rules: Record<string, number> = {}
  if (input.length > 0) rules.input = input.length
  if (forward.length > 0) rules.forward = forward.length
  if (post.length > 0) rules.postrouting = post.length
  const ruleset = [`table ${FIREWALL_FAMILY} ${FIREWALL_TABLE} {`, `  comment "picocloud ${hash}"`, ...body, '}'].join('\n') + '\n'
  return { ruleset, hash, rules }
}
