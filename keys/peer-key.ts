/**
 * The host's libp2p Ed25519 key. Its peer id names the host everywhere: in the mesh membership,
 * as the Automerge actor of every change the host writes, and in the WireGuard overlay address.
 */
import { readFile, chmod } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromString, peerIdFromMultihash, peerIdFromPrivateKey } from '@libp2p/peer-id'
import { decode as decodeDigest } from 'multiformats/hashes/digest'
import type { PrivateKey, PeerId, Ed25519PeerId } from '@libp2p/interface'
import { writeFileAtomic, isLooseSecret } from '../node/files.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { Logger } from '../node/log.ts'

export const PEER_KEY_FILE = 'peer.key'

/** Loads the host key from the state dir, or creates it (mode 0600) on first start. */
export async function loadOrCreatePeerKey (stateDir: string, log?: Logger): Promise<PrivateKey> {
  const path = join(stateDir, PEER_KEY_FILE)
  try {
    const bytes = await readFile(path)
    if (await isLooseSecret(path)) {
      log?.warn('peer key was readable by others; tightening to 0600', { path })
      await chmod(path, 0o600)
    }
    return privateKeyFromProtobuf(bytes)
  } catch (err: any) {
    if (err?.code !== 'ENOENT') {
      throw new PicocloudError(ErrorCode.Config, `cannot read the host key ${path}: ${err.message}`, 500)
    }
  }
  const key = await generateKeyPair('Ed25519')
  await writeFileAtomic(path, privateKeyToProtobuf(key), 0o600)
  log?.info('created host key', { path, peerId: peerIdFromPrivateKey(key).toString() })
  return key
}

/** Parses a peer key as printed by `picocloud id` (a libp2p Ed25519 peer id). */
export function parsePeerId (text: string): Ed25519PeerId {
  const trimmed = text.trim()
  let id: PeerId
  try {
    id = peerIdFromString(trimmed)
  } catch {
    throw new PicocloudError(ErrorCode.BadPeerKey,
      `not a peer key: ${JSON.stringify(trimmed)} (expected what \`picocloud id\` prints on the other host, like 12D3KooW…)`)
  }
  if (id.type !== 'Ed25519') {
    throw new PicocloudError(ErrorCode.BadPeerKey, `peer key ${trimmed} is a ${id.type} key; picocloud hosts use Ed25519 keys`)
  }
  return id
}

/** The Automerge actor id of a host: the hex of its peer id's multihash (which embeds the public key). */
export function actorForPeer (peerId: PeerId): string {
  return Buffer.from(peerId.toMultihash().bytes).toString('hex')
}

/** Inverse of actorForPeer; throws when the actor is not an Ed25519 peer id. */
export function peerForActor (actor: string): Ed25519PeerId {
  if (!/^[0-9a-f]+$/.test(actor)) throw new Error('actor is not hex')
  const id = peerIdFromMultihash(decodeDigest(Buffer.from(actor, 'hex')))
  if (id.type !== 'Ed25519') throw new Error(`actor is a ${id.type} peer id`)
  return id
}
