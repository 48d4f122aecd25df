/**
 * Membership operations, each written as an event in this host's own feed: founding a mesh,
 * admitting a host by its peer key, expelling one, changing the mesh policy. Each checks the
 * current fold first so the operator gets a clear error; every host judges the event again by the
 * same rules (crdt/fold.ts), so an event this host should not have written simply does not count.
 */
import { randomBytes } from 'node:crypto'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { STATE_FORMAT, isActiveMember, mayAdmit, mayExpel, scalars, storedEvent, type HostRecord, type MembershipEvent, type Seen } from './schema.ts'
import { meshIdFor } from './mesh-id.ts'
import type { StateStore } from './store.ts'

/** What this host has seen of every other feed: placed in each event it writes (crdt/fold.ts). */
export function seenNow (store: StateStore): Seen {
  const seen: Seen = {}
  for (const f of store.feeds.values()) {
    if (f.author === store.self) continue
    const seq = f.cut === undefined ? f.seq : Math.min(f.seq, f.cut)
    if (seq === 0) continue
    seen[f.author] = `${seq}:${(f.hashAt(seq) as string).slice(0, 16)}`
  }
  return seen
}

async function writeEvent (store: StateStore, message: string, event: (seen: Seen) => MembershipEvent): Promise<void> {
  await store.change(message, d => {
    d.events ??= []
    d.events.push(storedEvent(event(seenNow(store))))
  })
}

export async function foundMesh (store: StateStore, opts: { name: string, host: HostRecord, now?: Date }): Promise<string> {
  if (store.inMesh) throw new PicocloudError(ErrorCode.AlreadyInMesh, `this host is already in mesh ${store.meshId}; a host belongs to one mesh`, 409)
  if (store.feeds.get(store.self)?.seq !== undefined && (store.feeds.get(store.self)?.seq ?? 0) > 0) {
    throw new PicocloudError(ErrorCode.AlreadyInMesh, 'this host has written state before but is in no mesh; use a fresh state directory to found a mesh', 409)
  }
  const nonce = randomBytes(16).toString('hex')
  const id = meshIdFor(store.self, nonce)
  const at = (opts.now ?? new Date()).toISOString()
  await store.change(`init mesh ${opts.name}`, d => {
    d.mesh = scalars({ format: STATE_FORMAT, id, nonce, name: opts.name, founder: store.self, created: at })
    d.host = hostRecordValue(opts.host)
    d.events = []
    d.requests = {}
  })
  return id
}

export async function admit (store: StateStore, peer: string, name: string | undefined, now = new Date()): Promise<{ changed: boolean }> {
  requireMesh(store)
  const doc = store.doc
  if (!mayAdmit(doc, store.self)) {
    throw new PicocloudError(ErrorCode.NotAllowed, `this host may not admit hosts (mesh policy admit=${doc.mesh.policy.admit}); ask the founder ${doc.mesh.founder}`, 403)
  }
  if (peer === doc.mesh.founder) return { changed: false }
  const existing = doc.members[peer]
  if (existing !== undefined && existing.expelled === undefined) return { changed: false }
  if (store.feeds.get(peer)?.cut !== undefined) {
    throw new PicocloudError(ErrorCode.NotAllowed, `${peer} signed two different changes with one sequence number (equivocation); it can come back only with a new peer key`, 403)
  }
  if (existing?.expelled !== undefined && !mayExpel(doc, store.self)) {
    throw new PicocloudError(ErrorCode.NotAllowed, `${peer} was expelled by ${existing.expelled.by}; only the founder or an expeller may admit it again`, 403)
  }
  const at = now.toISOString()
  await writeEvent(store, `admit ${peer}`, seen => ({ op: 'admit', peer, name: name ?? existing?.name ?? '', at, seen }))
  return { changed: true }
}

