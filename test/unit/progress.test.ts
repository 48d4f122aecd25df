/**
 * Image progress reports on gossip carry their host's signature (gossip messages have none of
 * their own): only the host itself can report its progress.
 */
import { describe, it, expect } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { sealProgress, openProgress, readProgress, MAX_PROGRESS_BYTES, type ImageProgress } from '../../protocol/progress.ts'

const report: ImageProgress = { vm: 'vm-1', sha256: 'a'.repeat(64), received: 1024, total: 4096, peer: '12D3KooWpeer' }
const enc = new TextEncoder()
const dec = new TextDecoder()

describe('image progress reports', () => {
  it('open to the report and its host when signed by that host', async () => {
    const key = await generateKeyPair('Ed25519')
    const host = peerIdFromPrivateKey(key).toString()
    expect(await openProgress(await sealProgress(key, host, report))).toEqual({ host, progress: report })
    // What the message listener reads once the validator has accepted the message.
    expect(readProgress(await sealProgress(key, host, report))).toMatchObject({ host, progress: report })
    expect(readProgress(enc.encode('{"body": 1}'))).toBeUndefined()
  })

  it('refuse a report in another host\'s name, an altered one, and malformed or oversized ones', async () => {
    const key = await generateKeyPair('Ed25519')
    const other = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    // Signed with our key, claiming to come from another host.
    expect(await openProgress(await sealProgress(key, other, report))).toBeUndefined()
    const host = peerIdFromPrivateKey(key).toString()
    const sealed = JSON.parse(dec.decode(await sealProgress(key, host, report)))
    const altered = { ...sealed, body: sealed.body.replace('1024', '4096') }
    expect(await openProgress(enc.encode(JSON.stringify(altered)))).toBeUndefined()
    expect(await openProgress(enc.encode('not json'))).toBeUndefined()
    expect(await openProgress(enc.encode(JSON.stringify({ ...sealed, host: 'not a peer id' })))).toBeUndefined()
    expect(await openProgress(new Uint8Array(MAX_PROGRESS_BYTES + 1))).toBeUndefined()
    // Well signed, but not a progress report (more received than the total).
    expect(await openProgress(await sealProgress(key, host, { ...report, received: 5000 }))).toBeUndefined()
  })
})
