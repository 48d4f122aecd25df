/**
 * keys/published-keys.ts — security review, issue 12, point 12: a key revoked after `trust add`
 * must be revoked mesh-wide. Every host's published text counts; the merge is the union of the
 * material that verifies, the same in every order; junk is ignored and reported.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile, spawnSync } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as openpgp from 'openpgp'
import { PublishedKeys, mergeOwnKeyText, MAX_KEY_TEXT_CHARS, type PublishedText } from '../../keys/published-keys.ts'
import { verifyDetached, keyVerifier, requestDates, fingerprintOf } from '../../keys/keyring.ts'
import { normalizeFingerprint, type Fingerprint } from '../../protocol/fingerprint.ts'
import { buildPayload, validateEnvelope } from '../../protocol/envelope.ts'
import { PicocloudError } from '../../protocol/errors.ts'
import { makeKey, signAt, revokeAt, reason, at, bytes } from '../helpers/pgp-keys.ts'

const run = promisify(execFile)
const hasGpg = spawnSync('gpg', ['--version']).status === 0
if (!hasGpg) console.log('skipping GnuPG revocation interop tests: gpg is not installed (Debian package gnupg; CI installs it: .ci/install-system-packages)')

async function codeOf (p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p
  } catch (err) {
    return err instanceof PicocloudError ? err.code : `not a PicocloudError: ${String(err)}`
  }
  return undefined
}

function permutations<T> (xs: T[]): T[][] {
  if (xs.length <= 1) return [xs]
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map(p => [x, ...p]))
}

/** A copy of `key` with `sig` added to its key revocations (as a host could publish it). */
async function withRevocation (key: openpgp.PublicKey, sig: openpgp.SignaturePacket): Promise<string> {
  const copy = await openpgp.readKey({ armoredKey: key.armor() })
  copy.revocationSignatures.push(sig)
  return copy.armor()
}

/** A key revocation over `target` signed by `signer` (a third party, when not `target` itself). */
async function revocationBy (signer: openpgp.PrivateKey, target: openpgp.PublicKey, date: Date): Promise<openpgp.SignaturePacket> {
  const packet = new openpgp.SignaturePacket() as unknown as Record<string, unknown> & { sign: (...a: unknown[]) => Promise<void> }
  Object.assign(packet, {
    signatureType: openpgp.enums.signature.keyRevocation, publicKeyAlgorithm: signer.keyPacket.algorithm,
    hashAlgorithm: openpgp.enums.hash.sha512, reasonForRevocationFlag: reason.keyCompromised, reasonForRevocationString: ''
  })
  await packet.sign(signer.keyPacket, { key: target.keyPacket }, date, false, openpgp.config)
  return packet as unknown as openpgp.SignaturePacket
}

const t0 = at('2024-01-01T00:00:00Z')
const T = at('2024-06-01T00:00:00Z')
const before = [at('2024-05-31T23:00:00Z'), at('2024-05-31T23:00:05Z')]
const after = [at('2024-06-02T00:00:00Z'), at('2024-06-02T00:00:05Z')]
const data = bytes('{"kind":"vm.create"}')

