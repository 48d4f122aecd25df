/**
 * The world as the replicated state describes it: VMs, networks and images, the outcome of every
 * request, and where each VM is placed. A pure, deterministic function of the document and of
 * which requests this host found valid, so every host that has the same state computes the same
 * world, with no controller.
 *
 * Requests are applied in processing order (payload `created`, then id). Rights: only a VM's
 * owner may start, stop, modify or destroy it; only a network's owner may delete it; a VM may use
 * only its owner's networks; a key may revoke only itself. Placement is crdt/placement.ts over the
 * hosts' published resources and trust policies, settled by the hosts' claims.
 *
 * @example
 * const world = deriveWorld(store.doc, id => validity.get(id))
 * world.vms.get(vmId)?.host
 */
import { assign, resolveClaims, pinExcludes, type HostView, type PlacementRequest, type HostDecision, type Claim } from './placement.ts'
import { validatePolicy, emptyPolicy, type TrustPolicy } from '../keys/trust-policy.ts'
import { vmResources, type RequestBodies, type RequestKind, type VmCreateBody, type NetCreateBody, type NicSpec } from '../protocol/requests.ts'
import { lostHosts, claimCurrent, claimStands, endorsedByMajority } from './lease.ts'
import { isActiveMember, type MeshDoc, type HostVm, type RequestCopy } from './schema.ts'

/** A request this host verified (signature, mesh, time window against the receiving host's stamp, schema). */
export interface VerifiedRequest {
  id: string
  kind: RequestKind
  issuer: string
  created: number
  expires: number
  body: RequestBodies[RequestKind]
  via: string
  at: string
}

export type Validity = { ok: true, request: VerifiedRequest } | { ok: false, code: string, reason: string }

export type RequestStatus = 'pending' | 'accepted' | 'placed' | 'rejected'

export interface Reason {
  /** The host that decided, or null for a reason that holds everywhere (rights, schema…). */
  host: string | null
  reason: string
  detail: string
}

export interface RequestOutcome {
  id: string
  kind: string
  issuer: string
  created: string
  /** A host that received it: the first valid copy (earliest stamp, then host). */
  via: string
  /**
   * Every host holding a valid copy. A member can store a copy of a request it read in another
   * host's feed, stamped as it likes, so which of them received it from the user is not known;
   * what depends on it (a final rejection) needs all of them.
   */
  vias: string[]
  status: RequestStatus
  reasons: Reason[]
  /** The VM (vm.create id) or network name the request is about. */
  vm?: string
  net?: string
}

export interface VmEntry {
  id: string
  name: string
  owner: string
  labels: Record<string, string>
  spec: VmCreateBody
  needs: { vcpus: number, memMiB: number, diskGiB: number }
  nics: NicSpec[]
  /** What the owner asked for last. */
  desired: 'running' | 'stopped' | 'destroyed'
  /** The owner's last stop asked to cut the power (no ACPI shutdown first). */
  forceStop?: boolean
  created: number
  expires: number
  via: string
  /** Every host that received the vm.create (holds a valid copy): each must reject it for the rejection to be final. */
  vias: string[]
  /** Requests that shaped this VM, in order (its history). */
  requests: string[]
  /**
   * Some host (a member or not, now) once took it beyond a bare claim: placed again after its host
   * is gone (expelled, or evicted it), it is not held to its request's expiry, which only bounds
   * how long a new request may wait for its first host.
   */
  wasPlaced?: boolean
  /** The host that runs it (settled claims), or null. */
  host: string | null
  claimants: string[]
  /** Final rejection: no host could take it. */
  rejected?: { reasons: Reason[] }
  /** The host's report, when the VM is placed. */
  report?: HostVm
  /** Its host is lost (crdt/lease.ts) and the VM is `--ha none`: it stays there, down, until the host returns. */
  hostLost?: { since: string }
  /** `--ha restart`: a majority of the members endorse its host's claim, so it may run there (crdt/lease.ts). */
  endorsed?: boolean
  /**
   * The owner's last `vm move`: the host it left (`from`, as the owner saw it), whose disk the new
   * host starts from (node/compute/disk-handover.ts), and the request, which names the hand-over.
   */
  move?: { from: string, request: string, settled?: boolean }
}

export interface NetEntry {
  id: string
  name: string
  owner: string
  spec: NetCreateBody
  created: number
  requests: string[]
}

export interface ImageEntry {
  id: string
  name: string
  owner: string
  sha256: string
  format: 'raw' | 'qcow2'
  sizeBytes: number
  arch: string
}

