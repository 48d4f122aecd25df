/**
 * The host's WireGuard key pair: X25519 from tweetnacl, byte-identical to `wg genkey` / `wg pubkey`
 * (base64 of the 32-byte private and public keys). Kept in the state dir with mode 0600; only the
 * public key is published in the host's record.
 */
import { readFile, chmod } from 'node:fs/promises'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { writeFileAtomic, isLooseSecret } from '../node/files.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { Logger } from '../node/log.ts'

export const WIREGUARD_KEY_FILE = 'wireguard.key'

export interface WireguardKeyPair {
  /** base64, as `wg genkey` prints it */
  privateKey: string
  /** base64, as `wg pubkey` prints it */
  publicKey: string
}

export function wireguardKeyPairFromPrivate (privateKey: string): WireguardKeyPair {
  const secret = Buffer.from(privateKey.trim(), 'base64')
  if (secret.length !== 32) throw new PicocloudError(ErrorCode.Config, 'a WireGuard private key is 32 bytes of base64')
  const pair = nacl.box.keyPair.fromSecretKey(new Uint8Array(secret))
  return { privateKey: secret.toString('base64'), publicKey: Buffer.from(pair.publicKey).toString('base64') }
}

export function generateWireguardKeyPair (): WireguardKeyPair {
  const pair = nacl.box.keyPair()
  return {
    privateKey: Buffer.from(pair.secretKey).toString('base64'),
    publicKey: Buffer.from(pair.publicKey).toString('base64')
  }
}

export async function loadOrCreateWireguardKey (stateDir: string, log?: Logger): Promise<WireguardKeyPair> {
  const path = join(stateDir, WIREGUARD_KEY_FILE)
  try {
    const text = await readFile(path, 'utf8')
    if (await isLooseSecret(path)) {
      log?.warn('WireGuard key was readable by others; tightening to 0600', { path })
      await chmod(path, 0o600)
    }
    return wireguardKeyPairFromPrivate(text)
  } catch (err: any) {
    if (err?.code !== 'ENOENT') throw err
  }
  const pair = generateWireguardKeyPair()
  await writeFileAtomic(path, pair.privateKey + '\n', 0o600)
  log?.info('created WireGuard key', { path, publicKey: pair.publicKey })
  return pair
}