describe('merging the texts hosts publish for one key', () => {
  let key: openpgp.PrivateKey
  let fpr: Fingerprint
  let old: string
  let updated: string
  let sig: string
  beforeAll(async () => {
    key = await makeKey({ date: t0, expiresIn: 365 * 86400 })
    fpr = fingerprintOf(key)
    old = key.toPublic().armor()
    // A later, legitimate update of the same key: its expiry extended by a newer self-signature.
    const { privateKey: extended } = await openpgp.reformatKey({ privateKey: key, userIDs: [{ name: 'T', email: 't@example.org' }], keyExpirationTime: 0, date: at('2024-03-01T00:00:00Z'), format: 'object' })
    updated = (await key.toPublic().update(extended.toPublic(), at('2024-03-01T00:00:00Z'))).armor()
    sig = await signAt(key, data, at('2024-05-01T00:00:00Z')) // backdated, whatever is judged
  })

  for (const [name, flag] of [['hard (compromised)', reason.keyCompromised], ['soft (superseded)', reason.keySuperseded]] as const) {
    it(`(d) a ${name} revocation published by one host wins over older texts from two others, in every order`, async () => {
      const revoked = (await revokeAt(key, T, flag)).armor()
      const texts: PublishedText[] = [{ source: 'host-a', text: revoked }, { source: 'host-b', text: old }, { source: 'host-c', text: updated }]
      const digests = new Set<string>()
      for (const order of permutations(texts)) {
        const merged = await new PublishedKeys().merge(fpr, order) // a fresh cache: each order merged from scratch
        expect(merged.ignored).toEqual([])
        expect(merged.sources).toEqual(['host-a', 'host-b', 'host-c'])
        digests.add(merged.digest!)
        expect(await codeOf(verifyDetached(data, sig, merged.key!, { dates: after }))).toBe('KEY_REVOKED')
        const atBefore = await codeOf(verifyDetached(data, sig, merged.key!, { dates: before }))
        expect(atBefore).toBe(flag === reason.keyCompromised ? 'KEY_REVOKED' : undefined)
      }
      expect(digests.size).toBe(1)
      // Each text's own material is in the union: the extension from host-c, the revocation from host-a.
      const merged = (await new PublishedKeys().merge(fpr, texts)).key!
      expect(await merged.isRevoked(undefined, undefined, after[0])).toBe(true)
      expect(merged.revocationSignatures).toHaveLength(1)
      expect(merged.users[0].selfCertifications.length).toBeGreaterThanOrEqual(2)
    })
  }

  it('gives the same key for the same texts, whatever duplicates, and caches by digest', async () => {
    const published = new PublishedKeys()
    const a = await published.merge(fpr, [{ source: 'h1', text: old }, { source: 'h2', text: updated }])
    const b = await published.merge(fpr, [{ source: 'h3', text: updated }, { source: 'h2', text: updated }, { source: 'h1', text: old }])
    expect(b.key).toBe(a.key) // the cached object: parsed and verified once
    expect(b.sources).toEqual(['h1', 'h2', 'h3'])
    const lone = await published.merge(fpr, [{ source: 'h1', text: old }])
    expect(lone.digest).not.toBe(a.digest)
    expect((await verifyDetached(data, sig, a.key!, { dates: after })).fingerprint).toBe(fpr)
  })

  it('(e) ignores and reports garbage, another key, oversized texts and non-strings', async () => {
    const other = await makeKey({ date: t0, name: 'Other' })
    const huge = old + '\n' + 'x'.repeat(MAX_KEY_TEXT_CHARS)
    const texts = [
      { source: 'garbage', text: 'hello' },
      { source: 'fake-armor', text: '-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----' },
      { source: 'wrong-key', text: other.toPublic().armor() },
      { source: 'huge', text: huge },
      { source: 'number', text: 42 as unknown as string },
      { source: 'good', text: old }
    ]
    const merged = await new PublishedKeys().merge(fpr, texts)
    expect(merged.sources).toEqual(['good'])
    expect(merged.ignored.map(i => [i.source, i.reason])).toEqual([
      ['fake-armor', 'not-a-key'], ['garbage', 'not-a-key'], ['huge', 'too-large'], ['number', 'not-text'], ['wrong-key', 'other-key']
    ])
    expect(merged.ignored.find(i => i.source === 'wrong-key')?.detail).toContain(fingerprintOf(other))
    expect((await verifyDetached(data, sig, merged.key!, { dates: before })).fingerprint).toBe(fpr)
    // Nothing usable: no key, and every text reported.
    const none = await new PublishedKeys().merge(fpr, texts.filter(t => t.source !== 'good'))
    expect(none.key).toBeUndefined()
    expect(none.ignored).toHaveLength(5)
  })

  it('(e) keeps only material the key itself signed: forged, mangled and third-party revocations, foreign subkeys are dropped', async () => {
    const attacker = await makeKey({ date: t0, name: 'Mallory' })
    const pub = key.toPublic()
    const thirdParty = await withRevocation(pub, await revocationBy(attacker, pub, T))
    // The key's own revocation with one bit of the signature flipped.
    const real = (await revokeAt(key, T, reason.keyCompromised)).revocationSignatures[0]
    const mangled = await openpgp.readKey({ armoredKey: await withRevocation(pub, real) })
    const params = (mangled.revocationSignatures[0] as unknown as { params: { s: Uint8Array } }).params
    params.s[params.s.length - 1] ^= 1
    // A subkey of the attacker's, bound by the attacker, grafted onto the key.
    const graft = await openpgp.readKey({ armoredKey: pub.armor() })
    graft.subkeys.push(...attacker.toPublic().subkeys.map(s => Object.assign(s, { mainKey: graft })))
    const texts = [{ source: 'third', text: thirdParty }, { source: 'mangled', text: mangled.armor() }, { source: 'graft', text: graft.armor() }, { source: 'old', text: old }]
    const merged = await new PublishedKeys().merge(fpr, texts)
    expect(merged.ignored).toEqual([]) // each is a usable text of the key; the bad parts are dropped
    expect(merged.key!.revocationSignatures).toHaveLength(0)
    expect(merged.key!.subkeys.map(s => s.getFingerprint())).toEqual(pub.subkeys.map(s => s.getFingerprint()))
    expect(merged.digest).toBe((await new PublishedKeys().merge(fpr, [{ source: 'old', text: old }])).digest)
    expect((await verifyDetached(data, sig, merged.key!, { dates: after })).fingerprint).toBe(fpr)
  })

  it('(e) bounds the work: at most maxTexts distinct texts (lowest digests), maxSignatures per text', async () => {
    const revoked = (await revokeAt(key, T, reason.keyCompromised)).armor()
    const texts = [{ source: 'a', text: old }, { source: 'b', text: updated }, { source: 'c', text: revoked }]
    const small = await new PublishedKeys({ maxTexts: 2 }).merge(fpr, texts)
    expect(small.ignored).toHaveLength(1)
    expect(small.ignored[0].reason).toBe('too-many-texts')
    for (const order of permutations(texts)) {
      expect((await new PublishedKeys({ maxTexts: 2 }).merge(fpr, order)).digest).toBe(small.digest)
    }
    const strict = await new PublishedKeys({ maxSignatures: 1 }).merge(fpr, [{ source: 'u', text: updated }])
    expect(strict.ignored.map(i => i.reason)).toEqual(['too-many-signatures'])
  })

  it('why not openpgp.js Key.update: its result depends on the order, and it adopts unchecked signatures', async () => {
    const pub = key.toPublic()
    const revoked = await revokeAt(key, T, reason.keyCompromised)
    const bad = await openpgp.readKey({ armoredKey: await withRevocation(pub, revoked.revocationSignatures[0]) })
    const p = (bad.revocationSignatures[0] as unknown as { params: { s: Uint8Array } }).params
    p.s[p.s.length - 1] ^= 1
    const clean = await openpgp.readKey({ armoredKey: old })
    // Into a key with no revocation, the bad one is adopted as is (openpgp.js ignores it when judging)…
    const adopted = await clean.update(bad)
    expect(adopted.revocationSignatures).toHaveLength(1)
    expect(await adopted.isRevoked()).toBe(false)
    // …into a revoked key it is checked and dropped: two orders, two different keys.
    const ab = await (await openpgp.readKey({ armoredKey: revoked.armor() })).update(bad)
    const ba = await (await openpgp.readKey({ armoredKey: bad.armor() })).update(revoked)
    expect(ab.revocationSignatures).toHaveLength(1)
    expect(ba.revocationSignatures).toHaveLength(2)
    // The merge here: one key either way, with only the valid revocation.
    const m1 = await new PublishedKeys().merge(fpr, [{ source: '1', text: revoked.armor() }, { source: '2', text: bad.armor() }])
    const m2 = await new PublishedKeys().merge(fpr, [{ source: '2', text: bad.armor() }, { source: '1', text: revoked.armor() }])
    expect(m1.digest).toBe(m2.digest)
    expect(m1.key!.revocationSignatures).toHaveLength(1)
  })

  it('wires into request checking: lookup of every published text → merged key → verify at [created, at]', async () => {
    const texts: PublishedText[] = [{ source: 'host-b', text: old }]
    const published = new PublishedKeys()
    const lookup = async (f: Fingerprint): Promise<openpgp.PublicKey | undefined> => (await published.merge(f, texts)).key
    const created = at('2024-06-01T00:00:30Z').getTime()
    const payload = buildPayload('vm.stop', { vm: 'web' }, { mesh: 'm1', issuer: fpr, now: created })
    const signature = await signAt(key, bytes(payload), at('2024-05-01T00:00:00Z')) // backdated
    const judge = async (atIso: string): Promise<string | undefined> => await codeOf(validateEnvelope({ payload, signature }, {
      meshId: 'm1', now: Date.parse(atIso), seen: () => false, verify: keyVerifier(lookup, { dates: requestDates(atIso) })
    }))
    expect(await judge('2024-06-01T00:01:00Z')).toBeUndefined()
    // host-a publishes the key retired at T: the same stored request is now refused, on every host.
    texts.push({ source: 'host-a', text: (await revokeAt(key, T, reason.keyRetired)).armor() })
    expect(await judge('2024-06-01T00:01:00Z')).toBe('KEY_REVOKED')
    expect(requestDates('2024-06-01T00:01:00Z')(bytes(payload)).map(d => d.toISOString())).toEqual(['2024-06-01T00:00:30.000Z', '2024-06-01T00:01:00.000Z'])
  })
})