export interface World {
  vms: Map<string, VmEntry>
  nets: Map<string, NetEntry>
  images: Map<string, ImageEntry>
  requests: Map<string, RequestOutcome>
  revoked: Set<string>
  hosts: HostView[]
  /** Per VM still unplaced and not rejected: every host's decision (for `request show`). */
  decisions: Map<string, HostDecision[]>
}

/** Hosts as placement sees them: published resources and policy; usage is counted by `assign`. */
export function hostViews (doc: Partial<MeshDoc>, up?: (peer: string) => boolean): HostView[] {
  const out: HostView[] = []
  const lost = lostHosts(doc)
  for (const peer of Object.keys(doc.members ?? {})) {
    const rec = doc.hosts?.[peer]
    const res = rec?.resources
    let policy: TrustPolicy
    try {
      policy = rec?.policy === undefined ? emptyPolicy() : validatePolicy(rec.policy)
    } catch {
      policy = emptyPolicy()
    }
    out.push({
      peerId: peer,
      labels: { ...(res?.labels ?? {}) },
      arch: [...(res?.arch ?? [])],
      capacity: { vcpus: res?.vcpus ?? 0, memMiB: res?.memMiB ?? 0, diskGiB: res?.diskGiB ?? 0 },
      used: { vcpus: 0, memMiB: 0, diskGiB: 0 },
      policy,
      usageByIssuer: {},
      member: isActiveMember(doc, peer),
      up: up === undefined ? true : up(peer),
      ...(res?.networks === false ? { networks: false } : {}),
      ...(lost.has(peer) ? { lost: true } : {}),
      ...(rec?.drained !== undefined ? { drained: true } : {})
    })
  }
  return out
}

function outcome (r: VerifiedRequest, status: RequestStatus, reasons: Reason[] = [], extra: Partial<RequestOutcome> = {}): RequestOutcome {
  return { id: r.id, kind: r.kind, issuer: r.issuer, created: new Date(r.created).toISOString(), via: r.via, vias: [r.via], status, reasons, ...extra }
}

const everywhere = (reason: string, detail: string): Reason[] => [{ host: null, reason, detail }]

/**
 * All claims in the hosts' records, as placement takes them. A claim is settled once its host
 * reports the VM beyond the bare claim: settled placements are served first, so a later request
 * (whatever `created` it names) can never displace a placed VM (crdt/placement.ts).
 */
export function allClaims (doc: Partial<MeshDoc>): Claim[] {
  const claims: Claim[] = []
  for (const [peer, rec] of Object.entries(doc.hosts ?? {})) {
    if (!isActiveMember(doc, peer)) continue
    for (const [id, claim] of Object.entries(rec.claims ?? {})) {
      // A claim from before the host was lost and came back is void (crdt/lease.ts).
      if (!claimCurrent(rec, claim)) continue
      const report = rec.vms?.[id]
      claims.push({ requestId: id, peerId: peer, settled: report !== undefined && report.status !== 'claimed' })
    }
  }
  return claims
}

/** Placed VMs (a settled claim won): counted first when deciding where new VMs go. */
export function settledHosts (actual: ReadonlyMap<string, { host: string | null }>, claims: readonly Claim[]): Map<string, string> {
  const settled = new Set(claims.filter(c => c.settled === true).map(c => `${c.requestId}/${c.peerId}`))
  const out = new Map<string, string>()
  for (const [id, a] of actual) if (a.host !== null && settled.has(`${id}/${a.host}`)) out.set(id, a.host)
  return out
}

export function placementRequests (vms: Iterable<VmEntry>): PlacementRequest[] {
  const out: PlacementRequest[] = []
  for (const vm of vms) {
    if (vm.desired === 'destroyed' || vm.rejected !== undefined) continue
    out.push({
      id: vm.id,
      issuer: vm.owner,
      created: vm.created,
      needs: { ...vm.needs, arch: vm.spec.arch, networks: vm.nics.map(n => n.net), pin: vm.spec.pin },
      ...(vm.spec.ha === 'restart' ? { ha: 'restart' as const } : {})
    })
  }
  return out
}

/**
 * The first copy of a request that this host found valid, else the verdict on the first copy.
 * Copies come in one order everywhere (earliest stamp, then host): every host picks the same.
 */
export function judgeCopies (id: string, copies: readonly RequestCopy[], validity: (id: string, via: string) => Validity | undefined): { copy: RequestCopy, v: Validity | undefined } {
  let first: { copy: RequestCopy, v: Validity | undefined } | undefined
  for (const copy of copies) {
    const v = validity(id, copy.via)
    if (v?.ok === true) return { copy, v }
    first ??= { copy, v }
  }
  return first as { copy: RequestCopy, v: Validity | undefined }
}

