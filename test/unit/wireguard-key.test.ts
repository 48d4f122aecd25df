/**
 * The WireGuard key derived from the peer key (keys/wireguard.ts): libsodium's conversion vector,
 * the property WireGuard needs (the derived public key is X25519(derived private, basepoint), so
 * two hosts agree on their shared secret), the `wg genkey` format, and clear errors for peer ids
 * that have no WireGuard key.
 */
import { describe, it, expect } from 'vitest'
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { generateKeyPair, generateKeyPairFromSeed, publicKeyFromRaw, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromPublicKey } from '@libp2p/peer-id'
import { wireguardKeyFromPeerKey, wireguardPublicKeyForPeer, wireguardKeyPairFromPrivate, loadWireguardKey, loadOrCreateWireguardKey, WIREGUARD_KEY_FILE } from '../../keys/wireguard.ts'
import { PEER_KEY_FILE } from '../../keys/peer-key.ts'
import type { Logger } from '../../node/log.ts'

const hex = (b64: string): string => Buffer.from(b64, 'base64').toString('hex')
const bytes = (b64: string): Uint8Array => new Uint8Array(Buffer.from(b64, 'base64'))
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')

function recordingLogger (): { log: Logger, lines: string[] } {
  const lines: string[] = []
  const log: any = {
    debug: (m: string) => lines.push(`debug ${m}`),
    info: (m: string) => lines.push(`info ${m}`),
    warn: (m: string) => lines.push(`warn ${m}`),
    error: (m: string) => lines.push(`error ${m}`),
    forComponent: () => log
  }
  return { log, lines }
}

describe('the WireGuard key derived from the peer key', () => {
  it('matches libsodium crypto_sign_ed25519_{sk,pk}_to_curve25519 (test/default/ed25519_convert)', async () => {
    const seed = Buffer.from('421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee', 'hex')
    const key = await generateKeyPairFromSeed('Ed25519', seed)
    const pair = wireguardKeyFromPeerKey(key)
    expect(hex(pair.privateKey)).toBe('8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166')
    expect(hex(pair.publicKey)).toBe('f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50')
    expect(wireguardPublicKeyForPeer(peerIdFromPrivateKey(key))).toBe(pair.publicKey)
  })

  it('is a WireGuard key pair: public = X25519(private, 9), and two hosts agree on their shared secret', async () => {
    const keys = await Promise.all(Array.from({ length: 16 }, async () => await generateKeyPair('Ed25519')))
    const pairs = keys.map(k => wireguardKeyFromPeerKey(k))
    for (const [i, k] of keys.entries()) {
      const { privateKey, publicKey } = pairs[i]
      // The format of `wg genkey` / `wg pubkey`: base64 of 32 bytes, the private key clamped.
      expect(privateKey).toMatch(/^[A-Za-z0-9+/]{43}=$/)
      expect(publicKey).toMatch(/^[A-Za-z0-9+/]{43}=$/)
      const secret = bytes(privateKey)
      expect([secret[0] & 7, secret[31] & 0xc0]).toEqual([0, 0x40])
      expect(b64(nacl.scalarMult.base(secret))).toBe(publicKey)
      expect(wireguardKeyPairFromPrivate(privateKey)).toEqual(pairs[i])
      // From the peer id alone, as any other host computes it: string or PeerId.
      const id = peerIdFromPrivateKey(k)
      expect(wireguardPublicKeyForPeer(id)).toBe(publicKey)
      expect(wireguardPublicKeyForPeer(id.toString())).toBe(publicKey)
    }
    const [a, b] = pairs
    expect(b64(nacl.scalarMult(bytes(a.privateKey), bytes(b.publicKey)))).toBe(b64(nacl.scalarMult(bytes(b.privateKey), bytes(a.publicKey))))
    expect(new Set(pairs.map(p => p.publicKey)).size).toBe(pairs.length)
  })

  it('refuses peer ids that have no WireGuard key, with a clear error', async () => {
    const secp = peerIdFromPrivateKey(await generateKeyPair('secp256k1'))
    expect(() => wireguardPublicKeyForPeer(secp)).toThrow(expect.objectContaining({ code: 'BAD_PEER_KEY', message: expect.stringMatching(/is a secp256k1 key; a host's WireGuard key is derived from an Ed25519 peer id/) }))
    expect(() => wireguardPublicKeyForPeer(secp.toString())).toThrow(/secp256k1/)
    expect(() => wireguardPublicKeyForPeer('pa')).toThrow(expect.objectContaining({ code: 'BAD_PEER_KEY', message: expect.stringMatching(/not a peer id: "pa"/) }))
    await expect(generateKeyPair('secp256k1').then(k => wireguardKeyFromPeerKey(k))).rejects.toThrow(/Ed25519 peer key, not a secp256k1 one/)
    // The Ed25519 identity point (y = 1) and a point of order 4 (y = 0): no secret behind them.
    for (const y of [1, 0]) {
      const raw = new Uint8Array(32); raw[0] = y
      const id = peerIdFromPublicKey(publicKeyFromRaw(raw))
      expect(() => wireguardPublicKeyForPeer(id)).toThrow(/unusable \(it is a low-order point\)/)
    }
  })

  it('maps an Ed25519 key and its negation (sign bit of x flipped) to one WireGuard key', async () => {
    // Why a member counts for WireGuard only once it has written its own record (node/network/reconciler.ts):
    // anyone can admit the negated peer id, but nobody holds its private key.
    const id = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    const raw = new Uint8Array(id.publicKey.raw); raw[31] ^= 0x80
    const twin = peerIdFromPublicKey(publicKeyFromRaw(raw))
    expect(twin.toString()).not.toBe(id.toString())
    expect(wireguardPublicKeyForPeer(twin)).toBe(wireguardPublicKeyForPeer(id))
  })
})

describe('loading the key', () => {
  it('derives the pair, deletes an old random wireguard.key once with a log line, and writes nothing', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pc-wg-'))
    try {
      const key = await generateKeyPair('Ed25519')
      await writeFile(join(dir, WIREGUARD_KEY_FILE), b64(nacl.box.keyPair().secretKey) + '\n', { mode: 0o600 })
      const { log, lines } = recordingLogger()
      const pair = await loadWireguardKey(dir, key, log)
      expect(pair).toEqual(wireguardKeyFromPeerKey(key))
      expect(await readdir(dir)).toEqual([])
      expect(lines).toEqual(['info WireGuard key is now derived from the peer key; removed the old random key'])
      expect(await loadWireguardKey(dir, key, log)).toEqual(pair)
      expect(lines).toHaveLength(1)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('the superseded loadOrCreateWireguardKey returns the pair derived from the state dir\'s peer key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pc-wg-'))
    try {
      const key = await generateKeyPair('Ed25519')
      await writeFile(join(dir, PEER_KEY_FILE), privateKeyToProtobuf(key), { mode: 0o600 })
      await writeFile(join(dir, WIREGUARD_KEY_FILE), b64(nacl.box.keyPair().secretKey) + '\n', { mode: 0o600 })
      expect(await loadOrCreateWireguardKey(dir)).toEqual(wireguardKeyFromPeerKey(key))
      expect(await readdir(dir)).toEqual([PEER_KEY_FILE])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
