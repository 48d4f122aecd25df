/**
 * Gossip of the mesh: this host's changes published as they are made, every peer's changes
 * checked in the topic validator (size, encoding, the store's verdict, the author's rate), and
 * image fetch progress reports signed by the host that fetches.
 *
 * A validator answers "reject" (gossipsub then scores the peer down, and so do we) only for what
 * the sending peer could have seen was wrong; a change that is merely early, a duplicate, or over
 * its author's rate is "ignore", and the author is charged, never the relayer.
 */
import { TopicValidatorResult, type PeerId, type PrivateKey, type Message } from '@libp2p/interface'
import type { Logger } from '../log.ts'
import type { P2PNode } from './p2p.ts'
import { AuthorRateLimit } from './rate-limit.ts'
import type { StateStore } from '../../crdt/store.ts'
import { encodeSignedChange, decodeSignedChange, type SignedChange } from '../../crdt/signed-changes.ts'
import { MAX_CHANGE_BYTES } from '../../crdt/feed.ts'
import { isActiveMember } from '../../crdt/schema.ts'
import { openProgress, readProgress, sealProgress, type ImageProgress } from '../../protocol/progress.ts'

/** Image fetch progress another host reported for a VM. */
export interface RemoteProgress extends ImageProgress { host: string, at: number }

export interface GossipInit {
  store: StateStore
  key: PrivateKey
  peerId: string
  log: Logger
  /** Records an offence of a peer (the mesh's penalties). */
  penalise: (peer: string, reason: string) => void
  /** Syncs with a peer that sent a change we cannot apply yet. */
  sync: (peer: PeerId) => void
}

export class Gossip {
  /** Bytes per author per second, for gossip and for what a peer sends of its own feed in a sync. */
  readonly rate = new AuthorRateLimit()
  private readonly init: GossipInit
  private readonly lastThrottle = new Map<string, number>()
  private readonly remoteProgress = new Map<string, RemoteProgress>()
  private p2p?: P2PNode

  constructor (init: GossipInit) {
    this.init = init
  }

  // Version 2: messages without gossipsub signatures (p2p.ts), progress reports signed by their
  // host. A host of version 1 shares no topic with this one, so neither penalises the other's
  // messages as invalid.
  private changesTopic (): string { return `/picocloud/${this.init.store.meshId}/changes/2` }
  private progressTopic (): string { return `/picocloud/${this.init.store.meshId}/progress/2` }

  /** Subscribes to the mesh's topics (once in a mesh). */
  start (p2p: P2PNode): void {
    if (this.p2p !== undefined) return
    this.p2p = p2p
    const pubsub = p2p.services.pubsub
    const changes = this.changesTopic()
    const progress = this.progressTopic()
    pubsub.topicValidators.set(changes, async (from, msg) => await this.validateChange(from, msg))
    pubsub.topicValidators.set(progress, async (_from, msg) => {
      const r = await openProgress(msg.data)
      if (r === undefined) return TopicValidatorResult.Reject
      // From a host expelled a moment ago, forwarded in good faith: dropped, nobody penalised.
      return isActiveMember(this.init.store.doc, r.host) ? TopicValidatorResult.Accept : TopicValidatorResult.Ignore
    })
    pubsub.addEventListener('message', evt => {
      if (evt.detail.topic !== progress) return
      // Accepted by the topic validator: well formed, signed by `host`, a member.
      const r = readProgress(evt.detail.data)
      if (r !== undefined) this.remoteProgress.set(r.progress.vm, { ...r.progress, host: r.host, at: Date.now() })
    })
    pubsub.subscribe(changes)
    pubsub.subscribe(progress)
  }

  private async validateChange (from: PeerId, msg: Message): Promise<TopicValidatorResult> {
    const { store, penalise } = this.init
    if (msg.data.length > MAX_CHANGE_BYTES + 4 + 64) {
      penalise(from.toString(), `a change of ${msg.data.length} bytes (at most ${MAX_CHANGE_BYTES}) on gossip`)
      return TopicValidatorResult.Reject
    }
    let signed: SignedChange
    try {
      signed = decodeSignedChange(msg.data)
    } catch (err: any) {
      penalise(from.toString(), `undecodable change on gossip: ${err.message}`)
      return TopicValidatorResult.Reject
    }
    const r = await store.receive([signed], from.toString(), (author, bytes) => this.rate.take(author, bytes))
    for (const author of r.throttled ?? []) this.throttled(author)
    if (r.rejected.some(x => x.blame === 'sender')) return TopicValidatorResult.Reject
    if (r.applied.length > 0) return TopicValidatorResult.Accept
    if (r.pending > 0 && r.duplicates === 0) this.init.sync(from)
    return TopicValidatorResult.Ignore
  }

  /** An author over its rate: an offence of the author's (at most one a minute), not the relayer's. */
  throttled (author: string): void {
    const last = this.lastThrottle.get(author) ?? 0
    if (Date.now() - last < 60_000) return
    this.lastThrottle.set(author, Date.now())
    if (author !== this.init.peerId) this.init.penalise(author, 'writes faster than the per-author gossip limit (64 KiB/s, 4 MiB burst)')
  }

  /** Publishes a change this host made. */
  async publishChange (c: SignedChange): Promise<void> {
    if (this.p2p === undefined) return
    try {
      await this.p2p.services.pubsub.publish(this.changesTopic(), encodeSignedChange(c))
    } catch (err: any) {
      this.init.log.debug('could not publish change', { error: err.message })
    }
  }

  /** Tells the mesh how an image fetch for a VM on this host goes (signed with the host's key). */
  async publishProgress (p: ImageProgress): Promise<void> {
    if (this.p2p === undefined) return
    const data = await sealProgress(this.init.key, this.init.peerId, p)
    await this.p2p.services.pubsub.publish(this.progressTopic(), data).catch(() => {})
  }

  /** The last fetch progress another host reported for a VM. */
  progressReported (vm: string): RemoteProgress | undefined {
    return this.remoteProgress.get(vm)
  }
}
