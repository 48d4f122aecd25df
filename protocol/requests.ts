/**
 * The kinds of signed request and the allowlist schema of each body. A body names what a person
 * wants (a VM of some size from some image on some networks), never how a host does it: no
 * hypervisor XML, QEMU arguments, host paths or URLs a host would fetch. `validateBody` returns a
 * typed value with defaults filled in; the signed payload itself is never rewritten.
 *
 * @example
 * const body = validateBody('vm.create', { name: 'web', image: 'debian-12', type: 'small' })
 * body.arch // 'x86_64'
 */
import {
  object, string, integer, boolean, oneOf, array, map, optional, compact, invalid,
  parseIpv4, parseIpv6, parseCidr, type StringRule
} from './validate.ts'
import { isFingerprint, type Fingerprint } from './fingerprint.ts'

export const REQUEST_KINDS = [
  'vm.create', 'vm.start', 'vm.stop', 'vm.destroy', 'vm.nic.add', 'vm.nic.remove', 'vm.modify', 'vm.move',
  'net.create', 'net.delete', 'image.add', 'image.delete', 'key.revoke'
] as const
export type RequestKind = typeof REQUEST_KINDS[number]

export function isRequestKind (s: unknown): s is RequestKind {
  return typeof s === 'string' && (REQUEST_KINDS as readonly string[]).includes(s)
}

// ---------------------------------------------------------------- shared field rules

/** RFC 1123 label: a VM or network name is also its DNS name inside the mesh. */
export const DNS_LABEL: StringRule = { pattern: /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, what: 'a DNS label (a-z, 0-9, -, at most 63)', min: 1, max: 63 }
const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/
const SHA256_REF = /^sha256:[0-9a-f]{64}$/
const SHA256_HEX = /^[0-9a-f]{64}$/
/** A libp2p peer id in base58btc (`12D3KooW…` for Ed25519 keys). */
const PEER_ID: StringRule = { pattern: /^[1-9A-HJ-NP-Za-km-z]{46,64}$/, what: 'a peer id (as `picocloud id` prints it)', min: 46, max: 64 }
const LABEL_KEY: StringRule = { pattern: /^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/, what: 'a label key (a-z, 0-9, . _ / -, at most 63)', min: 1, max: 63 }
const LABEL_VALUE: StringRule = { pattern: /^[^\u0000-\u001f\u007f]*$/, what: 'a label value without control characters', max: 253 }
const SSH_KEY: StringRule = {
  pattern: /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\u0000-\u001f\u007f]*)?$/,
  what: 'an OpenSSH public key line (e.g. "ssh-ed25519 AAAA… comment")',
  max: 16384
}

export const ARCHES = ['x86_64', 'aarch64'] as const
export type Arch = typeof ARCHES[number]
export const RESTART_POLICIES = ['always', 'on-failure', 'never'] as const
export type RestartPolicy = typeof RESTART_POLICIES[number]
/** After its host is lost (crdt/lease.ts): `restart` elsewhere, or stay down until the host returns. */
export const HA_POLICIES = ['none', 'restart'] as const
export type HaPolicy = typeof HA_POLICIES[number]

/** Limits that keep one request from asking for something no community host could ever be. */
export const LIMITS = { cpus: 256, memMiB: 4 * 1024 * 1024, diskGiB: 64 * 1024, nics: 16, labels: 64, sshKeys: 32 } as const

/**
 * Built-in VM types. A mesh may define more (custom names); until a host knows a custom type it
 * cannot size the VM, so placement treats it as unknown (see `vmResources`).
 */
export const VM_TYPES: Readonly<Record<string, { cpus: number, memMiB: number }>> = {
  small: { cpus: 1, memMiB: 1024 },
  medium: { cpus: 2, memMiB: 4096 },
  large: { cpus: 4, memMiB: 8192 }
}

/** Disk size when a vm.create names none. */
export const DEFAULT_DISK_GIB = 10

const labels = (v: unknown, path: string): Record<string, string> =>
  map(v, path, LIMITS.labels, LABEL_KEY, (x, p) => string(x, p, LABEL_VALUE))

