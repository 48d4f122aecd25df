/**
 * The Ed25519 fast path (keys/ed25519-verify.ts) must reach exactly the verdicts of openpgp.js:
 * each case below runs verifyDetached (fast path when eligible) and verifyWithOpenpgp (openpgp.js's
 * SignaturePacket.verify for every packet) on the same signature, key and dates, and compares the
 * verdicts, error codes included. Times and the key's validity are judged by keys/verify.ts for
 * both (see the top of that file): the key at each date given, never at the signature's own time.
 */
import { describe, it, expect, beforeAll } from 'vitest'
import * as openpgp from 'openpgp'
import { verifyDetached, verifyWithOpenpgp, fingerprintOf, type VerifiedSignature } from '../../keys/keyring.ts'
import { fastEd25519Eligible } from '../../keys/ed25519-verify.ts'
import type { Fingerprint } from '../../protocol/fingerprint.ts'
import { makeKey, signAt, revokeAt, revokeSubkeyAt, openpgpVerifyAt, reason, at } from '../helpers/pgp-keys.ts'

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s)
const userIDs = [{ name: 'T', email: 't@example.org' }]

type Verdict = { ok: true, fingerprint: string, signingKeyId: string, created: number } | { ok: false, code: string }

const CODES = ['BAD_SIGNATURE', 'KEY_REVOKED', 'KEY_EXPIRED', 'KEY_NOT_VALID']

async function verdict (p: Promise<VerifiedSignature>): Promise<Verdict> {
  try {
    const v = await p
    return { ok: true, fingerprint: v.fingerprint, signingKeyId: v.signingKeyId, created: v.created.getTime() }
  } catch (err) {
    const code = (err as { code?: string }).code ?? String(err)
    expect(CODES).toContain(code)
    return { ok: false, code }
  }
}

/** Both paths on `armored`; asserts they agree and returns the common verdict. */
async function both (data: Uint8Array, armored: string, key: openpgp.PublicKey, dates?: Date | Date[]): Promise<Verdict> {
  const signature = await openpgp.readSignature({ armoredSignature: armored })
  const options = dates === undefined ? {} : { dates: Array.isArray(dates) ? dates : [dates] }
  const fast = await verdict(verifyDetached(data, armored, key, options))
  const reference = await verdict(verifyWithOpenpgp(data, signature, key, options))
  expect(fast).toEqual(reference)
  return fast
}

async function sign (key: openpgp.PrivateKey, data: Uint8Array, extra: Partial<openpgp.SignOptions> = {}): Promise<string> {
  const message = await openpgp.createMessage({ binary: data })
  return await openpgp.sign({ message, signingKeys: key, detached: true, format: 'armored', ...extra } as openpgp.SignOptions & { message: openpgp.Message<Uint8Array>, detached: true, format: 'armored' })
}

/** A detached binary signature made packet by packet, for properties openpgp.sign does not offer. */
async function craft (key: openpgp.PrivateKey, data: Uint8Array, date: Date, props: Record<string, unknown> = {}): Promise<string> {
  const packet = new openpgp.SignaturePacket() as unknown as Record<string, unknown> & { sign: (...a: unknown[]) => Promise<void> }
  Object.assign(packet, { signatureType: openpgp.enums.signature.binary, publicKeyAlgorithm: key.keyPacket.algorithm, hashAlgorithm: openpgp.enums.hash.sha512, ...props })
  const literal = (await openpgp.createMessage({ binary: data })).packets[0]
  await packet.sign(key.keyPacket, literal, date, true, { ...openpgp.config, nonDeterministicSignaturesViaNotation: false })
  const list = new openpgp.PacketList<openpgp.SignaturePacket>()
  list.push(packet as unknown as openpgp.SignaturePacket)
  return new openpgp.Signature(list).armor()
}

