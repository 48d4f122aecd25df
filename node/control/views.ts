/**
 * What the local API shows of the world: VMs, networks, images and request outcomes, with host
 * names resolved. Field names are what `--json` prints.
 */
import type { World, VmEntry, RequestOutcome } from '../../crdt/world.ts'
import { optString, type MeshDoc } from '../../crdt/schema.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'

export interface VmView {
  id: string
  name: string
  owner: string
  host: string | null
  hostName: string | null
  status: string
  reason?: string
  desired: string
  labels: Record<string, string>
  image: string
  vcpus: number
  memMiB: number
  diskGiB: number
  arch: string
  nics: Array<{ net: string, ip?: string }>
  claimants: string[]
  created: string
  /** False when the VM's host only places VMs and runs none (hypervisor = "none"). */
  runs: boolean
  /** Its host's operator stopped it (`vm stop --operator`): only they can lift it. */
  operatorStop?: { at: string, reason: string }
  /** After its host is lost: `restart` elsewhere, or stay down (`none`). */
  ha: 'none' | 'restart'
  /** Its addresses on its networks: static, or allocated by the mesh (dhcp); SLAAC ones are the guest's. */
  addresses: Array<{ net: string, address: string }>
}

export interface RequestView extends RequestOutcome {
  reasons: Array<RequestOutcome['reasons'][number] & { hostName: string | null }>
}

const hostName = (doc: Partial<MeshDoc>, peer: string | null): string | null =>
  peer === null ? null : optString(doc.hosts?.[peer]?.name ?? doc.members?.[peer]?.name) ?? null

/** How this host sees the others, for `host-down` (the mesh's liveness). */
export interface Liveness {
  isUp: (peer: string) => boolean
  /** When this host last heard from the peer (ms since the epoch), if ever. */
  lastSeen: (peer: string) => number | undefined
}

/**
 * A VM's status as people need it: the host's report, except `host-down` when this host cannot
 * reach the VM's host (its last report may be stale), `stopping` while a stop is asked and the host
 * still reports it running, and for a VM its host's operator stopped, how to start it again.
 */
export function vmStatus (vm: VmEntry, liveness?: Liveness, now = Date.now()): { status: string, reason?: string } {
  if (vm.rejected !== undefined) return { status: 'rejected', reason: vm.rejected.reasons.map(r => r.detail).join('; ') }
  if (vm.desired === 'destroyed') return { status: 'destroyed' }
  if (vm.host === null) {
    return vm.wasPlaced === true && vm.spec.ha === 'restart' && vm.desired === 'running'
      ? { status: 'pending', reason: 'its host was lost or gave it up: it is being restarted on another host (from its image)' }
      : { status: 'pending' }
  }
  if (vm.hostLost !== undefined) {
    const ago = Math.max(0, Math.round((now - Date.parse(vm.hostLost.since)) / 1000))
    return { status: 'host-lost', reason: `a majority of the hosts declared its host unreachable ${ago} s ago; with --ha none it stays there, down, until that host returns` }
  }
  if (liveness !== undefined && !liveness.isUp(vm.host)) {
    const seen = liveness.lastSeen(vm.host)
    const last = vm.report === undefined ? '' : `; its last report: ${vm.report.status}`
    return { status: 'host-down', reason: `${seen === undefined ? 'its host has not been reachable from here' : `its host has been unreachable for ${Math.round((now - seen) / 1000)} s`}${last}` }
  }
  if (vm.report === undefined) return { status: 'claimed' }
  if (vm.desired === 'stopped' && (vm.report.status === 'running' || vm.report.status === 'starting')) return { status: 'stopping', reason: vm.forceStop === true ? 'power cut asked (--force)' : 'the guest was asked to power off' }
  if (vm.report.operatorStop !== undefined && vm.report.status === 'stopped') {
    return { status: 'stopped', reason: `${vm.report.reason ?? 'stopped by the host operator'}; it stays stopped until that host's operator runs \`picocloud vm start --operator ${vm.name}\` (or destroy it and create it again)` }
  }
  return { status: vm.report.status, reason: vm.report.reason }
}

export function vmView (doc: Partial<MeshDoc>, vm: VmEntry, liveness?: Liveness, addresses?: ReadonlyMap<string, Array<{ net: string, address: string }>>): VmView {
  return {
    id: vm.id,
    name: vm.name,
    owner: vm.owner,
    host: vm.host,
    hostName: hostName(doc, vm.host),
    ...vmStatus(vm, liveness),
    desired: vm.desired,
    labels: { ...vm.labels },
    image: vm.spec.image,
    vcpus: vm.needs.vcpus,
    memMiB: vm.needs.memMiB,
    diskGiB: vm.needs.diskGiB,
    arch: vm.spec.arch,
    nics: vm.nics.map(n => ({ ...n })),
    claimants: vm.claimants,
    created: new Date(vm.created).toISOString(),
    runs: vm.host === null || doc.hosts?.[vm.host]?.resources?.hypervisor !== 'none',
    ha: vm.spec.ha ?? 'none',
    addresses: (addresses?.get(vm.id) ?? []).map(a => ({ ...a })),
    ...(vm.report?.operatorStop !== undefined ? { operatorStop: { at: String(vm.report.operatorStop.at), reason: String(vm.report.operatorStop.reason) } } : {})
  }
}

export interface VmFilter { selector?: Record<string, string>, owner?: string, all?: boolean }

export function listVms (doc: Partial<MeshDoc>, world: World, f: VmFilter = {}, liveness?: Liveness, addresses?: ReadonlyMap<string, Array<{ net: string, address: string }>>): VmView[] {
  return [...world.vms.values()]
    .filter(vm => f.all === true || (vm.desired !== 'destroyed' && vm.rejected === undefined))
    .filter(vm => f.owner === undefined || vm.owner === f.owner)
    .filter(vm => Object.entries(f.selector ?? {}).every(([k, v]) => vm.labels[k] === v))
    .sort((a, b) => a.name.localeCompare(b.name) || a.created - b.created)
    .map(vm => vmView(doc, vm, liveness, addresses))
}

/** A VM by id, id prefix (8+ hex), or name (owner's own first, else unique). */
export function findVm (world: World, ref: string, owner?: string): VmEntry {
  const all = [...world.vms.values()]
  const live = all.filter(v => v.desired !== 'destroyed' && v.rejected === undefined)
  const byId = all.find(v => v.id === ref) ?? (/^[0-9a-f]{8,}$/.test(ref) ? all.filter(v => v.id.startsWith(ref)) : []).at(0)
  if (byId !== undefined) return byId
  const named = live.filter(v => v.name === ref)
  const own = owner === undefined ? [] : named.filter(v => v.owner === owner)
  if (own.length === 1) return own[0]
  if (named.length === 1) return named[0]
  if (named.length > 1) throw new PicocloudError(ErrorCode.BadRequest, `${named.length} VMs are named ${ref} (owners ${named.map(v => v.owner.slice(-8)).join(', ')}); give the VM id`)
  throw new PicocloudError(ErrorCode.VmNotFound, `no VM ${ref} (see \`picocloud vm list\`)`, 404)
}

export function requestView (doc: Partial<MeshDoc>, r: RequestOutcome): RequestView {
  return { ...r, reasons: r.reasons.map(x => ({ ...x, hostName: hostName(doc, x.host) })) }
}