/** An image by name (`debian-12`) or by content (`sha256:<64 hex>`). */
function imageRef (v: unknown, path: string): string {
  const s = string(v, path, { what: 'an image name or sha256:<hex>', min: 1, max: 71 })
  if (!IMAGE_NAME.test(s) && !SHA256_REF.test(s)) invalid(path, `${JSON.stringify(s)} is neither an image name (a-z, 0-9, . _ -) nor sha256:<64 hex digits>`)
  return s
}

/** A VM by name (the owner's own namespace) or by id (the id of the vm.create request). */
function vmRef (v: unknown, path: string): string {
  const s = string(v, path, { what: 'a VM name or id', min: 1, max: 64 })
  if (!SHA256_HEX.test(s) && !(DNS_LABEL.pattern as RegExp).test(s)) invalid(path, `${JSON.stringify(s)} is neither a VM name (DNS label) nor a VM id (64 hex digits)`)
  return s
}

function ipAddress (v: unknown, path: string): string {
  const s = string(v, path, { what: 'an IPv4 or IPv6 address', min: 2, max: 45 })
  if (parseIpv4(s) === undefined && parseIpv6(s) === undefined) invalid(path, `${JSON.stringify(s)} is not an IPv4 or IPv6 address`)
  return s
}

// ---------------------------------------------------------------- bodies

export interface NicSpec { net: string, ip?: string }
export interface PinSpec { host?: string, labels?: Record<string, string> }

export interface VmCreateBody {
  name: string
  image: string
  /** Either `type`, or `cpus` with `memMiB`. */
  type?: string
  cpus?: number
  memMiB?: number
  diskGiB: number
  arch: Arch
  nics: NicSpec[]
  labels: Record<string, string>
  pin?: PinSpec
  sshKeys: string[]
  restart: RestartPolicy
  /** @default 'none' */
  ha?: HaPolicy
}

export interface VmRefBody { vm: string }
export interface VmStopBody extends VmRefBody { force: boolean }
export interface VmNicAddBody extends VmRefBody { nic: NicSpec }
export interface VmNicRemoveBody extends VmRefBody { net: string }
export interface VmModifyBody extends VmRefBody {
  type?: string
  cpus?: number
  memMiB?: number
  diskGiB?: number
  labels?: Record<string, string>
  sshKeys?: string[]
  restart?: RestartPolicy
}

/**
 * A cold move: the VM's pin becomes `pin` (none: any host), its host stops it and hands its disk
 * to the new host, which starts it from that disk. `from` is the host it runs on as the requester
 * saw it: the only host whose disk the new host accepts for this move.
 */
export interface VmMoveBody extends VmRefBody {
  pin?: PinSpec
  from: string
}

/** dhcpv6: as dhcp for IPv4, and IPv6 addresses by DHCPv6 from the mesh instead of SLAAC. */
export type NetMode = 'static' | 'dhcp' | 'slaac' | 'dhcpv6'
export type Gateway = 'host-nat' | 'none' | { vm: string }
export interface NetCreateBody {
  name: string
  subnet: { ipv4?: string, ipv6?: string }
  mode: NetMode
  gateway: Gateway
  labels: Record<string, string>
}
export interface NetDeleteBody { net: string }
export interface ImageAddBody {
  name: string
  /** Content hash (hex); hosts fetch the bytes from peers that have them and check this hash. */
  sha256: string
  format: 'raw' | 'qcow2'
  sizeBytes: number
  arch: Arch
  labels: Record<string, string>
}
export interface ImageDeleteBody { image: string }
export interface KeyRevokeBody { fingerprint: Fingerprint, reason?: string }

export interface RequestBodies {
  'vm.create': VmCreateBody
  'vm.start': VmRefBody
  'vm.stop': VmStopBody
  'vm.destroy': VmRefBody
  'vm.nic.add': VmNicAddBody
  'vm.nic.remove': VmNicRemoveBody
  'vm.modify': VmModifyBody
  'vm.move': VmMoveBody
  'net.create': NetCreateBody
  'net.delete': NetDeleteBody
  'image.add': ImageAddBody
  'image.delete': ImageDeleteBody
  'key.revoke': KeyRevokeBody
}

function nic (v: unknown, path: string): NicSpec {
  const o = object(v, path, ['net', 'ip'], ['net'])
  return compact({ net: string(o.net, `${path}.net`, DNS_LABEL), ip: optional(o, 'ip', path, ipAddress) })
}