describe('Ed25519 fast path agrees with openpgp.verify', () => {
  let legacy: openpgp.PrivateKey
  let modern: openpgp.PrivateKey
  let other: openpgp.PrivateKey
  beforeAll(async () => {
    const date = new Date(Date.now() - 86400_000) // so that signatures may be dated in the past
    legacy = (await openpgp.generateKey({ userIDs, type: 'ecc', curve: 'curve25519Legacy', date, format: 'object' })).privateKey
    modern = (await openpgp.generateKey({ userIDs, type: 'curve25519', format: 'object' })).privateKey
    other = (await openpgp.generateKey({ userIDs, type: 'ecc', curve: 'curve25519Legacy', format: 'object' })).privateKey
  })

  it('takes the fast path for legacy EdDSA and for Ed25519 on v4 keys', async () => {
    for (const key of [legacy, modern]) {
      expect(key.keyPacket.version).toBe(4)
      const sig = await sign(key, bytes('x'))
      expect(fastEd25519Eligible(await openpgp.readSignature({ armoredSignature: sig }), key.toPublic())).toBe(true)
      const v = await both(bytes('x'), sig, key.toPublic())
      expect(v).toMatchObject({ ok: true, fingerprint: fingerprintOf(key) })
    }
  })

  it('rejects other data, a flipped signature bit, another key, a date before the key existed', async () => {
    for (const key of [legacy, modern]) {
      const pub = key.toPublic()
      const data = bytes('{"a":1}')
      const sig = await sign(key, data)
      expect((await both(bytes('{"a":2}'), sig, pub)).ok).toBe(false)
      expect(await both(data, sig, other.toPublic())).toEqual({ ok: false, code: 'BAD_SIGNATURE' })
      expect(await both(data, sig, pub, new Date(key.getCreationTime().getTime() - 3600_000))).toEqual({ ok: false, code: 'KEY_NOT_VALID' })
      const s = await openpgp.readSignature({ armoredSignature: sig })
      const params = (s.packets[0] as unknown as { params: Record<string, Uint8Array> }).params
      const field = params.RS ?? params.s
      field[field.length - 1] ^= 1
      expect(await both(data, s.armor(), pub)).toEqual({ ok: false, code: 'BAD_SIGNATURE' })
    }
  })

  it('does not compare the signature\'s time with the dates: a payload is often signed after it was built', async () => {
    const sig = await sign(legacy, bytes('later'))
    // A date an hour before the signature was made, the key valid then: accepted (openpgp.verify would not).
    expect((await both(bytes('later'), sig, legacy.toPublic(), new Date(Date.now() - 3600_000))).ok).toBe(true)
    expect(await openpgpVerifyAt(bytes('later'), sig, legacy.toPublic(), new Date(Date.now() - 3600_000))).toBe(false)
  })

  it('rejects a revoked key, and a key that expired before the dates, whenever it signed', async () => {
    const { privateKey } = await openpgp.generateKey({ userIDs, type: 'ecc', curve: 'curve25519Legacy', format: 'object' })
    const sig = await sign(privateKey, bytes('r'))
    expect((await both(bytes('r'), sig, privateKey.toPublic())).ok).toBe(true)
    const { publicKey: revoked } = await openpgp.revokeKey({ key: privateKey, format: 'object' })
    expect(await both(bytes('r'), sig, revoked)).toEqual({ ok: false, code: 'KEY_REVOKED' })

    const created = new Date('2020-01-01T00:00:00Z')
    const expiring = (await openpgp.generateKey({ userIDs, type: 'ecc', curve: 'curve25519Legacy', keyExpirationTime: 3600, date: created, format: 'object' })).privateKey
    const early = await sign(expiring, bytes('e'), { date: new Date('2020-01-01T00:30:00Z') })
    expect((await both(bytes('e'), early, expiring.toPublic(), new Date('2020-01-01T00:40:00Z'))).ok).toBe(true)
    expect((await both(bytes('e'), await craft(expiring, bytes('e'), new Date('2020-01-01T00:30:00Z')), expiring.toPublic(), new Date('2020-01-01T00:40:00Z'))).ok).toBe(true)
    // Signed while the key was valid, judged after it expired.
    expect(await both(bytes('e'), early, expiring.toPublic(), new Date('2020-01-01T02:00:00Z'))).toEqual({ ok: false, code: 'KEY_EXPIRED' })
    // Made by the key's own secret, but after the key expired (openpgp.sign would refuse).
    const late = await craft(expiring, bytes('e'), new Date('2020-01-01T02:00:00Z'))
    expect(await both(bytes('e'), late, expiring.toPublic(), new Date('2020-01-01T03:00:00Z'))).toEqual({ ok: false, code: 'KEY_EXPIRED' })
    // …and one dated before the key existed: malformed, whatever the dates.
    const before = await craft(expiring, bytes('e'), new Date('2019-12-31T00:00:00Z'))
    expect(await both(bytes('e'), before, expiring.toPublic(), new Date('2020-01-01T00:40:00Z'))).toEqual({ ok: false, code: 'BAD_SIGNATURE' })
  })

  it('honours signature expiry and unknown critical notations', async () => {
    const at = new Date(Date.now() - 120_000)
    const expiring = await craft(legacy, bytes('n'), at, { signatureExpirationTime: 60, signatureNeverExpires: false })
    expect((await both(bytes('n'), expiring, legacy.toPublic(), new Date(at.getTime() + 30_000))).ok).toBe(true)
    expect((await both(bytes('n'), expiring, legacy.toPublic())).ok).toBe(false)

    const notations = [{ name: 'x@example.org', value: bytes('v'), humanReadable: true, critical: true }]
    const critical = await sign(legacy, bytes('n'), { signatureNotations: notations })
    expect((await both(bytes('n'), critical, legacy.toPublic())).ok).toBe(false)
  })

  it('rejects a wildcard issuer key id, which getKeys would match to any key', async () => {
    const sig = await sign(legacy, bytes('w'))
    const s = await openpgp.readSignature({ armoredSignature: sig })
    const packet = s.packets[0] as unknown as { issuerKeyID: openpgp.KeyID }
    const KeyID = packet.issuerKeyID.constructor as unknown as { wildcard: () => openpgp.KeyID }
    packet.issuerKeyID = KeyID.wildcard()
    const fast = await verdict((async () => {
      const { verifyEd25519Packet } = await import('../../keys/ed25519-verify.ts')
      await verifyEd25519Packet(s.packets[0] as openpgp.SignaturePacket, bytes('w'), legacy.toPublic())
      return { fingerprint: '' as Fingerprint, signingKeyId: '', created: new Date() }
    })().catch(err => { throw Object.assign(err as Error, { code: 'BAD_SIGNATURE' }) }))
    expect(fast.ok).toBe(false)
    expect((await verdict(verifyWithOpenpgp(bytes('w'), s, legacy.toPublic()))).ok).toBe(false)
  })

  it('needs every signature in the armor to verify', async () => {
    const message = await openpgp.createMessage({ binary: bytes('t') })
    const two = await openpgp.sign({ message, signingKeys: [legacy, other], detached: true, format: 'armored' })
    expect((await both(bytes('t'), two, legacy.toPublic())).ok).toBe(false)
    // Two signatures by the same key, the second one spoilt: the first must not vouch for it.
    const good = await openpgp.readSignature({ armoredSignature: await sign(legacy, bytes('t')) })
    const bad = await openpgp.readSignature({ armoredSignature: await sign(legacy, bytes('t')) })
    const params = (bad.packets[0] as unknown as { params: { s: Uint8Array } }).params
    params.s[params.s.length - 1] ^= 1
    const list = new openpgp.PacketList<openpgp.SignaturePacket>()
    list.push(...good.packets, ...bad.packets)
    const pair = new openpgp.Signature(list).armor()
    expect(fastEd25519Eligible(await openpgp.readSignature({ armoredSignature: pair }), legacy.toPublic())).toBe(true)
    expect((await both(bytes('t'), pair, legacy.toPublic())).ok).toBe(false)
  })

  it('leaves RSA and text-mode signatures to openpgp.verify', async () => {
    const rsa = (await openpgp.generateKey({ userIDs, type: 'rsa', rsaBits: 2048, format: 'object' })).privateKey
    const sig = await sign(rsa, bytes('r'))
    expect(fastEd25519Eligible(await openpgp.readSignature({ armoredSignature: sig }), rsa.toPublic())).toBe(false)
    expect((await both(bytes('r'), sig, rsa.toPublic())).ok).toBe(true)
    const text = await openpgp.sign({ message: await openpgp.createMessage({ text: 'line\n' }), signingKeys: legacy, detached: true })
    expect(fastEd25519Eligible(await openpgp.readSignature({ armoredSignature: text }), legacy.toPublic())).toBe(false)
    expect((await both(bytes('line\r\n'), text, legacy.toPublic())).ok).toBe(true)
  })
})

