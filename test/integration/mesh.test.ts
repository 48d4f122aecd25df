/**
 * Three real daemons on 127.0.0.1: joining by exchanging peer keys, refusing strangers, rejecting
 * forged changes, surviving kill -9, and expulsion.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { loadOrCreatePeerKey } from '../../keys/peer-key.ts'
import { StateStore } from '../../crdt/store.ts'
import { SYNC_PROTOCOL, syncInitiator } from '../../crdt/sync.ts'
import { createP2PNode, type P2PNode } from '../../node/mesh/p2p.ts'

const randomPeer = async (): Promise<string> => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()

/** A libp2p node that lets everything through its own gater: the stranger or the rogue. */
async function rogueNode (key: Awaited<ReturnType<typeof generateKeyPair>>): Promise<P2PNode> {
  const n = await createP2PNode({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], announce: [], gater: {}, version: 'rogue' })
  await n.start()
  return n
}

describe('a mesh of three daemons', () => {
  let mesh: TestMesh
  let a: TestDaemon, b: TestDaemon, c: TestDaemon
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    mesh = await TestMesh.create()
    ;[a, b, c] = await mesh.form(['alpha', 'bravo', 'charlie'])
  })
  afterAll(async () => {
    for (const f of cleanups) await f().catch(() => {})
    await mesh.stopAll()
  })

  it('lists all three hosts on every host once they have joined', async () => {
    const ids = await Promise.all([a, b, c].map(async d => (await d.id()).peerId))
    for (const d of [a, b, c]) {
      await waitFor(async () => {
        const r = await d.cli('--json', 'hosts')
        const hosts = JSON.parse(r.stdout) as Array<{ peerId: string, name: string, reachable: boolean, addresses: string[], lastSeen: string | null }>
        return hosts.length === 3 && hosts.every(h => h.reachable && h.addresses.length > 0 && h.lastSeen !== null) && hosts
      }, { timeoutMs: 20_000, what: `${d.name} to see three reachable hosts` })
      const table = await d.cli('hosts')
      expect(table.code).toBe(0)
      for (const [i, name] of ['alpha', 'bravo', 'charlie'].entries()) {
        expect(table.stdout).toContain(name)
        expect(table.stdout).toContain(ids[i])
      }
    }
  })

  it('refuses a peer that was not admitted: its dial fails and it receives no state', async () => {
    const stranger = await mesh.daemon('stranger')
    const addr = (await a.id()).addresses[0]
    const r = await stranger.cli('join', addr)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/could not join/)
    expect(r.stderr).toContain('picocloud admit')
    const s = await stranger.status()
    expect(s.mesh).toBeNull()
    expect(s.state.changes).toBe(0)
    expect((await a.status()).peers.map(p => p.peerId)).not.toContain(s.peerId)

    // A raw libp2p dial by a stranger key does not get past the connection gater either.
    const node = await rogueNode(await generateKeyPair('Ed25519'))
    cleanups.push(async () => await node.stop())
    await expect(node.dialProtocol(multiaddr(addr), SYNC_PROTOCOL, { signal: AbortSignal.timeout(5000) })).rejects.toThrow()
    await stranger.kill()
  })

  it('rejects a change validly signed by B that breaks its own feed\'s rules (rewrites the mesh genesis), on A and C, and penalises B', async () => {
    const [aId, bId] = [(await a.id()).peerId, (await b.id()).peerId]
    await waitFor(async () => (await a.status()).state.heads.join() === (await c.status()).state.heads.join(), { what: 'A and C to converge' })
    const headsA = (await a.status()).state.heads
    const headsC = (await c.status()).state.heads
    // B turns rogue: its key and a copy of its state, a change that writes a mesh genesis (only a
    // feed's first change may, and only the founder's counts): every host refuses it alike.
    await b.kill()
    const rogueDir = await mkdtemp(join(tmpdir(), 'pc-rogue-'))
    cleanups.push(async () => await rm(rogueDir, { recursive: true, force: true }))
    await cp(b.state, rogueDir, { recursive: true })
    const key = await loadOrCreatePeerKey(rogueDir)
    const store = await StateStore.open({ dir: rogueDir, key })
    cleanups.push(async () => await store.close())
    await store.change('forged', d => { d.mesh = { format: 2, id: '0'.repeat(32), nonce: '0'.repeat(32), name: 'owned-by-bravo', founder: bId, created: new Date().toISOString() } })
    const node = await rogueNode(key)
    cleanups.push(async () => await node.stop())
    for (const target of [a, c]) {
      const stream = await node.dialProtocol(multiaddr((await target.id()).addresses[0]), SYNC_PROTOCOL)
      await syncInitiator(stream, store, 'target')
    }
    for (const [d, heads] of [[a, headsA], [c, headsC]] as const) {
      const s = await waitFor(async () => { const s = await d.status(); return s.penalties.length > 0 && s }, { what: `${d.name} to penalise B` })
      expect(s.penalties[0].peerId).toBe(bId)
      expect(s.penalties[0].offences[0].reason).toMatch(/genesis can be written only in a feed's first change/)
      expect(s.state.heads).toEqual(heads)
      expect((await d.hosts()).find(h => h.peerId === aId)?.name).toBe('alpha')
    }
    await node.stop()
    await b.start()
  })

  it('after kill -9, a daemon restarts with the same peer id and its state, and catches up', async () => {
    const before = await c.status()
    await c.kill('SIGKILL')
    const newcomer = await randomPeer()
    const admitted = await a.cli('admit', newcomer, '--name', 'while-c-was-down')
    expect(admitted.code).toBe(0)
    await c.start()
    const after = await c.status()
    expect(after.peerId).toBe(before.peerId)
    expect(after.mesh?.id).toBe(before.mesh?.id)
    expect(after.state.changes).toBeGreaterThanOrEqual(before.state.changes)
    await waitFor(async () => (await c.hosts()).some(h => h.peerId === newcomer), { timeoutMs: 20_000, what: 'C to catch up on the admission made while it was down' })
  })

  it('expel C: A and B drop it, and C can neither reconnect nor sync', async () => {
    const cId = (await c.id()).peerId
    const cAddr = (await c.id()).addresses[0]
    await waitFor(async () => (await b.status()).peers.some(p => p.peerId === cId), { timeoutMs: 20_000, what: 'B to be connected to C' })
    const r = await a.cli('expel', 'charlie', '--reason', 'test')
    expect(r.code).toBe(0)
    for (const d of [a, b]) {
      await waitFor(async () => {
        const s = await d.status()
        return !s.peers.some(p => p.peerId === cId) && !(await d.hosts()).some(h => h.peerId === cId)
      }, { timeoutMs: 20_000, what: `${d.name} to drop C` })
    }
    // C, with its own key, is refused by A and B: no connection, no sync.
    await c.kill()
    const key = await loadOrCreatePeerKey(c.state)
    const node = await rogueNode(key)
    cleanups.push(async () => await node.stop())
    for (const d of [a, b]) {
      await expect(node.dialProtocol(multiaddr((await d.id()).addresses[0]), SYNC_PROTOCOL, { signal: AbortSignal.timeout(5000) })).rejects.toThrow()
    }
    // And A does not dial it back.
    expect((await a.status()).peers.map(p => p.address)).not.toContain(cAddr)
  })
})
