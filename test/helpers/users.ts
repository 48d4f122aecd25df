/**
 * Users of a test mesh: an OpenPGP key made with the CLI in a keyring of its own, its public key
 * exported to a file (for `trust add`), and requests signed with it, at any time the test chooses.
 *
 * @example
 * const u = await makeUser(alpha, dir, 'ada')
 * await bravo.cli('trust', 'add', u.keyFile)
 * const env = await signedRequest(u, meshId, 'vm.create', { name: 'web', image: 'tiny', type: 'small' }, { now: Date.now() - 50 * 60_000 })
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { buildPayload } from '../../protocol/envelope.ts'
import type { RequestKind } from '../../protocol/requests.ts'
import type * as openpgp from 'openpgp'
import { loadPrivateKey, signDetached, fingerprintOf } from '../../keys/keyring.ts'
import { makeKey } from './pgp-keys.ts'
import type { TestDaemon } from './daemon.ts'

export interface User {
  name: string
  /** Its keyring (for the CLI); empty for a user made with `makeUserAt`. */
  keyring: string
  fpr: string
  keyFile: string
  /** The key itself, for a user made with `makeUserAt`. */
  key?: openpgp.PrivateKey
}

export async function makeUser (d: TestDaemon, dir: string, name: string): Promise<User> {
  const keyring = join(dir, `${name}-keyring`)
  const g = await d.as(keyring, '--json', 'key', 'generate', '--name', name, '--email', `${name}@example.org`)
  if (g.code !== 0) throw new Error(`key generate: ${g.stderr}`)
  const fpr = JSON.parse(g.stdout).fingerprint as string
  const keyFile = join(dir, `${name}.asc`)
  const exported = await d.as(keyring, 'key', 'export', fpr)
  if (exported.code !== 0) throw new Error(`key export: ${exported.stderr}`)
  await writeFile(keyFile, exported.stdout)
  return { name, keyring, fpr, keyFile }
}

/** A user whose key was made at `date` (e.g. two hours ago: it may sign a request dated an hour ago). */
export async function makeUserAt (dir: string, name: string, date: Date): Promise<User> {
  const key = await makeKey({ date, name })
  const keyFile = join(dir, `${name}.asc`)
  await writeFile(keyFile, key.toPublic().armor())
  return { name, keyring: '', fpr: fingerprintOf(key), keyFile, key }
}

/** A request signed by `u`: created at `now` (default: now), living `lifetimeMs`. */
export async function signedRequest (u: User, mesh: string, kind: RequestKind, body: unknown, opts: { now?: number, lifetimeMs?: number } = {}): Promise<{ payload: string, signature: string }> {
  const payload = buildPayload(kind, body, { mesh, issuer: u.fpr, now: opts.now ?? Date.now(), lifetimeMs: opts.lifetimeMs })
  const key = u.key ?? await loadPrivateKey(u.keyring, u.fpr)
  return { payload, signature: await signDetached(key, new TextEncoder().encode(payload)) }
}
