/**
 * The data-plane part of the daemon's config file (node/config.ts reads the file; these keys are
 * parsed here):
 *
 *     network = "auto"                 # "linux": run the data plane; "none": never touch the network;
 *                                      # "auto" (default): "linux" when running as root, else "none"
 *     wireguard_interface = "pc-wg0"   # the host's WireGuard interface (a pc- name)
 *     wireguard_port = 51820           # its UDP listen port
 *     wireguard_endpoints = ["203.0.113.7:51820"]  # announced to the other hosts; default: the
 *                                      # host's libp2p listen/announce IPs with wireguard_port
 *     underlay_mtu = 1500              # MTU of the path between hosts; devices and VMs get it minus
 *                                      # the WireGuard and VXLAN overhead
 *
 * With "linux" (or "auto" as root) but no WireGuard (neither the kernel module nor wireguard-go),
 * the daemon logs one warning and runs no data plane; everything else works.
 */
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import { checkIfname, DEFAULT_WG_IFNAME, WG_DEFAULT_PORT } from './addressing.ts'

export const NETWORK_KEYS = ['network', 'wireguard_interface', 'wireguard_port', 'wireguard_endpoints', 'underlay_mtu'] as const

export interface NetworkConfig {
  /** @default 'auto' ('linux' as root, else 'none') */
  mode: 'auto' | 'linux' | 'none'
  /** @default 'pc-wg0' */
  wgIfname: string
  /** @default 51820 */
  wgPort: number
  /** Underlay endpoints to announce (`ip:port`, `[ipv6]:port`); empty: derived from the libp2p addresses. @default [] */
  endpoints: string[]
  /** @default 1500 */
  underlayMtu: number
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/

/** True for `a.b.c.d:port` or `[v6]:port` with a port in 1..65535 (IP literals only: what wg shows back). */
export function isEndpoint (text: string): boolean {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text)
  if (m === null) return false
  const port = Number(m[3])
  if (port < 1 || port > 65535) return false
  return m[2] !== undefined ? IPV4.test(m[2]) : m[1].includes(':')
}

export function parseNetworkConfig (raw: Record<string, unknown>, file: string): NetworkConfig {
  const bad = (msg: string): PicocloudError => new PicocloudError(ErrorCode.Config, `${file}: ${msg}`)
  const mode = raw.network ?? 'auto'
  if (mode !== 'auto' && mode !== 'linux' && mode !== 'none') throw bad(`network must be "auto", "linux" or "none", got ${JSON.stringify(mode)}`)
  const ifname = raw.wireguard_interface ?? DEFAULT_WG_IFNAME
  if (typeof ifname !== 'string') throw bad('wireguard_interface must be a string like "pc-wg0"')
  try { checkIfname(ifname) } catch (err: any) { throw bad(`wireguard_interface: ${err.message as string}`) }
  const port = raw.wireguard_port ?? WG_DEFAULT_PORT
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw bad('wireguard_port must be a UDP port (1-65535)')
  const endpoints = raw.wireguard_endpoints ?? []
  if (!Array.isArray(endpoints) || endpoints.some(e => typeof e !== 'string' || !isEndpoint(e))) {
    throw bad('wireguard_endpoints must be a list of "IPv4:PORT" or "[IPv6]:PORT", e.g. ["203.0.113.7:51820"]')
  }
  const mtu = raw.underlay_mtu ?? 1500
  if (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < 1280 + 150 || mtu > 65535) throw bad('underlay_mtu must be an integer from 1430 to 65535 (private networks need at least 1280 after WireGuard and VXLAN)')
  return { mode, wgIfname: ifname, wgPort: port, endpoints: endpoints as string[], underlayMtu: mtu }
}