export async function expel (store: StateStore, peer: string, reason: string, now = new Date()): Promise<{ changed: boolean }> {
  requireMesh(store)
  const doc = store.doc
  if (!mayExpel(doc, store.self)) {
    throw new PicocloudError(ErrorCode.NotAllowed, `this host may not expel members: the mesh policy lets only the founder (${doc.mesh.founder}) and named expellers do so`, 403)
  }
  if (peer === store.self) throw new PicocloudError(ErrorCode.BadRequest, 'a host cannot expel itself')
  if (peer === doc.mesh.founder) throw new PicocloudError(ErrorCode.NotAllowed, 'the founder of the mesh cannot be expelled', 403)
  const m = doc.members[peer]
  if (m === undefined) throw new PicocloudError(ErrorCode.NotMember, `${peer} is not a member of this mesh`, 404)
  if (m.expelled !== undefined) return { changed: false }
  if (doc.mesh.founder !== store.self && doc.mesh.policy.expellers.includes(peer)) {
    throw new PicocloudError(ErrorCode.NotAllowed, `${peer} is an expeller; only the founder (${doc.mesh.founder}) may expel it`, 403)
  }
  const at = now.toISOString()
  await writeEvent(store, `expel ${peer}`, seen => ({ op: 'expel', peer, reason, at, seen }))
  return { changed: true }
}

/** The founder changes who may admit (any member, or only expellers) and who may expel. */
export async function setMeshPolicy (store: StateStore, input: { admit?: 'any-member' | 'expellers', expellers?: string[] }, now = new Date()): Promise<void> {
  requireMesh(store)
  const doc = store.doc
  if (doc.mesh.founder !== store.self) {
    throw new PicocloudError(ErrorCode.NotAllowed, `only the mesh founder (${doc.mesh.founder}) may change the mesh policy`, 403)
  }
  if (input.admit !== undefined && input.admit !== 'any-member' && input.admit !== 'expellers') {
    throw new PicocloudError(ErrorCode.BadRequest, 'admit must be "any-member" or "expellers"')
  }
  for (const e of input.expellers ?? []) {
    if (!isActiveMember(doc, e)) throw new PicocloudError(ErrorCode.NotMember, `${e} is not an active member; only members can be expellers`, 404)
  }
  const admitMode = input.admit ?? doc.mesh.policy.admit
  const expellers = input.expellers === undefined ? [...doc.mesh.policy.expellers] : [...new Set(input.expellers)].filter(e => e !== store.self)
  if (admitMode === doc.mesh.policy.admit && JSON.stringify([...expellers].sort()) === JSON.stringify([...doc.mesh.policy.expellers].sort())) return
  const at = now.toISOString()
  await writeEvent(store, 'set mesh policy', seen => ({ op: 'policy', admit: admitMode, expellers, at, seen }))
}

function hostRecordValue (r: Omit<HostRecord, 'updated'> & { updated?: string }): HostRecord {
  return scalars({ ...r, addresses: [...r.addresses], updated: r.updated ?? new Date().toISOString() }) as HostRecord
}

/** Writes this host's own record when it differs from what is stored. */
export async function publishHostRecord (store: StateStore, record: Omit<HostRecord, 'updated'>): Promise<boolean> {
  requireMesh(store)
  if (!isActiveMember(store.doc, store.self)) return false
  const cur = store.doc.hosts?.[store.self]
  const same = cur !== undefined && cur.name === record.name && cur.wgPublicKey === record.wgPublicKey &&
    cur.version === record.version && JSON.stringify(cur.addresses) === JSON.stringify(record.addresses)
  if (same) return false
  const updated = new Date().toISOString()
  // Field by field: the record also holds the trust policy, claims and VM reports.
  const changed = await store.change('update host record', d => {
    if (d.host === undefined) { d.host = hostRecordValue({ ...record, updated }); return }
    const rec = d.host
    if (String(rec.name) !== record.name) rec.name = scalars(record.name)
    if (String(rec.wgPublicKey) !== record.wgPublicKey) rec.wgPublicKey = scalars(record.wgPublicKey)
    if (String(rec.version) !== record.version) rec.version = scalars(record.version)
    if (JSON.stringify(rec.addresses) !== JSON.stringify(record.addresses)) rec.addresses = scalars([...record.addresses])
    rec.updated = scalars(updated)
  })
  return changed !== undefined
}

function requireMesh (store: StateStore): void {
  if (!store.inMesh) throw new PicocloudError(ErrorCode.NotInMesh, 'this host is not in a mesh yet: run `picocloud init` to start one or `picocloud join <address>` to join one', 409)
}