/** `type` alone, or `cpus` and/or `memMiB`; never both kinds (which one would win?). */
function size (o: Record<string, unknown>, path: string, required: boolean): { type?: string, cpus?: number, memMiB?: number } {
  const type = optional(o, 'type', path, (v, p) => string(v, p, DNS_LABEL))
  const cpus = optional(o, 'cpus', path, (v, p) => integer(v, p, 1, LIMITS.cpus))
  const memMiB = optional(o, 'memMiB', path, (v, p) => integer(v, p, 64, LIMITS.memMiB))
  if (type !== undefined && (cpus !== undefined || memMiB !== undefined)) {
    invalid(path, 'give either "type" or "cpus"/"memMiB", not both')
  }
  if (required && type === undefined && (cpus === undefined || memMiB === undefined)) {
    invalid(path, 'give a "type" (small, medium, large or a mesh type) or both "cpus" and "memMiB"')
  }
  return { type, cpus, memMiB }
}

const vmCreate = (v: unknown, path: string): VmCreateBody => {
  const o = object(v, path, ['name', 'image', 'type', 'cpus', 'memMiB', 'diskGiB', 'arch', 'nics', 'labels', 'pin', 'sshKeys', 'restart', 'ha'], ['name', 'image'])
  const pin = optional(o, 'pin', path, pinSpec)
  const nics = optional(o, 'nics', path, (x, p) => array(x, p, LIMITS.nics, nic)) ?? []
  const seen = new Set<string>()
  for (const [i, n] of nics.entries()) {
    if (seen.has(n.net)) invalid(`${path}.nics[${i}].net`, `network "${n.net}" is attached twice`)
    seen.add(n.net)
  }
  return compact({
    name: string(o.name, `${path}.name`, DNS_LABEL),
    image: imageRef(o.image, `${path}.image`),
    ...size(o, path, true),
    diskGiB: optional(o, 'diskGiB', path, (x, p) => integer(x, p, 1, LIMITS.diskGiB)) ?? DEFAULT_DISK_GIB,
    arch: optional(o, 'arch', path, (x, p) => oneOf(x, p, ARCHES)) ?? 'x86_64',
    nics,
    labels: optional(o, 'labels', path, labels) ?? {},
    pin,
    sshKeys: optional(o, 'sshKeys', path, (x, p) => array(x, p, LIMITS.sshKeys, (k, kp) => string(k, kp, SSH_KEY))) ?? [],
    restart: optional(o, 'restart', path, (x, p) => oneOf(x, p, RESTART_POLICIES)) ?? 'always',
    ha: optional(o, 'ha', path, (x, p) => oneOf(x, p, HA_POLICIES))
  })
}

/** A pin as requests carry it (`{host}`, `{labels}` or both); throws BAD_BODY naming the field. */
export function pinSpec (x: unknown, p: string): PinSpec {
  const po = object(x, p, ['host', 'labels'])
  const r = compact({ host: optional(po, 'host', p, (h, hp) => string(h, hp, PEER_ID)), labels: optional(po, 'labels', p, labels) })
  if (r.host === undefined && r.labels === undefined) invalid(p, 'a pin names a "host", "labels" or both')
  return r
}

const vmMove = (v: unknown, path: string): VmMoveBody => {
  const o = object(v, path, ['vm', 'pin', 'from'], ['vm', 'from'])
  const r = compact({ vm: vmRef(o.vm, `${path}.vm`), pin: optional(o, 'pin', path, pinSpec), from: string(o.from, `${path}.from`, PEER_ID) })
  if (r.pin?.host !== undefined && r.pin.host === r.from) invalid(`${path}.pin.host`, 'the VM would move to the host it leaves')
  return r
}

const vmOnly = (v: unknown, path: string): VmRefBody => {
  const o = object(v, path, ['vm'], ['vm'])
  return { vm: vmRef(o.vm, `${path}.vm`) }
}

const vmStop = (v: unknown, path: string): VmStopBody => {
  const o = object(v, path, ['vm', 'force'], ['vm'])
  return { vm: vmRef(o.vm, `${path}.vm`), force: optional(o, 'force', path, boolean) ?? false }
}

