/**
 * The names of the OS objects a VM is made of, shared by compute (which creates them) and the
 * network (which puts them on bridges): the VM's name, its taps and their MACs. Derived from the
 * VM id alone, so that both sides, and a restarted daemon, name them alike.
 */
import { createHash } from 'node:crypto'

/** The name of the VM with this id: `pc-` and its first 8 hex digits. */
export function vmName (id: string): string {
  return `pc-${id.slice(0, 8)}`
}

/** Tap device of the NIC number `index` (0…99): `pc-t` + 8 hex + index, at most 15 characters. */
export function tapName (id: string, index: number): string {
  return `pc-t${id.slice(0, 8)}${index}`
}

/** A MAC derived from the VM id and NIC index: locally administered (bit 1), unicast (bit 0 clear). */
export function vmMac (id: string, index: number): string {
  const h = createHash('sha256').update(`picocloud-mac:${id}:${index}`).digest()
  h[0] = (h[0] | 0x02) & 0xfe
  return [...h.subarray(0, 6)].map(b => b.toString(16).padStart(2, '0')).join(':')
}
