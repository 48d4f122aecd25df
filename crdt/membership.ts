/**
 * Membership operations on the replicated state: founding a mesh, admitting a host by its peer
 * key, expelling one. Each checks the mesh policy locally first so the operator gets a clear
 * error; receivers check the same rules again (crdt/permissions.ts).
 */
import { randomBytes } from 'node:crypto'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import { DEFAULT_POLICY, asString, isActiveMember, mayAdmit, mayExpel, scalars, type HostRecord } from './schema.ts'
import type { StateStore } from './store.ts'

export async function foundMesh (store: StateStore, opts: { name: string, host: HostRecord, now?: Date }): Promise<string> {
  if (store.inMesh) throw new PicocloudError(ErrorCode.AlreadyInMesh, `this host is already in mesh ${store.meshId}; a host belongs to one mesh`, 409)
  const id = randomBytes(16).toString('hex')
  const at = (opts.now ?? new Date()).toISOString()
  await store.change(`init mesh ${opts.name}`, d => {
    d.mesh = { id, name: opts.name, founder: store.self, created: at, policy: { ...DEFAULT_POLICY, expellers: [] } }
    // The mesh info stays text (see scalars()); members and the record's stamp are scalars.
    d.members = { [store.self]: scalars({ name: opts.host.name, admittedBy: store.self, admittedAt: at }) }
    d.hosts = { [store.self]: { ...opts.host, addresses: [...opts.host.addresses], updated: scalars(opts.host.updated) } }
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
  const existing = doc.members[peer]
  if (existing !== undefined && existing.expelled === undefined) return { changed: false }
  if (existing?.expelled !== undefined && !mayExpel(doc, store.self)) {
    throw new PicocloudError(ErrorCode.NotAllowed, `${peer} was expelled by ${existing.expelled.by}; only the founder or an expeller may admit it again`, 403)
  }
  const at = now.toISOString()
  await store.change(`admit ${peer}`, d => {
    d.members[peer] = scalars({ name: name ?? (existing === undefined ? '' : asString(existing.name)), admittedBy: store.self, admittedAt: at })
  })
  return { changed: true }
}

export async function expel (store: StateStore, peer: string, reason: string, now = new Date()): Promise<{ changed: boolean }> {
  requireMesh(store)
  const doc = store.doc
  if (!mayExpel(doc, store.self)) {
    throw new PicocloudError(ErrorCode.NotAllowed, `this host may not expel members: the mesh policy lets only the founder (${doc.mesh.founder}) and named expellers do so`, 403)
  }
  if (peer === store.self) throw new PicocloudError(ErrorCode.BadRequest, 'a host cannot expel itself')
  const m = doc.members[peer]
  if (m === undefined) throw new PicocloudError(ErrorCode.NotMember, `${peer} is not a member of this mesh`, 404)
  if (m.expelled !== undefined) return { changed: false }
  const at = now.toISOString()
  await store.change(`expel ${peer}`, d => {
    d.members[peer].expelled = scalars({ by: store.self, at, reason })
  })
  return { changed: true }
}

/** The founder changes who may admit (any member, or only expellers) and who may expel. */
export async function setMeshPolicy (store: StateStore, input: { admit?: 'any-member' | 'expellers', expellers?: string[] }): Promise<void> {
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
  await store.change('set mesh policy', d => {
    if (input.admit !== undefined && d.mesh.policy.admit !== input.admit) d.mesh.policy.admit = input.admit
    if (input.expellers !== undefined) d.mesh.policy.expellers = [...new Set(input.expellers)].filter(e => e !== store.self)
  })
}

/** Writes this host's own record when it differs from what is stored. */
export async function publishHostRecord (store: StateStore, record: Omit<HostRecord, 'updated'>): Promise<boolean> {
  requireMesh(store)
  if (!isActiveMember(store.doc, store.self)) return false
  const cur = store.doc.hosts?.[store.self]
  const same = cur !== undefined && cur.name === record.name && cur.wgPublicKey === record.wgPublicKey &&
    cur.version === record.version && JSON.stringify([...cur.addresses]) === JSON.stringify(record.addresses)
  if (same) return false
  const updated = new Date().toISOString()
  // Field by field: the record also holds the trust policy, claims and VM reports.
  const changed = await store.change('update host record', d => {
    const rec = d.hosts[store.self]
    if (rec === undefined) {
      d.hosts[store.self] = { ...record, addresses: [...record.addresses], updated: scalars(updated) }
      return
    }
    if (rec.name !== record.name) rec.name = record.name
    if (rec.wgPublicKey !== record.wgPublicKey) rec.wgPublicKey = record.wgPublicKey
    if (rec.version !== record.version) rec.version = record.version
    if (JSON.stringify([...rec.addresses]) !== JSON.stringify(record.addresses)) rec.addresses = [...record.addresses]
    // Rewritten at every update: a scalar, not a new text of 24 ops each time.
    rec.updated = scalars(updated)
  })
  return changed !== undefined
}

function requireMesh (store: StateStore): void {
  if (!store.inMesh) throw new PicocloudError(ErrorCode.NotInMesh, 'this host is not in a mesh yet: run `picocloud init` to start one or `picocloud join <address>` to join one', 409)
}