const vmNicAdd = (v: unknown, path: string): VmNicAddBody => {
  const o = object(v, path, ['vm', 'nic'], ['vm', 'nic'])
  return { vm: vmRef(o.vm, `${path}.vm`), nic: nic(o.nic, `${path}.nic`) }
}

const vmNicRemove = (v: unknown, path: string): VmNicRemoveBody => {
  const o = object(v, path, ['vm', 'net'], ['vm', 'net'])
  return { vm: vmRef(o.vm, `${path}.vm`), net: string(o.net, `${path}.net`, DNS_LABEL) }
}

const vmModify = (v: unknown, path: string): VmModifyBody => {
  const o = object(v, path, ['vm', 'type', 'cpus', 'memMiB', 'diskGiB', 'labels', 'sshKeys', 'restart'], ['vm'])
  const r = compact({
    vm: vmRef(o.vm, `${path}.vm`),
    ...size(o, path, false),
    diskGiB: optional(o, 'diskGiB', path, (x, p) => integer(x, p, 1, LIMITS.diskGiB)),
    labels: optional(o, 'labels', path, labels),
    sshKeys: optional(o, 'sshKeys', path, (x, p) => array(x, p, LIMITS.sshKeys, (k, kp) => string(k, kp, SSH_KEY))),
    restart: optional(o, 'restart', path, (x, p) => oneOf(x, p, RESTART_POLICIES))
  })
  if (Object.keys(r).length === 1) invalid(path, 'nothing to modify: give at least one of type, cpus, memMiB, diskGiB, labels, sshKeys, restart')
  return r
}

const netCreate = (v: unknown, path: string): NetCreateBody => {
  const o = object(v, path, ['name', 'subnet', 'mode', 'gateway', 'labels'], ['name', 'subnet'])
  const sp = `${path}.subnet`
  const so = object(o.subnet, sp, ['ipv4', 'ipv6'])
  const subnet = compact({
    ipv4: optional(so, 'ipv4', sp, (x, p) => {
      const s = string(x, p, { what: 'an IPv4 CIDR such as 10.1.0.0/24', max: 18 })
      const c = parseCidr(s, 4)
      if (c === undefined || c.prefix < 8 || c.prefix > 30) invalid(p, `${JSON.stringify(s)} is not an IPv4 network /8../30 with zero host bits (e.g. 10.1.0.0/24)`)
      return s
    }),
    ipv6: optional(so, 'ipv6', sp, (x, p) => {
      const s = string(x, p, { what: 'an IPv6 CIDR such as fd00:1::/64', max: 49 })
      const c = parseCidr(s, 6)
      if (c === undefined || c.prefix < 16 || c.prefix > 124) invalid(p, `${JSON.stringify(s)} is not an IPv6 network /16../124 with zero host bits (e.g. fd00:1::/64)`)
      return s
    })
  })
  if (subnet.ipv4 === undefined && subnet.ipv6 === undefined) invalid(sp, 'give an "ipv4" CIDR, an "ipv6" CIDR or both')
  const mode = optional(o, 'mode', path, (x, p) => oneOf(x, p, ['static', 'dhcp', 'slaac', 'dhcpv6'] as const)) ?? 'static'
  if ((mode === 'slaac' || mode === 'dhcpv6') && (subnet.ipv6 === undefined || parseCidr(subnet.ipv6, 6)?.prefix !== 64)) {
    invalid(`${path}.mode`, `${mode} needs an IPv6 subnet of exactly /64`)
  }
  // host-nat is IPv4 NAT: the default only where there is an IPv4 subnet to NAT.
  const gateway = optional(o, 'gateway', path, (x, p): Gateway => {
    if (typeof x === 'string') return oneOf(x, p, ['host-nat', 'none'] as const)
    const g = object(x, p, ['vm'], ['vm'])
    return { vm: string(g.vm, `${p}.vm`, DNS_LABEL) }
  }) ?? (subnet.ipv4 === undefined ? 'none' : 'host-nat')
  if (gateway === 'host-nat' && subnet.ipv4 === undefined) {
    invalid(`${path}.gateway`, 'host-nat NATs IPv4 out of the hosts and needs an IPv4 subnet; an IPv6-only network takes gateway "none" or a VM')
  }
  return {
    name: string(o.name, `${path}.name`, DNS_LABEL),
    subnet,
    mode,
    gateway,
    labels: optional(o, 'labels', path, labels) ?? {}
  }
}

