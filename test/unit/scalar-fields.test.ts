/**
 * Short fields are written as ImmutableString (one op) by this daemon and as text (one op per
 * character) by older ones; a mesh mixing both must read the same through the world and the views.
 */
import { describe, it, expect } from 'vitest'
import * as A from '@automerge/automerge'
import { asString, readHostVm, readMember, scalars, type MeshDoc, type VmStatus } from '../../crdt/schema.ts'
import { deriveWorld, type VerifiedRequest, type Validity } from '../../crdt/world.ts'
import { listVms, requestView, vmStatus } from '../../node/views.ts'

const KEY = 'A'.repeat(40)
const PEERS = ['12D3KooWHostA', '12D3KooWHostB', '12D3KooWHostC']
const AT = '2025-01-01T00:00:00.000Z'
const vmIds = ['a1'.repeat(32), 'b2'.repeat(32), 'c3'.repeat(32)]

/** The mesh document, every short field as text (`old`) or as a scalar, chosen per part. */
function build (scalar: (part: string) => boolean): A.Doc<MeshDoc> {
  const s = <T>(part: string, v: T): T => scalar(part) ? scalars(v) : v
  return A.change(A.init<MeshDoc>(), d => {
    d.mesh = { id: 'm'.repeat(32), name: 'mesh', founder: PEERS[0], created: AT, policy: { admit: 'any-member', expellers: [] } }
    d.members = {}
    d.hosts = {}
    d.requests = {}
    PEERS.forEach((p, i) => {
      d.members[p] = s(`member${i}`, { name: `host-${i}`, admittedBy: PEERS[0], admittedAt: AT })
      d.hosts[p] = {
        name: `host-${i}`,
        addresses: [],
        wgPublicKey: 'k',
        version: '0.1.0',
        updated: s(`updated${i}`, AT),
        resources: { arch: ['x86_64'], vcpus: 64, memMiB: 65536, diskGiB: 1000, labels: {} },
        policy: s(`policy${i}`, { version: 1, entries: [{ fingerprint: KEY }] })
      }
    })
    vmIds.forEach((id, i) => {
      d.requests![id] = s(`request${i}`, { payload: `p${i}`, signature: 'sig', via: PEERS[i], at: AT })
      const host = d.hosts[PEERS[i]]
      host.claims = { [id]: s(`claim${i}`, { at: AT }) }
      const status: VmStatus = i === 2 ? 'stopped' : 'running'
      host.vms = { [id]: s(`vm${i}`, i === 2 ? { status, since: AT, reason: 'stopped by the host operator: x', operatorStop: { at: AT, reason: 'x' } } : { status, since: AT }) }
    })
    // A final rejection, recorded by the receiving host, of a request nobody claimed.
    d.hosts[PEERS[1]].rejections = { ['d4'.repeat(32)]: s('rejection', { at: AT, reason: 'no host can take it', reasons: JSON.stringify([{ host: PEERS[1], reason: 'not-trusted', detail: 'no' }]) }) }
    d.requests!['d4'.repeat(32)] = s('request3', { payload: 'p3', signature: 'sig', via: PEERS[1], at: AT })
  })
}

const validity = (doc: A.Doc<MeshDoc>) => (id: string): Validity => {
  const i = [...vmIds, 'd4'.repeat(32)].indexOf(id)
  const stored = doc.requests![id]
  const request: VerifiedRequest = {
    id,
    kind: 'vm.create',
    issuer: KEY,
    created: Date.parse(AT) + i,
    expires: Date.parse(AT) + 3_600_000,
    body: { name: `vm${i}`, image: 'debian', type: 'small', diskGiB: 10, arch: 'x86_64', nics: [], labels: { n: String(i) }, sshKeys: [], restart: 'always' },
    via: asString(stored.via),
    at: asString(stored.at)
  }
  return { ok: true, request }
}

function read (doc: A.Doc<MeshDoc>): unknown {
  const world = deriveWorld(doc, validity(doc))
  return {
    vms: listVms(doc, world, { all: true }),
    status: [...world.vms.values()].map(vm => vmStatus(vm)),
    reports: [...world.vms.values()].map(vm => vm.report),
    requests: [...world.requests.values()].map(r => requestView(doc, r)),
    hosts: world.hosts,
    members: Object.values(doc.members).map(readMember)
  }
}

describe('short fields as text or as scalars', () => {
  const parts = ['member0', 'member1', 'member2', 'updated0', 'policy0', 'policy1', 'policy2', 'request0', 'request1', 'request2', 'request3', 'claim0', 'claim1', 'claim2', 'vm0', 'vm1', 'vm2', 'rejection']
  const old = build(() => false)
  const expected = read(old)

  it('the all-text document reads as plain strings', () => {
    const world = deriveWorld(old, validity(old))
    expect([...world.vms.values()].map(v => [v.host, v.report?.status])).toEqual([[PEERS[0], 'running'], [PEERS[1], 'running'], [PEERS[2], 'stopped'], [null, undefined]])
    expect(world.requests.get('d4'.repeat(32))?.status).toBe('rejected')
  })

  it('all scalars, and every half-and-half mix, read the same', () => {
    expect(read(build(() => true))).toEqual(expected)
    for (let i = 0; i < parts.length; i++) {
      const mixed = build(p => (parts.indexOf(p) + i) % 2 === 0)
      expect(read(mixed)).toEqual(expected)
      // Through a save and load too: what another host receives.
      expect(read(A.load<MeshDoc>(A.save(mixed)))).toEqual(expected)
    }
  })

  it('views hand out plain strings, never ImmutableString', () => {
    const doc = build(() => true)
    expect(doc.hosts[PEERS[2]].vms![vmIds[2]].status).toBeInstanceOf(A.ImmutableString)
    const report = readHostVm(doc.hosts[PEERS[2]].vms![vmIds[2]])
    expect(report).toEqual({ status: 'stopped', since: AT, reason: 'stopped by the host operator: x', operatorStop: { at: AT, reason: 'x' } })
    for (const v of listVms(doc, deriveWorld(doc, validity(doc)), { all: true })) {
      expect(typeof v.status).toBe('string')
      if (v.host !== null) expect(typeof v.hostName).toBe('string')
    }
  })

  it('scalars are far fewer ops than text', () => {
    const ops = (doc: A.Doc<MeshDoc>): number => A.getAllChanges(doc).reduce((n, c) => n + A.decodeChange(c).ops.length, 0)
    expect(ops(build(() => true)) * 3).toBeLessThan(ops(old))
  })
})
