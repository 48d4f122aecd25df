import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { mkdtemp, mkdir, rm, copyFile, readFile, writeFile, stat, truncate, access } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as A from '@automerge/automerge'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { StateStore, CHANGE_LOG_FILE, type StoreInit } from '../../crdt/store.ts'
import { SNAPSHOT_FILE, encodeSnapshot, decodeSnapshot } from '../../crdt/snapshot.ts'
import { foundMesh, admit, publishHostRecord } from '../../crdt/membership.ts'
import type { Fields, Logger } from '../../node/log.ts'

const record = (name: string) => ({ name, addresses: [], wgPublicKey: 'k', version: 't' })

/** A logger that keeps its lines, to see which way a store was loaded. */
function recorder (): Logger & { lines: Array<{ level: string, msg: string, fields?: Fields }> } {
  const lines: Array<{ level: string, msg: string, fields?: Fields }> = []
  const l: any = { lines, forComponent: () => l }
  for (const level of ['debug', 'info', 'warn', 'error']) l[level] = (msg: string, fields?: Fields) => lines.push({ level, msg, fields })
  return l
}

const frontierOf = (s: StateStore) => new Map(s.frontier().map(e => [e.author, { seq: e.seq, hash16: e.hash16 }]))
const loaded = (l: ReturnType<typeof recorder>) => l.lines.find(x => x.msg === 'loaded state')?.fields
const exists = async (p: string) => await access(p).then(() => true, () => false)

/** Everything a restarted store must have back, in comparable form. */
function state (s: StateStore) {
  const half = new Map(s.frontier().map(e => [e.author, { seq: Math.floor(e.seq / 2), hash16: '' }]))
  const fixHalf = new Map([...half].map(([a, h]) => [a, { seq: h.seq, hash16: h.seq === 0 ? '' : (s.feeds.get(a)?.hashAt(h.seq) ?? '').slice(0, 16) }]))
  return {
    doc: JSON.parse(JSON.stringify({ ...s.doc, requests: [...s.doc.requests] })),
    heads: [...s.heads()].sort(),
    frontier: s.frontier(),
    history: s.history(),
    all: s.changesFor(new Map()).map(c => [Buffer.from(c.change).toString('hex'), Buffer.from(c.signature).toString('hex')]),
    since: s.changesFor(fixHalf).map(c => Buffer.from(c.change).toString('hex')),
    changeCount: s.changeCount
  }
}

