/**
 * The Byzantine fuzzer against real daemons (fuzz.test.ts, last describe): one mesh of three
 * daemons and a user; per case a new attacking member on libp2p (test/helpers/attacker.ts) whose
 * changes go to random subsets of the daemons by hand-driven sync (and some by gossip), mixed with
 * honest traffic through the daemons' API. Then, once the daemons agree, checks: the same state
 * and the same answers everywhere, every API route answering, and — read back by an honest
 * observer member that syncs with them — nothing of the attacker's held that breaks its feed's
 * rules, its chain held as far as it reached the daemons, evidence only of what it really signed,
 * and the honest hosts' standing intact.
 *
 * Out-of-order deliveries of changes that break the rules are left to the in-process fuzzer and
 * blame.test.ts (they make honest daemons penalise each other: reported there); here each change
 * goes with its feed's prefix.
 */
import fc from 'fast-check'
import * as A from '@automerge/automerge'
import type { SignedChange } from '../../crdt/signed-changes.ts'
import { encodeSignedChange } from '../../crdt/signed-changes.ts'
import { scalars } from '../../crdt/schema.ts'
import { seenNow } from '../../crdt/membership.ts'
import type { HostView, StatusView } from '../../protocol/api.ts'
import type { RequestView, VmView } from '../../node/control/views.ts'
import type { TestDaemon } from './daemon.ts'
import { waitFor } from './wait.ts'
import { addressOf, badSignature, craft, event, joinAttacker, pushEvents, randomPeer, type NetAttacker } from './attacker.ts'
import { signedRequest, type User } from './users.ts'

export const D_HONEST = ['admit', 'vm', 'policy', 'expel'] as const
export const D_BYZ = ['record', 'malformed', 'pad', 'admit', 'expel', 'reject', 'tampered', 'fork', 'badSig', 'genesis', 'unknownPart', 'nonLinear', 'oversized', 'noDeps', 'garbage', 'gossip'] as const

export type DStep =
  | { k: 'honest', who: number, act: typeof D_HONEST[number], r: number }
  | { k: 'byz', act: typeof D_BYZ[number], to: number, r: number }

export function daemonCaseArbitrary (): fc.Arbitrary<DStep[]> {
  const honest = fc.record({ k: fc.constant('honest' as const), who: fc.nat(2), act: fc.constantFrom(...D_HONEST), r: fc.nat() })
  const byz = fc.record({ k: fc.constant('byz' as const), act: fc.constantFrom(...D_BYZ), to: fc.integer({ min: 1, max: 7 }), r: fc.nat() })
  return fc.array(fc.oneof({ weight: 1, arbitrary: honest }, { weight: 2, arbitrary: byz }), { minLength: 8, maxLength: 14 })
}

const hashOf = (c: SignedChange): string => A.decodeChange(c.change).hash

/** `fn` on a feed whose record may have been made null (or worse) by an earlier act. */
const withHost = (fn: (d: any) => void) => (d: any): void => {
  if (d.host === null || typeof d.host !== 'object' || Array.isArray(d.host)) d.host = {}
  fn(d)
}

export interface DaemonMesh {
  daemons: TestDaemon[]
  user: User
  meshId: string
  observer: NetAttacker
}

