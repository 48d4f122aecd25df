/**
 * Issue 12, "Robustness": one flipped byte in the middle of a real daemon's changes.log dropped
 * every later record and the snapshot (20 admissions → 0). Now: after a restart the daemon has
 * every other change (those after the gap in the same feed held until the lost one is back), and
 * fetches the lost one from a peer; when the lost change was its own, it writes nothing until it
 * has it back, so it never signs two changes with one sequence number. The log format itself:
 * test/unit/change-log.test.ts.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { readFile, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import * as A from '@automerge/automerge'
import { TestMesh, type TestDaemon } from '../helpers/daemon.ts'
import { waitFor } from '../helpers/wait.ts'
import { randomPeer } from '../helpers/attacker.ts'
import { CHANGE_LOG_FILE } from '../../crdt/store.ts'
import { FILE_HEADER } from '../../crdt/change-log.ts'
import { decodeSignedChange } from '../../crdt/signed-changes.ts'
import { actorForPeer } from '../../keys/peer-key.ts'
import { peerIdFromString } from '@libp2p/peer-id'

const CONFIG = 'hypervisor = "none"\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n'

async function freePort (): Promise<number> {
  const srv = createServer()
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  const port = (srv.address() as AddressInfo).port
  await new Promise(resolve => srv.close(resolve))
  return port
}

/** The records of a change log: where each payload starts and ends, and whose change it holds. */
interface LogRecord { start: number, end: number, actor?: string, seq?: number, hash?: string }

async function records (path: string): Promise<LogRecord[]> {
  const data = await readFile(path)
  const out: LogRecord[] = []
  let off = FILE_HEADER
  while (off + 16 <= data.length) {
    const n = data.readUInt32BE(off + 4)
    const start = off + 16
    const payload = data.subarray(start, start + n)
    const r: LogRecord = { start, end: start + n }
    if (payload[0] === 1) {
      const d = A.decodeChange(decodeSignedChange(payload.subarray(1)).change)
      Object.assign(r, { actor: d.actor, seq: d.seq, hash: d.hash })
    }
    out.push(r)
    off = start + n
  }
  return out
}

/** Flips one byte in the middle of the payload of change `seq` of `peer` in `d`'s log. */
async function flipByteOf (d: TestDaemon, peer: string, seq: number): Promise<void> {
  const path = join(d.state, CHANGE_LOG_FILE)
  const actor = actorForPeer(peerIdFromString(peer))
  const r = (await records(path)).find(x => x.actor === actor && x.seq === seq)
  if (r === undefined) throw new Error(`no change ${seq} of ${peer} in the log of ${d.name}`)
  const data = await readFile(path)
  const at = Math.floor((r.start + r.end) / 2)
  data[at] ^= 0x5a
  await writeFile(path, data)
}