describe('what this host publishes after `trust add` of an updated key', () => {
  let key: openpgp.PrivateKey
  let fpr: Fingerprint
  beforeAll(async () => {
    key = await makeKey({ date: t0 })
    fpr = fingerprintOf(key)
  })

  it('merges an update in, never loses a revocation, and says when nothing changed', async () => {
    const first = await mergeOwnKeyText(undefined, key.toPublic().armor())
    expect(first).toMatchObject({ fingerprint: fpr, changed: true })
    expect(first.armored).toMatch(/BEGIN PGP PUBLIC KEY BLOCK/)
    const revoked = await mergeOwnKeyText(first.armored, (await revokeAt(key, T, reason.keyCompromised)).armor())
    expect(revoked.changed).toBe(true)
    expect(await (await openpgp.readKey({ armoredKey: revoked.armored })).isRevoked()).toBe(true)
    // The operator runs `trust add` again with the old file: the revocation stays.
    const again = await mergeOwnKeyText(revoked.armored, key.toPublic().armor())
    expect(again).toMatchObject({ changed: false, digest: revoked.digest })
    // The same text as PublishedKeys makes of it: other hosts compute the same digest.
    expect((await new PublishedKeys().merge(fpr, [{ source: 'me', text: again.armored }])).digest).toBe(again.digest)
  })

  it('never publishes secret material', async () => {
    const r = await mergeOwnKeyText(undefined, key.armor())
    expect(r.armored).not.toMatch(/PRIVATE KEY/)
    expect((await openpgp.readKey({ armoredKey: r.armored })).isPrivate()).toBe(false)
  })

  it('applies a bare revocation certificate to the published key', async () => {
    const published = (await mergeOwnKeyText(undefined, key.toPublic().armor())).armored
    const cert = await (await revokeAt(key, T, reason.keySuperseded)).getRevocationCertificate(after[0]) as string
    expect(cert).toMatch(/revocation certificate/)
    const r = await mergeOwnKeyText(published, cert)
    expect(r.changed).toBe(true)
    const merged = await openpgp.readKey({ armoredKey: r.armored })
    expect(await merged.isRevoked(undefined, undefined, after[0])).toBe(true)
    expect(await merged.isRevoked(undefined, undefined, before[0])).toBe(false) // soft: from T on
    expect(await codeOf(mergeOwnKeyText(undefined, cert))).toBe('BAD_KEY')
    const other = await makeKey({ date: t0, name: 'Other' })
    const otherCert = await (await revokeAt(other, T, reason.keyRetired)).getRevocationCertificate(after[0]) as string
    expect(await codeOf(mergeOwnKeyText(published, otherCert))).toBe('BAD_KEY')
  })

  it('refuses another key, several keys, and a result too large for hosts to accept', async () => {
    const other = await makeKey({ date: t0, name: 'Other' })
    const published = (await mergeOwnKeyText(undefined, key.toPublic().armor())).armored
    expect(await codeOf(mergeOwnKeyText(published, other.toPublic().armor()))).toBe('BAD_KEY')
    expect(await codeOf(mergeOwnKeyText(undefined, key.toPublic().armor() + '\n' + other.toPublic().armor()))).toBe('BAD_KEY')
    expect(await codeOf(mergeOwnKeyText(undefined, 'hello'))).toBe('BAD_KEY')
    const names = Array.from({ length: 40 }, (_, i) => ({ name: `N${i} ${'x'.repeat(1500)}`, email: `n${i}@example.org` }))
    const { privateKey: big } = await openpgp.generateKey({ userIDs: names, type: 'ecc', curve: 'curve25519Legacy', format: 'object' })
    expect(await codeOf(mergeOwnKeyText(undefined, big.toPublic().armor()))).toBe('BAD_KEY')
  })
})