const netDelete = (v: unknown, path: string): NetDeleteBody => {
  const o = object(v, path, ['net'], ['net'])
  return { net: string(o.net, `${path}.net`, DNS_LABEL) }
}

const imageAdd = (v: unknown, path: string): ImageAddBody => {
  const o = object(v, path, ['name', 'sha256', 'format', 'sizeBytes', 'arch', 'labels'], ['name', 'sha256', 'format', 'sizeBytes'])
  return {
    name: string(o.name, `${path}.name`, { pattern: IMAGE_NAME, what: 'an image name (a-z, 0-9, . _ -, at most 63)', min: 1, max: 63 }),
    sha256: string(o.sha256, `${path}.sha256`, { pattern: SHA256_HEX, what: '64 lower-case hex digits (sha256sum output)', min: 64, max: 64 }),
    format: oneOf(o.format, `${path}.format`, ['raw', 'qcow2'] as const),
    sizeBytes: integer(o.sizeBytes, `${path}.sizeBytes`, 1, Number.MAX_SAFE_INTEGER),
    arch: optional(o, 'arch', path, (x, p) => oneOf(x, p, ARCHES)) ?? 'x86_64',
    labels: optional(o, 'labels', path, labels) ?? {}
  }
}

const imageDelete = (v: unknown, path: string): ImageDeleteBody => {
  const o = object(v, path, ['image'], ['image'])
  return { image: imageRef(o.image, `${path}.image`) }
}

const keyRevoke = (v: unknown, path: string): KeyRevokeBody => {
  const o = object(v, path, ['fingerprint', 'reason'], ['fingerprint'])
  const fpr = string(o.fingerprint, `${path}.fingerprint`, { what: '40 upper-case hex digits', min: 40, max: 40 })
  if (!isFingerprint(fpr)) invalid(`${path}.fingerprint`, `${JSON.stringify(fpr)} is not a fingerprint (40 upper-case hex digits)`)
  return compact({ fingerprint: fpr, reason: optional(o, 'reason', path, (x, p) => string(x, p, { ...LABEL_VALUE, what: 'a short reason', max: 256 })) })
}

const SCHEMAS: { [K in RequestKind]: (v: unknown, path: string) => RequestBodies[K] } = {
  'vm.create': vmCreate,
  'vm.start': vmOnly,
  'vm.stop': vmStop,
  'vm.destroy': vmOnly,
  'vm.nic.add': vmNicAdd,
  'vm.nic.remove': vmNicRemove,
  'vm.modify': vmModify,
  'vm.move': vmMove,
  'net.create': netCreate,
  'net.delete': netDelete,
  'image.add': imageAdd,
  'image.delete': imageDelete,
  'key.revoke': keyRevoke
}

/** Validate the body of a request of `kind`; throws BAD_BODY naming the field (`body.nics[0].net: …`). */
export function validateBody<K extends RequestKind> (kind: K, body: unknown): RequestBodies[K] {
  return SCHEMAS[kind](body, 'body')
}

/**
 * The resources a vm.create needs. Built-in types come from `VM_TYPES`; custom types from
 * `types` (the mesh's own list). Undefined when the type is unknown to this host.
 */
export function vmResources (body: Pick<VmCreateBody, 'type' | 'cpus' | 'memMiB' | 'diskGiB'>,
  types: Readonly<Record<string, { cpus: number, memMiB: number }>> = {}): { vcpus: number, memMiB: number, diskGiB: number } | undefined {
  if (body.type !== undefined) {
    const t = Object.hasOwn(types, body.type) ? types[body.type] : Object.hasOwn(VM_TYPES, body.type) ? VM_TYPES[body.type] : undefined
    return t === undefined ? undefined : { vcpus: t.cpus, memMiB: t.memMiB, diskGiB: body.diskGiB }
  }
  if (body.cpus === undefined || body.memMiB === undefined) return undefined
  return { vcpus: body.cpus, memMiB: body.memMiB, diskGiB: body.diskGiB }
}
