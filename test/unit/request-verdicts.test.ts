import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { mkdtemp, mkdir, rm, readFile, writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ImmutableString } from '@automerge/automerge'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { StateStore } from '../../crdt/store.ts'
import { foundMesh } from '../../crdt/membership.ts'
import { generateKey, loadPrivateKey, signDetached } from '../../keys/keyring.ts'
import { buildPayload, sealEnvelope, requestId } from '../../protocol/envelope.ts'
import { RequestBook, VERDICTS_FILE } from '../../node/control/requests.ts'
import * as openpgp from 'openpgp'
import { revokeAt } from '../helpers/pgp-keys.ts'
import { silentLogger } from '../../node/log.ts'

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

describe('request verdicts kept across restarts', () => {
  let dir: string
  let hostKey: PrivateKey
  let store: StateStore
  let publicKey: string
  let id: string
  let privateKey: openpgp.PrivateKey

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-verdicts-'))
    await mkdir(join(dir, 'state'))
    hostKey = await generateKeyPair('Ed25519')
    store = await StateStore.open({ dir: join(dir, 'state'), key: hostKey })
    await foundMesh(store, { name: 'm', host: { name: 'h', addresses: [], wgPublicKey: 'k', version: 't', updated: '' } })
    const user = await generateKey(join(dir, 'keyring'), { userIds: ['U <u@example.org>'], type: 'ed25519' })
    publicKey = user.publicKey
    await store.change('trust', d => { d.host!.keys = { [user.fingerprint]: new ImmutableString(publicKey) as unknown as string } })
    const key = await loadPrivateKey(join(dir, 'keyring'), user.fingerprint)
    privateKey = key
    const payload = buildPayload('vm.create', { name: 'vm1', image: 'debian-12', type: 'small', nics: [], labels: {} }, { mesh: store.meshId as string, issuer: user.fingerprint, now: Date.now() })
    const env = await sealEnvelope(payload, async d => await signDetached(key, d))
    id = requestId(payload)
    await store.change('request', d => {
      d.requests ??= {}
      d.requests[id] = { payload: new ImmutableString(env.payload) as unknown as string, signature: new ImmutableString(env.signature) as unknown as string, at: new Date().toISOString() }
    })
  })
  afterEach(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** Marks the kept verdict, so that a verdict taken from the file can be told from a fresh one. */
  async function markKept (): Promise<void> {
    const path = join(dir, 'state', VERDICTS_FILE)
    const file = JSON.parse(await readFile(path, 'utf8'))
    file.verdicts[`${id}/${store.self}`].request.body.name = 'from-the-file'
    file.sum = sha256(JSON.stringify(file.verdicts))
    await writeFile(path, JSON.stringify(file))
  }
  const judge = async () => { const b = new RequestBook(store, silentLogger); await b.verifyPending(); return b.get(id, store.self) }

  it('reuses a verdict for the same request verified by the same key text', async () => {
    const first = new RequestBook(store, silentLogger)
    await first.verifyPending()
    expect(first.get(id, store.self)?.ok).toBe(true)
    await first.saveVerdicts()
    await markKept()
    const again = await judge()
    expect(again?.ok && again.request.body).toMatchObject({ name: 'from-the-file' })
  })

  it('judges the request again when its issuer\'s merged key changes, and not for a mere re-armoring', async () => {
    const first = new RequestBook(store, silentLogger)
    await first.verifyPending()
    await first.saveVerdicts()
    await markKept()
    const fpr = Object.keys(store.doc.hosts[store.self].keys ?? {})[0]
    // The same key in another text (another armoring): the merged key is the same, the verdict kept.
    await store.change('republish', d => { d.host!.keys![fpr] = new ImmutableString(`${publicKey}\n`) as unknown as string })
    expect((await judge())?.ok && (await judge() as any).request.body).toMatchObject({ name: 'from-the-file' })
    // An update of the key (a revocation dated in a year: valid now, but another key): judged again.
    const revoked = await revokeAt(privateKey, new Date(Date.now() + 365 * 86400_000), openpgp.enums.reasonForRevocation.keyRetired)
    await store.change('update', d => { d.host!.keys![fpr] = new ImmutableString(revoked.armor()) as unknown as string })
    const again = await judge()
    expect(again?.ok).toBe(true)
    expect(again?.ok && again.request.body).toMatchObject({ name: 'vm1' })
    // And when no host publishes the key any more, the request is not valid.
    await store.change('unpublish', d => { delete d.host!.keys![fpr] })
    expect((await judge())?.ok).toBe(false)
  })

  it('judges the request again when the kept verdict was for something else stored under its id (at, via, signature…)', async () => {
    const first = new RequestBook(store, silentLogger)
    await first.verifyPending()
    await first.saveVerdicts()
    await markKept()
    // The kept verdict is bound to the digest of what was stored; another digest is another request.
    const path = join(dir, 'state', VERDICTS_FILE)
    const file = JSON.parse(await readFile(path, 'utf8'))
    file.verdicts[`${id}/${store.self}`].digest = sha256('something else')
    file.sum = sha256(JSON.stringify(file.verdicts))
    await writeFile(path, JSON.stringify(file))
    const again = await judge()
    expect(again?.ok && again.request.body).toMatchObject({ name: 'vm1' })
  })

  it('reaches the same verdict whatever this host\'s clock says: hours later by sync, or minutes off', async () => {
    const { vi } = await import('vitest')
    const verdicts: unknown[] = []
    try {
      for (const offset of [0, -5 * 60_000, 5 * 60_000, 6 * 3600_000, 30 * 86400_000]) {
        vi.useFakeTimers({ now: Date.now() + offset, toFake: ['Date'] })
        const b = new RequestBook(store, silentLogger)
        await b.verifyPending()
        verdicts.push(b.get(id, store.self))
        vi.useRealTimers()
      }
    } finally { vi.useRealTimers() }
    expect(verdicts.every(v => (v as any)?.ok === true)).toBe(true)
    expect(new Set(verdicts.map(v => JSON.stringify(v))).size).toBe(1)
  })

  it('ignores a damaged file', async () => {
    const first = new RequestBook(store, silentLogger)
    await first.verifyPending()
    await first.saveVerdicts()
    await markKept()
    const path = join(dir, 'state', VERDICTS_FILE)
    await writeFile(path, (await readFile(path, 'utf8')).replace('from-the-file', 'tampered-too'))
    const again = await judge()
    expect(again?.ok && again.request.body).toMatchObject({ name: 'vm1' })
  })
})