/** Runs one case; returns the violations found (empty: it passed) and what it did. */
export async function runDaemonCase (mesh: DaemonMesh, steps: DStep[], caseNo: number): Promise<{ problems: string[], log: string[] }> {
  const { daemons, user, meshId, observer } = mesh
  const log: string[] = []
  const problems: string[] = []
  const ids = await Promise.all(daemons.map(async d => (await d.id()).peerId))
  const m = await joinAttacker(daemons, `mallory-${caseNo}`)
  const valid = new Set<string>(m.feed.map(hashOf))
  const invalid = new Set<string>()
  const delivered = new Set<string>(m.feed.map(hashOf))
  const honestAdmits: string[] = []
  const vmRequests: string[] = []
  let expelledByFounder = false
  let cutExpected = false
  try {
    for (const s of steps) {
      let seed = s.r
      const pick = (n: number): number => { seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0; return seed % n }
      const targets = (mask: number): TestDaemon[] => daemons.filter((_, i) => (mask & (1 << i)) !== 0)
      if (s.k === 'honest') {
        const d = daemons[s.who]
        log.push(`${d.name} ${s.act}`)
        try {
          if (s.act === 'admit') {
            const peer = await randomPeer()
            await d.api.call('POST', '/v1/admit', { peerId: peer, name: `n${pick(1000)}` })
            if (s.who === 0) honestAdmits.push(peer)
          } else if (s.act === 'vm') {
            const r = await d.api.call<RequestView>('POST', '/v1/requests', await signedRequest(user, meshId, 'vm.create', { name: `c${caseNo}-${pick(100_000)}`, image: 'tiny', type: 'small' }))
            vmRequests.push(r.id)
          } else if (s.act === 'policy') {
            const cur = (await daemons[0].status()).mesh?.policy.admit
            await daemons[0].api.call('POST', '/v1/mesh/policy', { admit: cur === 'any-member' ? 'expellers' : 'any-member' })
          } else if (s.act === 'expel') {
            await daemons[0].api.call('POST', '/v1/expel', { peer: m.peerId, reason: 'fuzz' })
            expelledByFounder = true
          }
        } catch (err: any) {
          if (err?.status === undefined) throw err
          log.push(`  (refused: ${String(err.message)})`)
        }
        continue
      }
      log.push(`attacker ${s.act} → ${targets(s.to).map(d => d.name).join(',')}`)
      // It knows the mesh as the honest hosts do (read through the observer: never the evidence
      // against itself, which would stop its own copy from writing).
      await observer.sync(await addressOf(daemons[0])).catch(() => {})
      const theirs = new Map(m.store.frontier().map(e => [e.author, { seq: e.seq, hash16: e.hash16 }]))
      await m.store.receive(observer.store.changesFor(theirs).filter(c => A.decodeChange(c.change).actor !== m.actor))
      // Its feed and `extra` to the daemons in `to`; what a daemon took counts as delivered (an
      // expelled attacker's connection is refused).
      const send = async (extra: SignedChange[], to = s.to): Promise<void> => {
        for (const d of targets(to)) {
          const r = await m.push(await addressOf(d), [...m.feed, ...extra]).catch((err: Error) => ({ error: err.message }))
          if (r.error === undefined) for (const c of [...m.feed, ...extra]) delivered.add(hashOf(c))
        }
      }
      const append = async (fn: (d: any) => void): Promise<void> => {
        const c = await m.append(d => { if (d.host === null || typeof d.host !== 'object') d.host = {}; fn(d) })
        valid.add(hashOf(c))
        await send([])
      }
      const bad = async (c: SignedChange): Promise<void> => { invalid.add(hashOf(c)); await send([c]) }
      const vmId = (): string => vmRequests[pick(vmRequests.length)] ?? 'a'.repeat(64)
      switch (s.act) {
        case 'record': await append(d => { d.host.name = scalars(`m${pick(1000)}`); d.host.resources = scalars({ arch: ['x86_64'], vcpus: 64, memMiB: 65536, diskGiB: 1000, labels: {} }) }); break
        case 'malformed': {
          const kinds: Array<(d: any) => void> = [
            d => { d.host.rejections = { [vmId()]: null } },
            d => { d.host.resources = { arch: 5 } },
            d => { d.host.name = scalars('\u001b[31mx\n\u202e') },
            d => { d.host.vms = { [vmId()]: { status: 'bogus' } }; d.host.claims = { [vmId()]: 7 } },
            d => { d.host = null }
          ]
          await append(kinds[pick(kinds.length)])
          break
        }
        case 'pad': await append(d => { d.host.pad = {}; for (let i = 0; i < 2000; i++) d.host.pad[`k${i}`] = i }); break
        case 'admit': {
          const seen = seenNow(m.store)
          if (pick(2) === 0) delete seen[ids[0]]
          await append(pushEvents(event({ op: 'admit', peer: await randomPeer() }, seen)))
          break
        }
        case 'expel': await append(pushEvents(event({ op: 'expel', peer: ids[pick(3)] }, seenNow(m.store)))); break
        case 'reject': { const id = vmId(); await append(d => { d.host.rejections = scalars({ [id]: { at: new Date().toISOString(), reason: 'attacker' } }) }); break }
        case 'tampered': {
          const id = vmId()
          const copy = m.store.doc.requests.get(id)?.[0]
          if (copy === undefined || m.store.feeds.get(m.peerId)?.requestSeq.has(id) === true) break
          await append(d => { d.requests ??= {}; d.requests[id] = scalars({ payload: copy.payload, signature: 'broken', at: new Date().toISOString() }) })
          break
        }
        case 'fork': {
          // Fork A to some daemons, the main chain (fork B) to the others.
          const fork = m.forge(withHost(d => { d.host.name = scalars(`fork-${pick(1000)}`) }))
          valid.add(hashOf(fork))
          await send([fork], s.to)
          const main = await m.append(withHost(d => { d.host.name = scalars(`main-${pick(1000)}`) }))
          valid.add(hashOf(main))
          await send([], ((~s.to) & 7) === 0 ? 7 : (~s.to) & 7)
          cutExpected = true
          break
        }
        case 'badSig': await bad(badSignature(m.forge(withHost(d => { d.host.name = scalars('bad-sig') })))); break
        case 'genesis': await bad(m.forge(withHost(d => { d.mesh = scalars({ format: 2, id: '0'.repeat(32), nonce: '0'.repeat(32), name: 'mine', founder: m.peerId, created: new Date().toISOString() }) }))); break
        case 'unknownPart': await bad(m.forge(withHost(d => { d.hosts = { x: 1 } }))); break
        case 'nonLinear': await bad(m.forge(withHost(d => { d.host.name = scalars('nl') }), { extraDeps: observer.store.feeds.get(ids[0])?.changesAfter(0) ?? [] })); break
        case 'oversized': await bad(m.forge(withHost(d => { d.host.name = scalars('o'.repeat(270 * 1024)) }))); break
        case 'noDeps': await bad(craft(m.key, m.forge(withHost(d => { d.host.name = scalars('nd') })), d => { d.deps = [] })); break
        case 'garbage': await m.gossip(new Uint8Array(64).fill(pick(256))).catch(() => {}); break
        case 'gossip': {
          const c = await m.append(withHost(d => { d.host.version = scalars(`g${pick(1000)}`) }))
          valid.add(hashOf(c))
          await m.gossip(encodeSignedChange(c)).catch(() => {})
          await send([])
          break
        }
      }
    }
    // Honest hosts agree (forks make them exchange evidence; gossip may be in flight).
    const settled = await waitFor(async () => {
      const ss = await Promise.all(daemons.map(async d => await d.status()))
      const heads = new Set(ss.map(s => [...s.state.heads].sort().join()))
      const eq = new Set(ss.map(s => JSON.stringify(s.state.equivocations.map(e => e.peerId).sort())))
      return heads.size === 1 && eq.size === 1 && ss
    }, { timeoutMs: 30_000, intervalMs: 200, what: 'the daemons to agree' }).catch((err: Error) => { problems.push(err.message); return undefined })
    if (settled === undefined) return { problems, log }

    // (a) The same answers everywhere.
    const norm = (hs: HostView[]): string => JSON.stringify(hs.map(h => [h.peerId, h.name, h.admittedBy, h.problems]).sort())
    const vmsNorm = (vs: VmView[]): string => JSON.stringify(vs.map(v => [v.id, v.name, v.host, v.status]).sort())
    const hostLists = await Promise.all(daemons.map(async d => await d.hosts()))
    const vmLists = await Promise.all(daemons.map(async d => await d.api.call<VmView[]>('GET', '/v1/vms?all=1')))
    for (let i = 1; i < daemons.length; i++) {
      if (norm(hostLists[i]) !== norm(hostLists[0])) problems.push(`${daemons[i].name} lists other hosts than alpha`)
      if (vmsNorm(vmLists[i]) !== vmsNorm(vmLists[0])) problems.push(`${daemons[i].name} shows other VMs than alpha`)
    }
    // (b) Every route answers.
    for (const d of daemons) {
      for (const path of ['/v1/status', '/v1/hosts', '/v1/history', '/v1/vms', '/v1/vms?all=1', '/v1/images', '/v1/nets', '/v1/trust', ...vmRequests.map(id => `/v1/requests/${id}`)]) {
        const status = await d.api.call('GET', path).then(() => 200, (e: any) => Number(e.status ?? 500))
        if (status !== 200) problems.push(`${d.name} GET ${path}: ${status}`)
      }
    }
    // (c) Read back by an honest member.
    await observer.sync(await addressOf(daemons[0]))
    const o = observer.store
    const feed = o.feeds.get(m.peerId)
    for (const c of feed?.changesAfter(0) ?? []) {
      const h = hashOf(c)
      if (invalid.has(h)) problems.push(`the daemons hold a change of the attacker that breaks its feed's rules (${h.slice(0, 8)})`)
      else if (!valid.has(h)) problems.push(`the daemons hold a change of the attacker it never signed (${h.slice(0, 8)})`)
    }
    const chain = m.feed
    let reach = 0
    while (reach < chain.length && delivered.has(hashOf(chain[reach]))) reach++
    const want = Math.min(reach, feed?.cut ?? Infinity)
    if ((feed?.seq ?? 0) < want) problems.push(`the attacker's chain reached the daemons up to ${reach}, they hold ${feed?.seq ?? 0}`)
    for (const e of o.evidence()) if (ids.includes(e.author) || e.author === observer.peerId) problems.push(`evidence against honest ${e.author.slice(-6)}`)
    for (const e of o.evidence().filter(x => x.author === m.peerId)) {
      for (const c of e.changes) if (!valid.has(c.hash) && !invalid.has(c.hash)) problems.push('evidence against the attacker with a change it never signed')
    }
    const st: StatusView = settled[0]
    const members = o.doc.members
    for (const id of ids) if (members[id]?.expelled !== undefined) problems.push(`honest ${id.slice(-6)} is not an active member`)
    for (const p of honestAdmits) if (members[p] === undefined || members[p].expelled !== undefined) problems.push(`the founder's admission of ${p.slice(-6)} does not stand`)
    const out = members[m.peerId]?.expelled !== undefined
    const equivocated = st.state.equivocations.some(e => e.peerId === m.peerId)
    if ((expelledByFounder || equivocated) && !out) problems.push('the attacker was expelled or equivocated but is active')
    if (cutExpected && feed?.cut === undefined && problems.length === 0) log.push('  (fork not caught: both forks never met)')
    for (const id of vmRequests) if (!o.doc.requests.has(id)) problems.push(`request ${id.slice(0, 8)} stored by an honest daemon is missing`)
    for (const d of daemons) {
      const hosts = JSON.parse((await d.cli('--json', 'hosts')).stdout) as HostView[]
      for (const id of ids) if (!hosts.some(h => h.peerId === id)) problems.push(`${d.name} does not list honest ${id.slice(-6)}`)
      const human = await d.cli('hosts')
      // eslint-disable-next-line no-control-regex
      if (human.code !== 0 || /[\u0000-\u0008\u000b-\u001f\u202a-\u202e]/.test(human.stdout)) problems.push(`${d.name}: \`picocloud hosts\` failed or printed raw control characters`)
    }
  } finally {
    await m.stop()
  }
  return { problems, log }
}
