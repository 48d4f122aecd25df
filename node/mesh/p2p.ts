/**
 * The libp2p node of a host: TCP, noise, yamux, identify, ping and gossipsub with strict message
 * signing. Peer discovery is the replicated membership itself (see node/reconnect.ts).
 */
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, type Identify } from '@libp2p/identify'
import { ping, type Ping } from '@libp2p/ping'
import { gossipsub, type GossipsubEvents } from '@chainsafe/libp2p-gossipsub'
import type { PrivateKey, PubSub, ConnectionGater } from '@libp2p/interface'
import { MAX_FRAME } from '../../crdt/sync.ts'

export type P2PServices = {
  identify: Identify
  ping: Ping
  pubsub: PubSub<GossipsubEvents>
}

export type P2PNode = Libp2p<P2PServices>

export interface P2PInit {
  privateKey: PrivateKey
  listen: string[]
  announce: string[]
  gater: ConnectionGater
  version: string
}

export async function createP2PNode (init: P2PInit): Promise<P2PNode> {
  return await createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen: init.listen, announce: init.announce },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    // No yamux keep-alive pings: the beats of node/mesh/liveness.ts already cross every connection
    // (the pings alone were about 8 kbit/s per host in an idle 30-host mesh).
    streamMuxers: [yamux({ enableKeepAlive: false })],
    connectionGater: init.gater,
    // Dead connections are found by the beats of node/mesh/liveness.ts, which cost no stream per ping.
    connectionMonitor: { enabled: false },
    nodeInfo: { name: 'picocloud', version: init.version },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        // No gossipsub signature: every change is signed by its author and checked by the store,
        // and progress reports carry their host's signature (protocol/progress.ts). gossipsub
        // checked its own signature on every copy of a message, duplicates included: about a
        // tenth of a host's CPU per change in a 30-host mesh. Message ids are then the hash of
        // the content, and every host of a mesh must run the same policy.
        globalSignaturePolicy: 'StrictNoSign',
        // Above the largest change a store accepts (crdt/feed.ts MAX_CHANGE_BYTES, the same for
        // gossip and sync), so that a bigger one reaches the topic validator, is refused and its
        // sender penalised there, as in a sync; an RPC over this is dropped by gossipsub itself.
        maxInboundDataLength: 4 * MAX_FRAME,
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        fallbackToFloodsub: false,
        // Community meshes are small: flood our own messages to every peer for the lowest latency.
        floodPublish: true,
        // A small mesh degree: every host dials every member and floods its own messages to all
        // of them, so forwards are mostly duplicates; they only matter where two hosts cannot
        // reach each other. Three keeps the mesh graph connected (a random 3-regular graph almost
        // surely is). Each duplicate costs every host a decryption and a decoding: going from 4
        // to 3 cut the 30-host p99 from about 200 ms to 120–180 ms here. Dout and Dscore follow
        // D (both must stay below it); every peer is an admitted member.
        D: 3,
        Dlo: 2,
        Dhi: 4,
        Dout: 1,
        Dscore: 2,
        Dlazy: 4,
        doPX: false,
        // No penalty for many peers behind one IP address: every peer is an admitted member
        // already (the gater), and hosts of a community network often share a NAT address. With
        // the default (-5 × surplus² above 10 peers per IP) an 11th host on one address pushed
        // every peer below the graylist threshold: their gossip was ignored and ours not sent.
        scoreParams: { IPColocationFactorWeight: 0 }
      })
    }
  })
}