describe.skipIf(!hasGpg)('GnuPG revocation certificates', () => {
  let home: string
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, GNUPGHOME: home })
  const gpg = async (...args: string[]): Promise<string> =>
    (await run('gpg', ['--batch', '--no-tty', '--pinentry-mode', 'loopback', ...args], { env: env() })).stdout
  beforeAll(async () => { home = await mkdtemp(join(tmpdir(), 'pc-gnupg-rev-')) })
  afterAll(async () => {
    await run('gpgconf', ['--kill', 'gpg-agent'], { env: env() }).catch(() => {})
    await rm(home, { recursive: true, force: true })
  })

  it('a copy of a GnuPG key whose subkey binding lost its back-signature cannot disable the signing subkey', async () => {
    await gpg('--passphrase', '', '--quick-gen-key', 'Sub Gnu <sub@example.org>', 'ed25519', 'cert', 'never')
    const out = await gpg('--with-colons', '--list-keys', 'sub@example.org')
    const fpr = normalizeFingerprint(out.split('\n').find(l => l.startsWith('fpr:'))!.split(':')[9])
    await gpg('--passphrase', '', '--quick-add-key', fpr, 'ed25519', 'sign', 'never')
    const good = await gpg('--armor', '--export', fpr)
    const file = join(home, 'sub.json')
    await writeFile(file, '{"kind":"vm.create"}')
    await gpg('--yes', '--local-user', fpr, '--armor', '--output', `${file}.asc`, '--detach-sign', file)
    const sig = await readFile(`${file}.asc`, 'utf8')
    // GnuPG puts the back-signature (subpacket 32) in the binding's unhashed area: anyone can drop it.
    const stripped = await openpgp.readKey({ armoredKey: good })
    const binding = stripped.subkeys[0].bindingSignatures[0] as unknown as { unhashedSubpackets: Array<{ type: number }>, embeddedSignature: unknown }
    expect(binding.unhashedSubpackets.some(p => p.type === 32)).toBe(true)
    binding.unhashedSubpackets = binding.unhashedSubpackets.filter(p => p.type !== 32)
    binding.embeddedSignature = null
    const bad = stripped.armor()
    expect(await codeOf(verifyDetached(data, sig, await openpgp.readKey({ armoredKey: bad }), { dates: [new Date()] }))).toBe('KEY_NOT_VALID')
    for (const order of permutations([{ source: 'a', text: good }, { source: 'b', text: bad }])) {
      const merged = await new PublishedKeys().merge(fpr, order)
      expect(merged.sources).toEqual(['a', 'b'])
      expect((await verifyDetached(data, sig, merged.key!, { dates: [new Date()] })).fingerprint).toBe(fpr)
    }
  })

  it('a key revoked with the certificate GnuPG made for it is revoked mesh-wide', async () => {
    await gpg('--passphrase', '', '--quick-gen-key', 'Rev Gnu <rev@example.org>', 'ed25519', 'sign', 'never')
    const out = await gpg('--with-colons', '--list-keys', 'rev@example.org')
    const fpr = normalizeFingerprint(out.split('\n').find(l => l.startsWith('fpr:'))!.split(':')[9])
    const old = await gpg('--armor', '--export', fpr)
    const file = join(home, 'payload.json')
    await writeFile(file, '{"kind":"vm.create"}')
    await gpg('--yes', '--local-user', fpr, '--armor', '--output', `${file}.asc`, '--detach-sign', file)
    const sig = await readFile(`${file}.asc`, 'utf8')
    const now = [new Date(), new Date(Date.now() + 1000)]
    expect((await verifyDetached(data, sig, (await new PublishedKeys().merge(fpr, [{ source: 'b', text: old }])).key!, { dates: now })).fingerprint).toBe(fpr)
    // GnuPG keeps a revocation certificate for every key it makes, its first line guarded by a colon.
    const cert = (await readFile(join(home, 'openpgp-revocs.d', `${fpr}.rev`), 'utf8')).replace(/^:-----BEGIN/m, '-----BEGIN')
    const own = await mergeOwnKeyText(old, cert)
    expect(own.changed).toBe(true)
    // …and the user who imports it into GnuPG and exports the key gets the same revocation.
    await writeFile(join(home, 'rev.asc'), cert)
    await gpg('--import', join(home, 'rev.asc'))
    const exported = await gpg('--armor', '--export', fpr)
    for (const order of permutations([{ source: 'a', text: own.armored }, { source: 'b', text: old }, { source: 'c', text: exported }])) {
      const merged = await new PublishedKeys().merge(fpr, order)
      expect(merged.ignored).toEqual([])
      expect(await codeOf(verifyDetached(data, sig, merged.key!, { dates: now }))).toBe('KEY_REVOKED')
    }
  })
})