/**
 * Security review, issue 12, point 11: a signature's creation time is the signer's to write, so a
 * key is judged at the request's dates (payload `created`, receipt `at`), never at that time. Every
 * case runs both paths (`both`), and shows where openpgp.verify alone was fooled.
 */
describe('key validity at the request\'s dates, whatever the signature\'s own time', () => {
  const data = bytes('{"kind":"vm.create"}')
  const t0 = at('2024-01-01T00:00:00Z')
  const T = at('2024-06-01T00:00:00Z')
  const before = [at('2024-05-31T23:00:00Z'), at('2024-05-31T23:00:05Z')]
  const after = [at('2024-06-02T00:00:00Z'), at('2024-06-02T00:00:05Z')]
  const straddling = [at('2024-05-31T23:59:00Z'), at('2024-06-01T00:01:00Z')]
  let key: openpgp.PrivateKey
  let backdated: string
  beforeAll(async () => {
    key = await makeKey({ date: t0 })
    backdated = await signAt(key, data, at('2024-05-01T00:00:00Z'))
    expect(fastEd25519Eligible(await openpgp.readSignature({ armoredSignature: backdated }), key.toPublic())).toBe(true)
  })

  it('(a) an expired key with a signature backdated to before its expiry is refused after the expiry', async () => {
    const expiring = await makeKey({ date: t0, expiresIn: (T.getTime() - t0.getTime()) / 1000 })
    const sig = await signAt(expiring, data, at('2024-05-01T00:00:00Z'))
    const pub = expiring.toPublic()
    expect(await openpgpVerifyAt(data, sig, pub, after[1])).toBe(true) // the hole
    expect(await both(data, sig, pub, after)).toEqual({ ok: false, code: 'KEY_EXPIRED' })
    expect(await both(data, sig, pub, straddling)).toEqual({ ok: false, code: 'KEY_EXPIRED' })
    expect((await both(data, sig, pub, before)).ok).toBe(true)
  })

  for (const flag of [reason.keyRetired, reason.keySuperseded]) {
    it(`(b) a soft revocation (${flag === reason.keyRetired ? 'retired' : 'superseded'}) at T refuses from T on, not before`, async () => {
      const revoked = await revokeAt(key, T, flag, 'moved on')
      expect(await openpgpVerifyAt(data, backdated, revoked, after[1])).toBe(true) // the hole
      expect(await both(data, backdated, revoked, after)).toEqual({ ok: false, code: 'KEY_REVOKED' })
      expect(await both(data, backdated, revoked, straddling)).toEqual({ ok: false, code: 'KEY_REVOKED' })
      expect((await both(data, backdated, revoked, before)).ok).toBe(true)
      // A signature made after T but judged at dates before it: the dates decide, and they pass.
      const sigAfter = await craft(key, data, at('2024-07-01T00:00:00Z'))
      expect((await both(data, sigAfter, revoked, before)).ok).toBe(true)
      expect(await both(data, sigAfter, revoked, after)).toEqual({ ok: false, code: 'KEY_REVOKED' })
    })
  }

  for (const [name, flag] of [['key compromised', reason.keyCompromised], ['no reason', reason.noReason]] as const) {
    it(`(c) a hard revocation (${name}) refuses at every date, even before it was made`, async () => {
      const revoked = await revokeAt(key, T, flag)
      for (const dates of [before, after, straddling, [at('2024-02-01T00:00:00Z')]]) {
        expect(await both(data, backdated, revoked, dates)).toEqual({ ok: false, code: 'KEY_REVOKED' })
      }
    })
  }

  it('judges a signing subkey the same way, and a later date never taints an earlier one', async () => {
    const withSub = await makeKey({ date: t0, signingSubkey: true })
    const sig = await signAt(withSub, data, at('2024-05-01T00:00:00Z'))
    const subRevoked = await revokeSubkeyAt(withSub, T, reason.keySuperseded)
    const signature = await openpgp.readSignature({ armoredSignature: sig })
    expect(fastEd25519Eligible(signature, subRevoked)).toBe(true)
    expect(fingerprintOf(subRevoked).endsWith((await both(data, sig, subRevoked, before) as { signingKeyId: string }).signingKeyId)).toBe(false)
    expect(await both(data, sig, subRevoked, after)).toEqual({ ok: false, code: 'KEY_REVOKED' })
    // openpgp.js marks a binding revoked once and keeps the mark; judged after T, then before T,
    // the same key object must still pass before T (verdicts must not depend on judging order).
    expect((await both(data, sig, subRevoked, before)).ok).toBe(true)
    const hard = await revokeSubkeyAt(withSub, T, reason.keyCompromised)
    expect(await both(data, sig, hard, before)).toEqual({ ok: false, code: 'KEY_REVOKED' })
  })

  it('refuses a signature with a date of the key\'s life it did not exist at, and an expired signature', async () => {
    // The dates are before the key was made: no self-signature yet.
    expect(await both(data, backdated, key.toPublic(), [at('2023-12-31T00:00:00Z'), before[1]])).toEqual({ ok: false, code: 'KEY_NOT_VALID' })
    const short = await craft(key, data, at('2024-05-01T00:00:00Z'), { signatureExpirationTime: 60, signatureNeverExpires: false })
    expect((await both(data, short, key.toPublic(), [at('2024-05-01T00:00:30Z')])).ok).toBe(true)
    expect(await both(data, short, key.toPublic(), [at('2024-05-01T00:00:30Z'), at('2024-05-01T00:01:00Z')])).toEqual({ ok: false, code: 'BAD_SIGNATURE' })
  })

  it('refuses a standalone signature, which covers no data at all', async () => {
    const packet = new openpgp.SignaturePacket() as unknown as Record<string, unknown> & { sign: (...a: unknown[]) => Promise<void> }
    Object.assign(packet, { signatureType: openpgp.enums.signature.standalone, publicKeyAlgorithm: key.keyPacket.algorithm, hashAlgorithm: openpgp.enums.hash.sha512 })
    await packet.sign(key.keyPacket, {}, at('2024-05-01T00:00:00Z'), true, openpgp.config)
    const list = new openpgp.PacketList<openpgp.SignaturePacket>()
    list.push(packet as unknown as openpgp.SignaturePacket)
    const armored = new openpgp.Signature(list).armor()
    // openpgp.js's SignaturePacket.verify alone would accept it over any bytes.
    const literal = (await openpgp.createMessage({ binary: data })).packets[0]
    await expect((list[0] as unknown as { verify: (...a: unknown[]) => Promise<void> }).verify(key.keyPacket, openpgp.enums.signature.standalone, literal, null, true, openpgp.config)).resolves.toBeUndefined()
    expect(await both(data, armored, key.toPublic(), before)).toEqual({ ok: false, code: 'BAD_SIGNATURE' })
  })

  it('RSA keys (openpgp.js path only) get the same verdicts', async () => {
    const rsa = await makeKey({ date: t0, type: 'rsa' })
    const sig = await signAt(rsa, data, at('2024-05-01T00:00:00Z'))
    expect(fastEd25519Eligible(await openpgp.readSignature({ armoredSignature: sig }), rsa.toPublic())).toBe(false)
    const soft = await revokeAt(rsa, T, reason.keyRetired)
    expect((await both(data, sig, soft, before)).ok).toBe(true)
    expect(await both(data, sig, soft, after)).toEqual({ ok: false, code: 'KEY_REVOKED' })
    expect(await both(data, sig, await revokeAt(rsa, T, reason.keyCompromised), before)).toEqual({ ok: false, code: 'KEY_REVOKED' })
  }, 30_000)
})
