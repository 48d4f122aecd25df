/**
 * The host's WireGuard key pair: X25519, byte-identical to `wg genkey` / `wg pubkey` (base64 of the
 * 32-byte private and public keys).
 *
 * The pair is derived from the host's libp2p Ed25519 peer key by the standard birational map (as
 * libsodium's crypto_sign_ed25519_sk_to_curve25519 / _pk_to_curve25519): private = the first 32
 * bytes of SHA-512(seed), clamped; public = the Montgomery u = (1+y)/(1-y) of the Ed25519 public
 * key. So every host computes any member's WireGuard public key from its peer id alone, and no
 * member can claim another host's WireGuard key: a key published in a host record is never
 * trusted (it used to be, and a member publishing a copy of another host's key cut that host off
 * the private networks, security review issue 12).
 *
 * Migration: hosts used to keep a random key in `<state>/wireguard.key`. `loadWireguardKey` derives
 * the pair and deletes that file (logged once); the network reconciler then reconfigures the
 * interface with the derived private key, and the other hosts already expect the derived public key.
 * Older daemons still use the key a record publishes, which is the derived one once its host runs
 * this version; so in a mesh upgraded host by host, a tunnel between two hosts comes up once both
 * do (an upgraded host expects the older one's derived key, not its random one).
 *
 * @example
 * const wg = await loadWireguardKey(stateDir, peerKey, log)   // { privateKey, publicKey }, base64
 * wireguardPublicKeyForPeer('12D3KooW…') === wg.publicKey       // on any host, for this host's id
 */
import { unlink } from 'node:fs/promises'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { ed25519 } from '@noble/curves/ed25519'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { loadOrCreatePeerKey } from './peer-key.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { Logger } from '../node/log.ts'

/** Where hosts kept their random WireGuard key before it was derived from the peer key. */
export const WIREGUARD_KEY_FILE = 'wireguard.key'

export interface WireguardKeyPair {
  /** base64, as `wg genkey` prints it */
  privateKey: string
  /** base64, as `wg pubkey` prints it */
  publicKey: string
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64')

export function wireguardKeyPairFromPrivate (privateKey: string): WireguardKeyPair {
  const secret = Buffer.from(privateKey.trim(), 'base64')
  if (secret.length !== 32) throw new PicocloudError(ErrorCode.Config, 'a WireGuard private key is 32 bytes of base64')
  const pair = nacl.box.keyPair.fromSecretKey(new Uint8Array(secret))
  return { privateKey: secret.toString('base64'), publicKey: b64(pair.publicKey) }
}

/**
 * The WireGuard key pair of the host whose libp2p peer key this is (Ed25519 only). The public key
 * is X25519(private, basepoint), and equals `wireguardPublicKeyForPeer` of the host's peer id.
 */
export function wireguardKeyFromPeerKey (privateKey: PrivateKey): WireguardKeyPair {
  if (privateKey.type !== 'Ed25519') {
    throw new PicocloudError(ErrorCode.BadPeerKey, `the WireGuard key is derived from an Ed25519 peer key, not a ${privateKey.type} one`)
  }
  // libp2p's raw Ed25519 private key is seed (32 bytes) || public key (32 bytes).
  const seed = privateKey.raw.subarray(0, 32)
  const pair = wireguardKeyPairFromPrivate(b64(ed25519.utils.toMontgomerySecret(seed)))
  // Cheap, once per start: a peer key file whose halves disagree would give a WireGuard key that no
  // other host expects, and tunnels would fail without a word.
  if (pair.publicKey !== montgomeryPublic(privateKey.publicKey.raw)) {
    throw new PicocloudError(ErrorCode.Config, 'the peer key\'s seed does not match its public key; the host key file is damaged')
  }
  return pair
}

function montgomeryPublic (edwards: Uint8Array): string {
  // RFC 8032 decoding: a non-canonical y (a second encoding of a point, so a second peer id) is refused.
  const point = ed25519.Point.fromBytes(edwards)
  // A low-order key has no secret behind it; as a WireGuard key every handshake with it is all zeros.
  if (point.isSmallOrder()) throw new Error('it is a low-order point')
  return b64(ed25519.utils.toMontgomery(edwards))
}

// Bounded memo: every network pass derives every member's key, each a square root mod p.
const memo = new Map<string, string>()
const MEMO_MAX = 4096

/**
 * The WireGuard public key (base64) of a host, from its peer id's embedded Ed25519 public key.
 * Pure; throws a BAD_PEER_KEY error for a peer id that is not Ed25519 or whose key is unusable.
 */
export function wireguardPublicKeyForPeer (peerId: string | PeerId): string {
  const text = peerId.toString()
  const known = memo.get(text)
  if (known !== undefined) return known
  let id: PeerId
  try {
    id = typeof peerId === 'string' ? peerIdFromString(peerId) : peerId
  } catch {
    throw new PicocloudError(ErrorCode.BadPeerKey, `not a peer id: ${JSON.stringify(text)}; a host's WireGuard key is derived from its Ed25519 peer id`)
  }
  if (id.type !== 'Ed25519') {
    throw new PicocloudError(ErrorCode.BadPeerKey, `peer id ${text} is a ${id.type} key; a host's WireGuard key is derived from an Ed25519 peer id`)
  }
  let key: string
  try {
    key = montgomeryPublic(id.publicKey.raw)
  } catch (err: any) {
    throw new PicocloudError(ErrorCode.BadPeerKey, `peer id ${text} has no WireGuard key: its Ed25519 public key is unusable (${String(err.message)})`)
  }
  if (memo.size >= MEMO_MAX) memo.delete(memo.keys().next().value as string)
  memo.set(text, key)
  return key
}

/**
 * This host's WireGuard key pair, derived from its peer key. A random key left in
 * `<state>/wireguard.key` by an older version is deleted (nothing uses it any more), with a log line.
 */
export async function loadWireguardKey (stateDir: string, peerKey: PrivateKey, log?: Logger): Promise<WireguardKeyPair> {
  const pair = wireguardKeyFromPeerKey(peerKey)
  const path = join(stateDir, WIREGUARD_KEY_FILE)
  try {
    await unlink(path)
    log?.info('WireGuard key is now derived from the peer key; removed the old random key', { path, publicKey: pair.publicKey })
  } catch (err: any) {
    if (err?.code !== 'ENOENT') log?.warn('cannot remove the old WireGuard key; it is not used', { path, error: String(err?.message) })
  }
  return pair
}

/**
 * @deprecated call `loadWireguardKey(stateDir, peerKey, log)`. Kept, with its old signature, while
 * node/node.ts still calls it: it now reads the peer key of the same state dir and returns the
 * derived pair too (a random key here would be one no other host expects).
 */
export async function loadOrCreateWireguardKey (stateDir: string, log?: Logger): Promise<WireguardKeyPair> {
  return await loadWireguardKey(stateDir, await loadOrCreatePeerKey(stateDir, log), log)
}
