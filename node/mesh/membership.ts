/**
 * Membership as the operator sees it: founding a mesh, admitting and expelling hosts, the mesh
 * policy, this host's record in the state (its addresses, WireGuard endpoints, resources), and
 * the list of hosts with their liveness. The rules themselves are crdt/membership.ts and the fold
 * of crdt/fold.ts; this is the daemon's side of them.
 */
import type { StateStore } from '../../crdt/store.ts'
import { lostHosts, epochOf, declarers } from '../../crdt/lease.ts'
import { foundMesh, admit, expel, publishHostRecord, setMeshPolicy } from '../../crdt/membership.ts'
import { isActiveMember, scalars, type HostResources } from '../../crdt/schema.ts'
import { parsePeerId } from '../../keys/peer-key.ts'
import { wireguardPublicKeyForPeer } from '../../keys/wireguard.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { HostView } from '../../protocol/api.ts'
import type { Logger } from '../log.ts'
import type { Mesh } from './mesh.ts'

export interface MembershipInit {
  store: StateStore
  mesh: Mesh
  log: Logger
  /** This host's name, WireGuard public key and version, as its record shows them. */
  name: string
  wgPublicKey: string
  version: string
  /** What else goes into this host's record: WireGuard port and endpoints, resources. */
  wireguard: () => { port: number, endpoints: string[] }
  resources: () => Promise<HostResources>
  emit: (type: string, data?: Record<string, unknown>) => void
}

export class Membership {
  private readonly init: MembershipInit
  private readonly store: StateStore

  constructor (init: MembershipInit) {
    this.init = init
    this.store = init.store
  }

  private get self (): string { return this.store.self }

  /** Founds a mesh of one (`picocloud init`). */
  async found (name: string): Promise<void> {
    const { mesh, log } = this.init
    await foundMesh(this.store, {
      name,
      host: { name: this.init.name, addresses: mesh.addresses(), wgPublicKey: this.init.wgPublicKey, version: this.init.version, updated: new Date().toISOString() }
    })
    log.info('founded mesh', { mesh: this.store.meshId, name })
    this.init.emit('mesh.founded', { mesh: this.store.meshId, name })
  }

  async admit (peerKey: string, name?: string): Promise<{ peerId: string, changed: boolean }> {
    const peer = parsePeerId(peerKey).toString()
    if (peer === this.self) throw new PicocloudError(ErrorCode.BadPeerKey, 'that is this host\'s own peer key; run `picocloud id` on the newcomer and admit the key it prints')
    const r = await admit(this.store, peer, name)
    if (r.changed) {
      this.init.log.info('admitted host', { peer, name })
      this.init.emit('member.admitted', { peerId: peer, name })
    }
    return { peerId: peer, ...r }
  }

  async expel (peerKey: string, reason = ''): Promise<{ peerId: string, changed: boolean }> {
    const peer = this.resolvePeer(peerKey)
    const r = await expel(this.store, peer, reason)
    if (r.changed) {
      this.init.log.info('expelled host', { peer, reason })
      this.init.emit('member.expelled', { peerId: peer, reason })
    }
    return { peerId: peer, ...r }
  }

  /** The founder sets who may admit and who may expel (replicated mesh policy). */
  async setPolicy (input: { admit?: 'any-member' | 'expellers', expellers?: string[] }): Promise<void> {
    const expellers = input.expellers?.map(e => this.resolvePeer(e))
    await setMeshPolicy(this.store, { admit: input.admit, expellers })
    this.init.log.info('mesh policy changed', { admit: input.admit, expellers: expellers?.join(',') })
  }

  /** A peer id, or the unique name of a member. */
  resolvePeer (text: string): string {
    const doc = this.store.doc
    const byName = Object.entries(doc.members ?? {}).filter(([p, m]) => m.name === text || doc.hosts?.[p]?.name === text)
    if (byName.length === 1) return byName[0][0]
    if (byName.length > 1) throw new PicocloudError(ErrorCode.BadPeerKey, `${byName.length} hosts are named ${JSON.stringify(text)}; use the peer id`)
    return parsePeerId(text).toString()
  }

  /** Writes this host's record (addresses, WireGuard port and endpoints, resources) when it changed. */
  async publishRecord (): Promise<void> {
    if (!this.store.inMesh || !isActiveMember(this.store.doc, this.self)) return
    try {
      await publishHostRecord(this.store, { name: this.init.name, addresses: this.init.mesh.addresses(), wgPublicKey: this.init.wgPublicKey, version: this.init.version })
      const wg = this.init.wireguard()
      const rec = this.store.doc.hosts[this.self]
      if (rec?.wgPort !== wg.port || JSON.stringify(rec?.wgEndpoints ?? null) !== JSON.stringify(wg.endpoints)) {
        await this.store.change('publish WireGuard endpoints', d => {
          if (d.host === undefined) return
          d.host.wgPort = wg.port
          d.host.wgEndpoints = scalars(wg.endpoints)
        })
      }
      const res = await this.init.resources()
      if (JSON.stringify(this.store.doc.hosts[this.self]?.resources) !== JSON.stringify(res)) {
        await this.store.change('publish resources', d => { if (d.host !== undefined) d.host.resources = scalars(res) })
      }
    } catch (err: any) {
      this.init.log.warn('could not publish host record', { error: err.message })
    }
  }

  /** The active members, with liveness and what is wrong in their feeds. */
  hosts (): HostView[] {
    const doc = this.store.doc
    const { mesh } = this.init
    const connected = mesh.connectedPeers()
    const problems = this.store.state().problems
    const lost = lostHosts(doc)
    return Object.entries(doc.members ?? {}).filter(([, m]) => m.expelled === undefined).map(([peerId, m]) => {
      const rec = doc.hosts?.[peerId]
      const self = peerId === this.self
      const seen = mesh.lastSeen(peerId)
      return {
        peerId,
        name: rec?.name ?? m.name,
        addresses: rec === undefined ? [] : [...rec.addresses],
        lastSeen: seen === undefined ? null : new Date(seen).toISOString(),
        reachable: self || connected.has(peerId) || mesh.liveness.alive(peerId),
        self,
        connected: connected.has(peerId),
        admittedBy: m.admittedBy,
        admittedAt: m.admittedAt,
        wgPublicKey: wireguardPublicKeyForPeer(peerId),
        version: rec?.version ?? null,
        hypervisor: rec?.resources?.hypervisor ?? null,
        networks: typeof rec?.resources?.networks === 'boolean' ? rec.resources.networks : null,
        problems: problems.get(peerId)?.slice(0, 50) ?? [],
        epoch: epochOf(rec),
        lost: lost.get(peerId) ?? null,
        declaredBy: declarers(doc, peerId),
        drained: rec?.drained === undefined ? null : { ...rec.drained }
      }
    }).sort((a, b) => a.name.localeCompare(b.name) || a.peerId.localeCompare(b.peerId))
  }

  history (): ReturnType<StateStore['history']> {
    return this.store.history()
  }
}