describe('adversarial: a corrupt record in the middle of a real daemon\'s change log', () => {
  let mesh: TestMesh
  let alpha: TestDaemon, bravo: TestDaemon, charlie: TestDaemon
  let ids: Record<string, string>

  beforeAll(async () => {
    mesh = await TestMesh.create()
    // Fixed ports: daemons restarted while others are down must find each other where they were.
    const ds: TestDaemon[] = []
    for (const name of ['alpha', 'bravo', 'charlie']) ds.push(await mesh.daemon(name, CONFIG, {}, { listen: `/ip4/127.0.0.1/tcp/${await freePort()}` }))
    ;[alpha, bravo, charlie] = ds
    expect((await alpha.cli('init', '--name', 'adv')).code).toBe(0)
    for (const d of [bravo, charlie]) {
      expect((await alpha.cli('admit', (await d.id()).peerId, '--name', d.name)).code).toBe(0)
      const j = await d.cli('join', (await alpha.id()).addresses[0])
      expect(j.code, j.stderr).toBe(0)
    }
    ids = Object.fromEntries(await Promise.all([alpha, bravo, charlie].map(async d => [d.name, (await d.id()).peerId])))
  })
  afterAll(async () => { await mesh.stopAll() })

  const sameHeads = async (a: TestDaemon, b: TestDaemon): Promise<boolean> =>
    [...(await a.status()).state.heads].sort().join() === [...(await b.status()).state.heads].sort().join()

  it('a flipped byte in one of another host\'s changes: after a restart alone the daemon has every other change, then fetches the lost one from a peer', async () => {
    const newcomers = await Promise.all(Array.from({ length: 20 }, async () => await randomPeer()))
    for (const n of newcomers) expect((await alpha.cli('admit', n)).code).toBe(0)
    await waitFor(async () => await sameHeads(alpha, bravo) && await sameHeads(charlie, bravo), { timeoutMs: 20_000, what: 'the three to hold the 20 admissions' })
    // A clean stop writes a snapshot covering the whole log; then alpha and charlie go away.
    await bravo.kill('SIGTERM')
    await alpha.kill('SIGKILL')
    await charlie.kill('SIGKILL')
    const log = await records(join(bravo.state, CHANGE_LOG_FILE))
    const [alphaActor, charlieActor] = [ids.alpha, ids.charlie].map(p => actorForPeer(peerIdFromString(p)))
    const hashOf = (actor: string, seq: number): string | undefined => log.find(r => r.actor === actor && r.seq === seq)?.hash
    const alphaSeq = Math.max(...log.filter(r => r.actor === alphaActor).map(r => r.seq ?? 0))
    const charlieSeq = Math.max(...log.filter(r => r.actor === charlieActor).map(r => r.seq ?? 0))
    const lost = Math.floor(alphaSeq / 2)
    await flipByteOf(bravo, ids.alpha, lost)

    await bravo.start()
    const alone = (await bravo.status()).state
    // Every change but the lost one: alpha's feed up to it, alpha's later changes held until it is
    // back, charlie's whole feed (bravo's own, too: it writes again after 10 s with no peer).
    expect(alone.heads, 'alpha\'s feed up to the lost change').toContain(hashOf(alphaActor, lost - 1))
    expect(alone.heads, 'charlie\'s whole feed').toContain(hashOf(charlieActor, charlieSeq))
    expect(alone.pending, 'alpha\'s changes after the lost one wait for it').toBeGreaterThanOrEqual(alphaSeq - lost)
    expect((await bravo.hosts()).map(h => h.name)).toEqual(expect.arrayContaining(['alpha', 'bravo', 'charlie']))

    await alpha.start()
    await charlie.start()
    // (Not "alpha's last change is a head": back in the mesh, alpha writes again — lease declarations, a new epoch.)
    const has = async (hash: string | undefined): Promise<boolean> => (await bravo.api.call<Array<{ hash: string }>>('GET', '/v1/history')).some(e => e.hash === hash)
    await waitFor(async () => (await bravo.status()).state.pending === 0 && await has(hashOf(alphaActor, lost)) && await has(hashOf(alphaActor, alphaSeq)) && await sameHeads(alpha, bravo),
      { timeoutMs: 30_000, what: 'bravo to fetch the lost change back' })
    for (const n of newcomers) expect((await bravo.hosts()).map(h => h.peerId)).toContain(n)
  })

  it('a flipped byte in one of its own changes: it writes nothing until a peer sent it back, and never equivocates', async () => {
    for (const d of [alpha, bravo, charlie]) if (!d.running) await d.start()
    for (let i = 0; i < 6; i++) expect((await bravo.cli('admit', await randomPeer())).code).toBe(0)
    await waitFor(async () => await sameHeads(alpha, bravo), { timeoutMs: 20_000, what: 'alpha to hold bravo\'s admissions' })
    const own = (await records(join(bravo.state, CHANGE_LOG_FILE))).filter(r => r.actor === actorForPeer(peerIdFromString(ids.bravo)))
    await bravo.kill('SIGKILL')
    await flipByteOf(bravo, ids.bravo, own[Math.floor(own.length / 2)].seq as number)
    await bravo.start()
    // It writes again (an admission succeeds) once it has its own feed back from a peer.
    const newcomer = await randomPeer()
    const r = await bravo.cli('admit', newcomer)
    expect(r.code, r.stderr).toBe(0)
    for (const d of [alpha, bravo, charlie]) {
      await waitFor(async () => (await d.hosts()).some(h => h.peerId === newcomer), { timeoutMs: 20_000, what: `${d.name} to see bravo's new admission` })
      const s = await d.status()
      expect(s.state.equivocations, d.name).toEqual([])
      expect(s.penalties.map(p => `${p.peerId}: ${p.offences.map(o => o.reason).join('; ')}`), d.name).toEqual([])
    }
    expect((await bravo.status()).expelled).toBeNull()
  })
})
