/**
 * Gossip among more hosts than gossipsub trusts by default behind one IP address (10; beyond, a
 * penalty growing with the square of the surplus graylists them all): every host of a site behind
 * one NAT address, or every test daemon on 127.0.0.1, must still get each change.
 */
import { describe, it, expect, afterAll } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createP2PNode, type P2PNode } from '../../node/mesh/p2p.ts'
import { waitFor } from '../helpers/wait.ts'

const HOSTS = 20
const TOPIC = '/picocloud/test/changes/1'

describe('gossip among many hosts on one address', () => {
  const nodes: P2PNode[] = []
  afterAll(async () => { await Promise.all(nodes.map(async n => await n.stop())) })

  it(`a message published by one of ${HOSTS} hosts on 127.0.0.1 reaches all the others`, async () => {
    for (let i = 0; i < HOSTS; i++) {
      const n = await createP2PNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], announce: [], gater: {}, version: 'test' })
      await n.start()
      n.services.pubsub.subscribe(TOPIC)
      nodes.push(n)
    }
    // libp2p accepts at most 5 inbound connections per second from one address: dial patiently.
    for (let i = 0; i < HOSTS; i++) {
      for (let j = i + 1; j < HOSTS; j++) {
        await waitFor(async () => { await nodes[i].dial(nodes[j].getMultiaddrs()[0]); return true }, { timeoutMs: 20_000, intervalMs: 250, what: `host ${i} to connect to host ${j}` })
      }
    }
    await waitFor(() => nodes.every(n => n.services.pubsub.getSubscribers(TOPIC).length === HOSTS - 1),
      { timeoutMs: 30_000, what: 'every host to see the others subscribed' })

    const got = new Set<number>()
    nodes.forEach((n, i) => n.services.pubsub.addEventListener('message', e => { if (e.detail.topic === TOPIC) got.add(i) }))
    const r = await nodes[0].services.pubsub.publish(TOPIC, new TextEncoder().encode('hello'))
    expect(r.recipients).toHaveLength(HOSTS - 1)
    await waitFor(() => got.size === HOSTS - 1, { timeoutMs: 10_000, what: 'every other host to receive the message' })
    expect(got.has(0)).toBe(false)
  })
})
