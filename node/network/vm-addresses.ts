/**
 * The addresses a VM has on its networks, as `vm list` and `vm show` print them: its static
 * address, or in `dhcp` mode the IPv4 address the mesh allocated (and in `dhcpv6` mode its IPv6
 * address too; node/network/ipam.ts), computed
 * exactly as the VM's own host computes it for its DHCP server (over every placed VM of the
 * network and the hosts that carry it). SLAAC addresses are chosen by the guest: not listed.
 *
 * @example
 * vmAddresses(world).get(vmId) // [{ net: 'lan', address: '10.0.0.17' }]
 */
import type { World, VmEntry } from '../../crdt/world.ts'
import { allocateIpv4, allocateIpv6, parseIpv4, parseSubnet4, inSubnet4, parseSubnet6, inSubnet6 } from './ipam.ts'
import { compareStrings, formatIpv6, parseIpv6 } from './addressing.ts'

export interface VmAddress { net: string, address: string }

const placed = (vm: VmEntry): boolean => vm.desired !== 'destroyed' && vm.rejected === undefined && vm.host !== null

export function vmAddresses (world: World): Map<string, VmAddress[]> {
  const out = new Map<string, VmAddress[]>()
  const add = (id: string, a: VmAddress): void => { const l = out.get(id) ?? []; l.push(a); out.set(id, l) }
  const vms = [...world.vms.values()].filter(placed).sort((a, b) => a.created - b.created || compareStrings(a.id, b.id))
  for (const net of world.nets.values()) {
    const on = vms.filter(vm => vm.nics.some(n => n.net === net.name))
    if (on.length === 0) continue
    let s4: ReturnType<typeof parseSubnet4> | undefined
    let s6: ReturnType<typeof parseSubnet6> | undefined
    try { s4 = net.spec.subnet.ipv4 === undefined ? undefined : parseSubnet4(net.spec.subnet.ipv4) } catch {}
    try { s6 = net.spec.subnet.ipv6 === undefined ? undefined : parseSubnet6(net.spec.subnet.ipv6) } catch {}
    // Static addresses, first come first served (the data plane drops the same ones: reconciler.ts).
    const static4 = new Map<string, string>()
    const used4 = new Set<number>()
    const used6 = new Set<string>()
    for (const vm of on) {
      const ip = vm.nics.find(n => n.net === net.name)?.ip
      if (ip === undefined) continue
      const a4 = parseIpv4(ip)
      if (a4 !== undefined) {
        if (s4 !== undefined && inSubnet4(s4, a4) && a4 !== s4.base && a4 !== s4.base + s4.size - 1 && !used4.has(a4)) { used4.add(a4); static4.set(vm.id, ip) }
        continue
      }
      try {
        const a6 = parseIpv6(ip)
        const text = formatIpv6(a6)
        if (s6 !== undefined && inSubnet6(s6, a6) && !used6.has(text)) { used6.add(text); add(vm.id, { net: net.name, address: text }) }
      } catch {}
    }
    // dhcpv6: the others get the address the data plane hands out (ipam.ts allocateIpv6).
    if (net.spec.mode === 'dhcpv6' && s6 !== undefined && s6.prefixLen === 64) {
      const statics = new Set(on.filter(vm => (out.get(vm.id) ?? []).some(a => a.net === net.name && a.address.includes(':'))).map(vm => vm.id))
      const alloc = allocateIpv6(net.id, s6.prefix, on.filter(vm => !statics.has(vm.id)).map(vm => vm.id), used6)
      for (const vm of on) { const a = alloc.get(vm.id); if (a !== undefined) add(vm.id, { net: net.name, address: a }) }
    }
    if (net.spec.subnet.ipv4 === undefined || s4 === undefined) continue
    const dhcp = net.spec.mode === 'dhcp' || net.spec.mode === 'dhcpv6'
    const ipam = (dhcp ? on : on.filter(vm => static4.has(vm.id))).map(vm => ({ id: vm.id, created: vm.created, ...(static4.has(vm.id) ? { ip: static4.get(vm.id) as string } : {}) }))
    const hosts = [...new Set(on.map(vm => vm.host as string))].sort(compareStrings)
    const needHost = dhcp || net.spec.gateway === 'host-nat'
    try {
      const alloc = allocateIpv4(net.id, net.spec.subnet.ipv4, ipam, needHost ? hosts : [])
      for (const vm of on) { const a = alloc.vms.get(vm.id); if (a !== undefined) add(vm.id, { net: net.name, address: a }) }
    } catch {}
  }
  return out
}