describe('state snapshots', () => {
  let dir: string
  const opened: StateStore[] = []
  const mk = async (name: string, key?: PrivateKey, opts: Partial<StoreInit> = {}) => {
    await mkdir(join(dir, name), { recursive: true })
    const s = await StateStore.open({ dir: join(dir, name), key: key ?? await generateKeyPair('Ed25519'), snapshotEvery: 1_000_000, ...opts })
    opened.push(s)
    return s
  }
  const close = async (s: StateStore) => { opened.splice(opened.indexOf(s), 1); await s.close() }
  /** What a crash would leave on disk now: a copy of the state dir (log, snapshot, temp file). */
  const crashCopy = async (from: string, to: string, files = [CHANGE_LOG_FILE, SNAPSHOT_FILE]) => {
    await mkdir(join(dir, to), { recursive: true })
    for (const f of files) if (await exists(join(dir, from, f))) await copyFile(join(dir, from, f), join(dir, to, f))
  }

  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'pc-snap-')) })
  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** A founder A with B admitted; A holds local changes and changes received from B. */
  async function history (aKey: PrivateKey) {
    const a = await mk('a', aKey); const b = await mk('b')
    await foundMesh(a, { name: 'm', host: { ...record('a'), updated: '' } })
    await admit(a, b.self, 'b')
    b.joining = ''
    expect((await b.receive(a.changesFor(new Map()), a.self)).rejected).toEqual([])
    b.joining = undefined
    await b.change('record', d => { d.host = { ...record('b'), updated: new Date().toISOString() } })
    for (let i = 0; i < 5; i++) {
      await publishHostRecord(b, record(`b${i}`))
      await publishHostRecord(a, record(`a${i}`))
      expect((await a.receive(b.changesFor(frontierOf(a)), b.self)).rejected).toEqual([])
    }
    return { a, b }
  }

  it('a snapshot plus the log after it loads exactly what a full replay of the log does', async () => {
    const aKey = await generateKeyPair('Ed25519')
    const { a, b } = await history(aKey)
    await a.snapshot()
    const covered = decodeSnapshot(await readFile(join(dir, 'a', SNAPSHOT_FILE))).log.records
    expect(covered).toBe(a.changeCount)
    // More after the snapshot: local and received changes.
    await publishHostRecord(a, record('a-late'))
    await publishHostRecord(b, record('b-late'))
    await a.receive(b.changesFor(frontierOf(a)), b.self)
    const bKey = (b as any).key as PrivateKey
    await publishHostRecord(b, record('b-concurrent'))
    await publishHostRecord(a, record('a-concurrent'))
    await a.receive(b.changesFor(frontierOf(a)), b.self)
    await (a as any).changeLog.idle()
    expect(a.heads()).toHaveLength(2)

    await crashCopy('a', 'from-snapshot')
    await crashCopy('a', 'replayed', [CHANGE_LOG_FILE])
    const l1 = recorder(); const l2 = recorder()
    const s1 = await mk('from-snapshot', aKey, { log: l1 })
    const s2 = await mk('replayed', aKey, { log: l2 })
    expect(loaded(l1)).toMatchObject({ fromSnapshot: covered, fromLog: a.changeCount - covered })
    expect(loaded(l2)).toMatchObject({ fromSnapshot: 0, fromLog: a.changeCount })
    expect(state(s1)).toEqual(state(a))
    expect(state(s2)).toEqual(state(a))

    // The restarted host goes on with its own sequence numbers: B accepts its next change.
    await publishHostRecord(s1, record('a-after-restart'))
    expect((await b.receive(s1.changesFor(frontierOf(b)), s1.self)).rejected).toEqual([])
    expect(b.doc.hosts[s1.self].name).toBe('a-after-restart')

    // Equivocation is still caught for a sequence number covered by the snapshot: B's key signs
    // another change with a seq the restored store already holds.
    const twin = await mk('b-twin', bKey)
    const fork = await twin.change('fork', d => { d.host = { ...record('fork'), updated: new Date().toISOString() } })
    expect(A.decodeChange(fork!.change).seq).toBe(1)
    const r = await s1.receive([fork!], b.self)
    expect(r.evidence).toHaveLength(1)
    expect(r.evidence[0].author).toBe(b.self)
    expect(s1.doc.members[b.self].expelled?.reason).toMatch(/equivocated/)
  })

  it('is written by the store after every N changes and at close; a clean restart reads no log record', async () => {
    const key = await generateKeyPair('Ed25519')
    const s = await mk('a', key, { snapshotEvery: 3 })
    await foundMesh(s, { name: 'm', host: { ...record('a'), updated: '' } })
    for (let i = 0; i < 4; i++) await publishHostRecord(s, record(`n${i}`))
    await s.snapshot() // waits for the one the policy started
    const auto = decodeSnapshot(await readFile(join(dir, 'a', SNAPSHOT_FILE))).log.records
    expect(auto).toBeGreaterThanOrEqual(3)
    await publishHostRecord(s, record('last'))
    const before = state(s)
    await close(s)
    expect(decodeSnapshot(await readFile(join(dir, 'a', SNAPSHOT_FILE))).log.records).toBe(before.changeCount)
    const l = recorder()
    const again = await mk('a', key, { log: l })
    expect(loaded(l)).toMatchObject({ fromSnapshot: before.changeCount, fromLog: 0 })
    expect(l.lines.filter(x => x.level === 'warn')).toEqual([])
    expect(state(again)).toEqual(before)
  })

  it('falls back to a full replay, with a warning, for a corrupt, truncated or older-format snapshot', async () => {
    const key = await generateKeyPair('Ed25519')
    const { a } = await history(key)
    await close(a)
    const good = await readFile(join(dir, 'a', SNAPSHOT_FILE))
    const flipped = Buffer.from(good); flipped[Math.floor(good.length / 2)] ^= 0xff
    const older = Buffer.from(good); older[7] = 0
    for (const [name, bytes] of [['flipped', flipped], ['cut', good.subarray(0, good.length - 100)], ['older', older], ['empty', Buffer.alloc(0)]] as const) {
      await crashCopy('a', name, [CHANGE_LOG_FILE])
      await writeFile(join(dir, name, SNAPSHOT_FILE), bytes)
      await crashCopy('a', `${name}-replay`, [CHANGE_LOG_FILE])
      const l = recorder()
      const s = await mk(name, key, { log: l })
      expect(l.lines.some(x => x.level === 'warn' && /ignoring the snapshot/.test(x.msg)), name).toBe(true)
      expect(loaded(l)).toMatchObject({ fromSnapshot: 0 })
      expect(await exists(join(dir, name, SNAPSHOT_FILE))).toBe(false)
      expect(state(s)).toEqual(state(await mk(`${name}-replay`, key)))
    }
  })

  it('ignores a snapshot that covers more than the log holds (the log lost its tail)', async () => {
    const key = await generateKeyPair('Ed25519')
    const { a } = await history(key)
    await close(a)
    const log = join(dir, 'a', CHANGE_LOG_FILE)
    await truncate(log, (await stat(log)).size - 3) // a torn last record: cut on open
    const l = recorder()
    const s = await mk('a', key, { log: l })
    expect(l.lines.some(x => x.level === 'warn' && /does not match the change log/.test(String(x.fields?.reason)))).toBe(true)
    await crashCopy('a', 'replay', [CHANGE_LOG_FILE])
    expect(state(s)).toEqual(state(await mk('replay', key)))
    expect(s.changeCount).toBe(state(a).changeCount - 1)
    // The store goes on and its next snapshot is right again.
    await publishHostRecord(s, record('again'))
    const heads = s.heads()
    await close(s)
    const l2 = recorder()
    const third = await mk('a', key, { log: l2 })
    expect(loaded(l2)).toMatchObject({ fromLog: 0 })
    expect(third.heads()).toEqual(heads)
  })

  it('a write killed midway (a temp file left behind) is harmless', async () => {
    const key = await generateKeyPair('Ed25519')
    const { a } = await history(key)
    await a.snapshot()
    await publishHostRecord(a, record('after'))
    const expected = state(a)
    await crashCopy('a', 'killed')
    // The next snapshot was being written when the process died: half a temp file.
    const next = encodeSnapshot({ log: { bytes: 1, records: 1, lastChecksum: 0 }, feeds: [{ author: a.self, doc: A.save(a.feeds.get(a.self)!.doc), signatures: [] }], evidence: [] })
    await writeFile(join(dir, 'killed', `${SNAPSHOT_FILE}.tmp`), next.subarray(0, next.length >> 1))
    const l = recorder()
    const s = await mk('killed', key, { log: l })
    expect(loaded(l)?.fromSnapshot).toBeGreaterThan(0)
    expect(loaded(l)?.fromLog).toBe(1)
    expect(state(s)).toEqual(expected)
    await close(s)
    expect(await exists(join(dir, 'killed', `${SNAPSHOT_FILE}.tmp`))).toBe(false)
    const l2 = recorder()
    const again = await mk('killed', key, { log: l2 })
    expect(loaded(l2)).toMatchObject({ fromLog: 0 })
    expect(state(again)).toEqual(expected)
  })

  it('encodes and decodes a snapshot losslessly, and refuses one with a bad checksum', () => {
    let doc = A.init<any>()
    doc = A.change(doc, d => { d.x = 1 })
    const snap = {
      log: { bytes: 100, records: 2, lastChecksum: 12345 },
      feeds: [{ author: 'p1', doc: A.save(doc), signatures: [new Uint8Array(64).fill(7)] }, { author: 'p2', doc: A.save(doc), signatures: [], cut: 0 }],
      evidence: [new Uint8Array([1, 2, 3])]
    }
    const bytes = encodeSnapshot(snap)
    const back = decodeSnapshot(bytes)
    const norm = (x: typeof snap) => JSON.stringify({ ...x, feeds: x.feeds.map(f => ({ ...f, doc: Buffer.from(f.doc).toString('hex'), signatures: f.signatures.map(g => Buffer.from(g).toString('hex')) })), evidence: x.evidence.map(e => Buffer.from(e).toString('hex')) })
    expect(norm(back as typeof snap)).toEqual(norm(snap))
    bytes[bytes.length - 1] ^= 1
    expect(() => decodeSnapshot(bytes)).toThrow(/checksum/)
  })
})
