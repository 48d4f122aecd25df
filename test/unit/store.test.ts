import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { mkdtemp, rm, appendFile, stat, truncate } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as A from '@automerge/automerge'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { StateStore, CHANGE_LOG_FILE } from '../../crdt/store.ts'
import { foundMesh, admit, expel, publishHostRecord, setMeshPolicy } from '../../crdt/membership.ts'
import { optString } from '../../crdt/schema.ts'
import { signChange } from '../../crdt/signed-changes.ts'

const record = (name: string) => ({ name, addresses: [], wgPublicKey: 'k', version: 't' })

describe('replicated state with authenticated changes', () => {
  let dir: string
  const open: StateStore[] = []
  const mk = async (name: string, key?: Awaited<ReturnType<typeof generateKeyPair>>) => {
    const s = await StateStore.open({ dir: join(dir, name), key: key ?? await generateKeyPair('Ed25519') })
    open.push(s)
    return s
  }
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-store-'))
    for (const n of ['a', 'b', 'c', 'b2']) await (await import('node:fs/promises')).mkdir(join(dir, n))
  })
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close()
    await rm(dir, { recursive: true, force: true })
  })

  async function mesh () {
    const a = await mk('a'); const b = await mk('b'); const c = await mk('c')
    await foundMesh(a, { name: 'm', host: { ...record('a'), updated: '' } })
    await admit(a, b.self, 'b'); await admit(a, c.self, 'c')
    for (const s of [b, c]) {
      s.acceptGenesis = true
      const r = await s.receive(a.changesSince([]), a.self)
      expect(r.rejected).toEqual([])
      s.acceptGenesis = false
    }
    return { a, b, c }
  }

  it('replicates a mesh and the hosts own records', async () => {
    const { a, b, c } = await mesh()
    await publishHostRecord(b, record('bee'))
    const r = await a.receive(b.changesSince(a.heads()), b.self)
    expect(r.applied).toHaveLength(1)
    await c.receive(b.changesSince(c.heads()), b.self)
    expect(a.doc.hosts[b.self].name).toBe('bee')
    expect(c.doc.hosts[b.self].name).toBe('bee')
    expect(a.heads()).toEqual(c.heads())
  })

  it('rejects a change signed by B that writes into A\'s record, on every receiver', async () => {
    const { a, b, c } = await mesh()
    // B writes A's record locally (its own store does not police itself) and pushes it.
    const forged = await b.change('forge', d => { d.hosts[a.self].name = 'pwned' })
    for (const s of [a, c]) {
      const before = s.heads()
      const r = await s.receive([forged!], b.self)
      expect(r.applied).toHaveLength(0)
      expect(r.rejected[0].misbehaviour).toBe(true)
      expect(r.rejected[0].reason).toMatch(/writes only its own record/)
      expect(s.heads()).toEqual(before)
      expect(s.doc.hosts[a.self].name).toBe('a')
      expect(s.has(A.decodeChange(forged!.change).hash!)).toBe(false)
    }
    // The rejected change left no trace: both keep writing and accepting valid changes.
    await publishHostRecord(c, record('c2'))
    expect((await a.receive(c.changesSince(a.heads()), c.self)).applied.length).toBeGreaterThan(0)
    expect((await a.change('after', d => { d.hosts[a.self].name = 'a2' }))).toBeDefined()
    expect(a.doc.hosts[a.self].name).toBe('a2')
    expect(a.doc.hosts[c.self].name).toBe('c2')
    expect(A.getHeads(A.load(A.save(a.doc)))).toEqual(a.heads())
  })

  it('rejects a bad signature, a non-member author and equivocation', async () => {
    const { a, b } = await mesh()
    const good = await publishHostRecord(b, record('b1')) && b.changesSince(a.heads())[0]
    if (!good) throw new Error('no change')
    const bad = { change: good.change, signature: new Uint8Array(64) }
    expect((await a.receive([bad], b.self)).rejected[0].reason).toMatch(/bad signature/)

    // Equivocation: B's key makes a different change with the same sequence number.
    const bKey = (b as any).key
    const twin = await StateStore.open({ dir: join(dir, 'b2'), key: bKey })
    open.push(twin)
    twin.acceptGenesis = true
    await twin.receive(a.changesSince([]), a.self)
    await publishHostRecord(twin, record('b-other'))
    expect((await a.receive([good], b.self)).applied).toHaveLength(1)
    const r = await a.receive(twin.changesSince(a.heads()).filter(s => !a.has(A.decodeChange(s.change).hash!)), b.self)
    expect(r.rejected[0].reason).toMatch(/equivocation/)

    // A stranger's change is rejected even if well signed.
    const stranger = await generateKeyPair('Ed25519')
    let doc = A.clone(a.doc, { actor: Buffer.from((await import('@libp2p/peer-id')).peerIdFromPrivateKey(stranger).toMultihash().bytes).toString('hex') })
    doc = A.change(doc, d => { d.hosts.x = { ...record('x'), addresses: [], updated: '' } as any })
    const sc = await signChange(A.getLastLocalChange(doc)!, stranger)
    expect((await a.receive([sc])).rejected[0].reason).toMatch(/not an active member/)
  })

  it('judges a change in its own causal context: concurrent writes of one request are fine, a forged concurrent write is not hidden by the merge', async () => {
    const { a, b, c } = await mesh()
    const { createHash } = await import('node:crypto')
    const payload = '{"v":1}'
    const id = createHash('sha256').update(payload).digest('hex')
    const store = (s: StateStore, via: string) => async () => await s.change('request', d => { d.requests![id] = { payload, signature: 's', via, at: 'now' } })
    const fromA = await store(a, a.self)()
    const fromB = await store(b, b.self)()
    // Each side receives the other's concurrent creation of the same request: both are legitimate.
    expect((await a.receive([fromB!], b.self)).rejected).toEqual([])
    expect((await b.receive([fromA!], a.self)).rejected).toEqual([])
    expect(a.heads().sort()).toEqual(b.heads().sort())
    // C writes into A's record concurrently with A's own write of the same field. Whichever wins
    // the merge, C's change is judged on what it did itself.
    await c.receive([fromA!, fromB!], a.self)
    const own = await a.change('name', d => { d.hosts[a.self].name = 'mine' })
    const forged = await c.change('forge', d => { d.hosts[a.self].name = 'zzz-forged' })
    await b.receive([own!], a.self)
    const r = await b.receive([forged!], c.self)
    expect(r.rejected[0]?.reason).toMatch(/writes only its own record/)
  })

  it('holds changes whose dependencies are missing and applies them once they arrive', async () => {
    const { a, b } = await mesh()
    await publishHostRecord(b, record('one'))
    await publishHostRecord(b, record('two'))
    const [first, second] = b.changesSince(a.heads())
    const r1 = await a.receive([second], b.self)
    expect(r1.applied).toHaveLength(0)
    expect(r1.pending).toBe(1)
    const r2 = await a.receive([first], b.self)
    expect(r2.applied).toHaveLength(2)
    expect(a.doc.hosts[b.self].name).toBe('two')
  })

  it('only the founder (or a named expeller) may expel', async () => {
    const { a, b, c } = await mesh()
    await expect(expel(b, c.self, 'no')).rejects.toMatchObject({ code: 'NOT_ALLOWED' })
    await expel(a, c.self, 'gone')
    await b.receive(a.changesSince(b.heads()), a.self)
    expect(optString(b.doc.members[c.self].expelled?.by)).toBe(a.self)
    // An expelled host's later changes are refused.
    await c.receive(a.changesSince(c.heads()), a.self)
    const late = await c.change('late', d => { d.hosts[c.self] = { ...record('still here'), addresses: [], updated: '' } })
    const r = await b.receive([late!], c.self)
    expect(r.rejected[0].reason).toMatch(/not an active member/)
  })

  it('the founder (only) sets the mesh policy; a named expeller may then expel', async () => {
    const { a, b, c } = await mesh()
    await expect(setMeshPolicy(b, { expellers: [b.self] })).rejects.toMatchObject({ code: 'NOT_ALLOWED' })
    await setMeshPolicy(a, { expellers: [b.self] })
    await b.receive(a.changesSince(b.heads()), a.self)
    await expel(b, c.self, 'named expeller')
    await a.receive(b.changesSince(a.heads()), b.self)
    expect(optString(a.doc.members[c.self].expelled?.by)).toBe(b.self)
    // B forging a policy change of its own is refused by the others.
    const forged = await b.change('forge policy', d => { d.mesh.policy.admit = 'expellers' })
    expect((await a.receive([forged!], b.self)).rejected[0].reason).toMatch(/only the founder may change the mesh policy/)
  })

  it('survives a torn write: reload keeps every complete change and cuts the tail', async () => {
    const key = await generateKeyPair('Ed25519')
    const s = await mk('a', key)
    await foundMesh(s, { name: 'm', host: { ...record('a'), updated: '' } })
    await publishHostRecord(s, record('renamed'))
    const heads = s.heads()
    await s.close(); open.pop()
    const path = join(dir, 'a', CHANGE_LOG_FILE)
    const size = (await stat(path)).size
    await appendFile(path, Buffer.from([0, 0, 1, 0, 9, 9, 9])) // a torn header + partial payload
    const again = await mk('a', key)
    expect(again.heads()).toEqual(heads)
    expect(again.doc.hosts[again.self].name).toBe('renamed')
    expect((await stat(path)).size).toBe(size)
    // Cutting into the last record loses only that record.
    await again.close(); open.pop()
    await truncate(path, size - 3)
    const third = await mk('a', key)
    expect(third.doc.hosts[third.self].name).toBe('a')
    expect(third.changeCount).toBe(1)
  })
})

describe('host record updates', () => {
  it('change only the fields that moved and keep the rest of the record (policy, claims, VM reports)', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises')
    const dir = await mkdtemp(join(tmpdir(), 'pc-rec-'))
    const s = await StateStore.open({ dir, key: await generateKeyPair('Ed25519') })
    try {
      await foundMesh(s, { name: 'm', host: { ...record('a'), updated: '' } })
      await s.change('claim', d => { d.hosts[s.self].claims = { x: { at: 'now' } } })
      expect(await publishHostRecord(s, { ...record('a'), addresses: ['/ip4/127.0.0.1/tcp/1'] })).toBe(true)
      expect(s.doc.hosts[s.self].claims?.x.at).toBe('now')
      expect([...s.doc.hosts[s.self].addresses]).toEqual(['/ip4/127.0.0.1/tcp/1'])
      expect(await publishHostRecord(s, { ...record('a'), addresses: ['/ip4/127.0.0.1/tcp/1'] })).toBe(false)
    } finally {
      await s.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
