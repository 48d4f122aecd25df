/**
 * The order in which a host lists its own addresses (`id`, its record, `hosts`): the ones another
 * host can most likely dial first — public, then private (RFC 1918, ULA, CGNAT), then link-local,
 * loopback last. A newcomer copies the first one; 127.0.0.1 is never it when there is another.
 *
 * @example
 * routableFirst(['/ip4/127.0.0.1/tcp/9777', '/ip4/192.0.2.7/tcp/9777']) // 192.0.2.7 first
 */
import { isIP } from 'node:net'
import { networkInterfaces } from 'node:os'

/** 0 public, 1 private, 2 link-local, 3 loopback or unspecified; 4 not an IP address. */
export function addressRank (multiaddr: string): number {
  const m = /^\/(ip4|ip6)\/([^/]+)/.exec(multiaddr)
  if (m === null || isIP(m[2]) === 0) return 4
  const ip = m[2].toLowerCase()
  if (m[1] === 'ip4') {
    const [a, b] = ip.split('.').map(Number)
    if (a === 127 || a === 0) return 3
    if (a === 169 && b === 254) return 2
    if (a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127)) return 1
    return 0
  }
  if (ip === '::1' || ip === '::') return 3
  if (/^fe[89ab]/.test(ip)) return 2
  if (/^f[cd]/.test(ip)) return 1
  return 0
}

/** `addrs` sorted by `addressRank`, keeping their order within a rank. */
export function routableFirst (addrs: readonly string[]): string[] {
  return addrs.map((a, i) => ({ a, i, r: addressRank(a) })).sort((x, y) => x.r - y.r || x.i - y.i).map(x => x.a)
}

/**
 * IP addresses of this machine's picocloud interfaces (`pc-…`: network bridges, WireGuard): a
 * private network's gateway address or the overlay is no address to dial this host by.
 */
export function picocloudInterfaceIps (interfaces: NodeJS.Dict<Array<{ address: string }>> = networkInterfaces()): Set<string> {
  const out = new Set<string>()
  for (const [name, addrs] of Object.entries(interfaces)) {
    if (!name.startsWith('pc-')) continue
    for (const a of addrs ?? []) out.add(a.address.toLowerCase())
  }
  return out
}

/** `addrs` without the multiaddrs whose IP is in `drop`. */
export function withoutIps (addrs: readonly string[], drop: ReadonlySet<string>): string[] {
  return addrs.filter(a => { const m = /^\/ip[46]\/([^/]+)/.exec(a); return m === null || !drop.has(m[1].toLowerCase()) })
}