export function deriveWorld (doc: Partial<MeshDoc>, validity: (id: string, via: string) => Validity | undefined): World {
  const vms = new Map<string, VmEntry>()
  const nets = new Map<string, NetEntry>()
  const images = new Map<string, ImageEntry>()
  const requests = new Map<string, RequestOutcome>()
  const revoked = new Set<string>()

  // A final rejection counts only when every host that holds a valid copy of the request (that
  // received it) wrote one: another host's word about someone else's request is ignored, and a
  // member that replays a copy of a request with an earlier stamp gains no veto by it.
  const rejectionBy = (id: string, vias: readonly string[]): Reason[] | undefined => {
    if (vias.length === 0 || vias.some(v => doc.hosts?.[v]?.rejections?.[id] === undefined)) return undefined
    const r = doc.hosts?.[vias[0]]?.rejections?.[id]
    if (r === undefined) return undefined
    let reasons: Reason[] = everywhere('rejected', r.reason)
    try {
      const parsed = r.reasons === undefined ? undefined : JSON.parse(r.reasons)
      if (Array.isArray(parsed) && parsed.length > 0 && parsed.length <= 1000) {
        reasons = parsed.filter((x: unknown) => typeof x === 'object' && x !== null).map((x: any) => ({
          host: typeof x.host === 'string' ? x.host : null, reason: String(x.reason ?? '').slice(0, 200), detail: String(x.detail ?? '').slice(0, 2000)
        }))
      }
    } catch {}
    return reasons
  }
  const claims = allClaims(doc)
  const claimed = new Set(claims.map(c => c.requestId))

  const valid: VerifiedRequest[] = []
  /** Per request, every host holding a copy this host found valid. */
  const viasOf = new Map<string, string[]>()
  for (const [id, copies] of doc.requests ?? new Map<string, RequestCopy[]>()) {
    if (copies.length === 0) continue
    const { copy, v } = judgeCopies(id, copies, validity)
    viasOf.set(id, copies.filter(c => validity(id, c.via)?.ok === true).map(c => c.via).sort())
    if (v === undefined) {
      requests.set(id, { id, kind: '?', issuer: '?', created: '', via: copy.via, vias: [], status: 'pending', reasons: everywhere('verifying', 'this host has not verified the request yet') })
    } else if (!v.ok) {
      requests.set(id, { id, kind: '?', issuer: '?', created: '', via: copy.via, vias: [], status: 'rejected', reasons: everywhere(v.code, v.reason) })
    } else {
      valid.push(v.request)
    }
  }
  valid.sort((a, b) => (a.created - b.created) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))

  const vmByRef = (ref: string, issuer: string): VmEntry | undefined => {
    const live = [...vms.values()].filter(v => v.desired !== 'destroyed' && v.rejected === undefined)
    return live.find(v => v.id === ref) ?? live.find(v => v.name === ref && v.owner === issuer) ?? (() => {
      const named = live.filter(v => v.name === ref)
      return named.length === 1 ? named[0] : undefined
    })()
  }

  for (const r of valid) {
    const reject = (reason: string, detail: string): void => { requests.set(r.id, outcome(r, 'rejected', everywhere(reason, detail))) }
    const accept = (extra: Partial<RequestOutcome> = {}): void => { requests.set(r.id, outcome(r, 'accepted', [], extra)) }
    if (revoked.has(r.issuer)) { reject('key-revoked', `key ${r.issuer} was revoked`); continue }
    switch (r.kind) {
      case 'key.revoke': {
        const b = r.body as RequestBodies['key.revoke']
        if (b.fingerprint !== r.issuer) { reject('not-owner', 'a key may revoke only itself'); break }
        revoked.add(r.issuer)
        accept()
        break
      }
      case 'vm.create': {
        const b = r.body as VmCreateBody
        const needs = vmResources(b)
        if (needs === undefined) { reject('unknown-type', `VM type ${JSON.stringify(b.type)} is not known to this mesh (known: small, medium, large)`); break }
        if ([...vms.values()].some(v => v.owner === r.issuer && v.name === b.name && v.desired !== 'destroyed' && v.rejected === undefined)) {
          reject('name-taken', `you already have a VM named ${b.name}`); break
        }
        const missing = b.nics.find(n => nets.get(n.net) === undefined)
        if (missing !== undefined) { reject('no-such-network', `network ${missing.net} does not exist (create it with \`picocloud net create\`)`); break }
        const foreign = b.nics.find(n => nets.get(n.net)?.owner !== r.issuer)
        if (foreign !== undefined) { reject('network-not-owned', `network ${foreign.net} belongs to ${nets.get(foreign.net)?.owner ?? '?'}; a VM may use only its owner's networks`); break }
        const vm: VmEntry = {
          id: r.id,
          name: b.name,
          owner: r.issuer,
          labels: { ...b.labels },
          spec: b,
          needs,
          nics: b.nics.map(n => ({ ...n })),
          desired: 'running',
          created: r.created,
          expires: r.expires,
          via: r.via,
          vias: viasOf.get(r.id) ?? [r.via],
          requests: [r.id],
          host: null,
          claimants: []
        }
        const rejected = rejectionBy(r.id, vm.vias)
        if (rejected !== undefined && !claimed.has(r.id)) vm.rejected = { reasons: rejected }
        vms.set(vm.id, vm)
        requests.set(r.id, outcome(r, 'pending', [], { vm: vm.id }))
        break
      }
      case 'vm.start': case 'vm.stop': case 'vm.destroy': case 'vm.modify': case 'vm.move': case 'vm.nic.add': case 'vm.nic.remove': {
        const b = r.body as { vm: string }
        const vm = vmByRef(b.vm, r.issuer)
        if (vm === undefined) { reject('no-such-vm', `no VM ${b.vm}`); break }
        if (vm.owner !== r.issuer) { reject('not-owner', `VM ${vm.name} belongs to ${vm.owner}; only its owner may change it`); break }
        if (r.kind === 'vm.start') { vm.desired = 'running'; delete vm.forceStop }
        else if (r.kind === 'vm.stop') { vm.desired = 'stopped'; vm.forceStop = (r.body as RequestBodies['vm.stop']).force }
        else if (r.kind === 'vm.destroy') vm.desired = 'destroyed'
        else if (r.kind === 'vm.move') {
          const m = r.body as RequestBodies['vm.move']
          const { pin: _old, ...rest } = vm.spec
          vm.spec = m.pin === undefined ? rest : { ...rest, pin: m.pin }
          vm.move = { from: m.from, request: r.id }
        } else if (r.kind === 'vm.nic.add') {
          const nic = (r.body as RequestBodies['vm.nic.add']).nic
          const net = nets.get(nic.net)
          if (net === undefined) { reject('no-such-network', `network ${nic.net} does not exist`); break }
          if (net.owner !== r.issuer) { reject('network-not-owned', `network ${nic.net} belongs to ${net.owner}`); break }
          if (vm.nics.some(n => n.net === nic.net)) { reject('already-attached', `VM ${vm.name} is already on ${nic.net}`); break }
          vm.nics.push({ ...nic })
        } else if (r.kind === 'vm.nic.remove') {
          const net = (r.body as RequestBodies['vm.nic.remove']).net
          if (!vm.nics.some(n => n.net === net)) { reject('not-attached', `VM ${vm.name} has no NIC on ${net}`); break }
          vm.nics = vm.nics.filter(n => n.net !== net)
        } else {
          const m = r.body as RequestBodies['vm.modify']
          if (m.labels !== undefined) vm.labels = { ...m.labels }
          if (m.sshKeys !== undefined || m.restart !== undefined) vm.spec = { ...vm.spec, ...(m.sshKeys !== undefined ? { sshKeys: m.sshKeys } : {}), ...(m.restart !== undefined ? { restart: m.restart } : {}) }
          if (m.type !== undefined || m.cpus !== undefined || m.memMiB !== undefined || m.diskGiB !== undefined) {
            reject('unsupported', 'resizing a VM is not supported yet; create a new one'); break
          }
        }
        vm.requests.push(r.id)
        accept({ vm: vm.id })
        break
      }
      case 'net.create': {
        const b = r.body as NetCreateBody
        if (nets.has(b.name)) { reject('name-taken', `a network named ${b.name} already exists (owner ${nets.get(b.name)?.owner ?? '?'})`); break }
        nets.set(b.name, { id: r.id, name: b.name, owner: r.issuer, spec: b, created: r.created, requests: [r.id] })
        accept({ net: b.name })
        break
      }
      case 'net.delete': {
        const name = (r.body as RequestBodies['net.delete']).net
        const net = nets.get(name)
        if (net === undefined) { reject('no-such-network', `no network ${name}`); break }
        if (net.owner !== r.issuer) { reject('not-owner', `network ${name} belongs to ${net.owner}; only its owner may delete it`); break }
        const users = [...vms.values()].filter(v => v.desired !== 'destroyed' && v.rejected === undefined && v.nics.some(n => n.net === name))
        if (users.length > 0) { reject('in-use', `network ${name} is used by ${users.map(v => v.name).join(', ')}`); break }
        nets.delete(name)
        accept({ net: name })
        break
      }
      case 'image.add': {
        const b = r.body as RequestBodies['image.add']
        const cur = images.get(b.name)
        if (cur !== undefined && cur.owner !== r.issuer) { reject('name-taken', `image name ${b.name} belongs to ${cur.owner}`); break }
        images.set(b.name, { id: r.id, name: b.name, owner: r.issuer, sha256: b.sha256, format: b.format, sizeBytes: b.sizeBytes, arch: b.arch })
        accept()
        break
      }
      case 'image.delete': {
        const name = (r.body as RequestBodies['image.delete']).image
        const cur = images.get(name)
        if (cur === undefined) { reject('no-such-image', `no image ${name}`); break }
        if (cur.owner !== r.issuer) { reject('not-owner', `image ${name} belongs to ${cur.owner}`); break }
        images.delete(name)
        accept()
        break
      }
    }
  }

  // Placement: claims settle who runs what; the unclaimed get every host's decision.
  const hosts = hostViews(doc)
  const preqs = placementRequests(vms.values())
  const actual = new Map(resolveClaims(preqs, hosts, claims).map(a => [a.requestId, a]))
  const ideal = new Map(assign(preqs, hosts, { fixed: settledHosts(actual, claims) }).map(a => [a.requestId, a]))
  const decisions = new Map<string, HostDecision[]>()
  const placedOnce = new Set<string>()
  let lostSet: ReturnType<typeof lostHosts> | undefined
  for (const rec of Object.values(doc.hosts ?? {})) {
    for (const [id, r] of Object.entries(rec.vms ?? {})) if (r?.status !== undefined && String(r.status) !== 'claimed') placedOnce.add(id)
  }
  for (const vm of vms.values()) {
    vm.claimants = claims.filter(c => c.requestId === vm.id).map(c => c.peerId).sort()
    if (placedOnce.has(vm.id)) vm.wasPlaced = true
    const out = requests.get(vm.id)
    if (vm.rejected !== undefined) {
      if (out !== undefined) { out.status = 'rejected'; out.reasons = vm.rejected.reasons }
      continue
    }
    if (vm.desired === 'destroyed') {
      vm.host = null
      continue
    }
    // The host it left says it handed the disk over: later placements (a takeover) owe it nothing.
    if (vm.move !== undefined && doc.hosts?.[vm.move.from]?.vms?.[vm.id]?.handedOver === vm.move.request) vm.move.settled = true
    const a = actual.get(vm.id)
    vm.host = a?.host ?? null
    if (vm.spec.ha === 'restart') {
      // Where a majority endorses a standing claim, the VM is there, whatever this view's ranking
      // says — unless that host is drained: then the VM leaves it, and the endorsements follow
      // once it has stopped the VM and withdrawn its claim.
      const lost = lostSet ??= lostHosts(doc)
      // A host the VM's pin no longer admits (the owner moved it) lets it go the same way.
      const endorsed = vm.claimants.find(p => claimStands(doc, lost, vm.id, p) && endorsedByMajority(doc, vm.id, p) && doc.hosts?.[p]?.drained === undefined &&
        pinExcludes(vm.spec.pin, { peerId: p, labels: hosts.find(h => h.peerId === p)?.labels ?? {} }) === undefined)
      if (endorsed !== undefined) vm.host = endorsed
      vm.endorsed = endorsed !== undefined && endorsed === vm.host
    }
    if (vm.host !== null) {
      const lost = hosts.find(h => h.peerId === vm.host)?.lost === true ? lostHosts(doc).get(vm.host) : undefined
      if (lost !== undefined) vm.hostLost = { since: lost.since }
      const report = doc.hosts?.[vm.host]?.vms?.[vm.id]
      vm.report = report === undefined ? undefined : { ...report }
      if (out !== undefined) out.status = vm.report !== undefined && vm.report.status !== 'claimed' ? 'placed' : 'accepted'
      continue
    }
    const i = ideal.get(vm.id)
    const ds = i?.decisions ?? []
    decisions.set(vm.id, ds)
    if (out !== undefined) {
      out.reasons = ds.filter(d => !d.eligible).map(d => ({ host: d.peerId, reason: d.reason ?? 'ineligible', detail: d.detail ?? '' }))
      // A VM that ran once and lost its host waits for another; its request was fulfilled.
      if (i?.host === null) out.status = vm.wasPlaced === true ? 'placed' : 'rejected'
    }
  }
  for (const out of requests.values()) { const v = viasOf.get(out.id); if (v !== undefined && v.length > 0) out.vias = v }
  return { vms, nets, images, requests, revoked, hosts, decisions }
}
