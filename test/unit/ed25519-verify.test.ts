/**
 * The Ed25519 fast path (keys/ed25519-verify.ts) must accept exactly what openpgp.verify accepts:
 * each case below runs both on the same signature and compares the verdicts.
 */
import { describe, it, expect, beforeAll } from 'vitest'
import * as openpgp from 'openpgp'
import { verifyDetached, verifyWithOpenpgp, fingerprintOf, type VerifiedSignature } from '../../keys/keyring.ts'
import { fastEd25519Eligible } from '../../keys/ed25519-verify.ts'
import type { Fingerprint } from '../../keys/fingerprint.ts'

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s)
const userIDs = [{ name: 'T', email: 't@example.org' }]

type Verdict = { ok: true, fingerprint: string, signingKeyId: string, created: number } | { ok: false }

async function verdict (p: Promise<VerifiedSignature>): Promise<Verdict> {
  try {
    const v = await p
    return { ok: true, fingerprint: v.fingerprint, signingKeyId: v.signingKeyId, created: v.created.getTime() }
  } catch (err) {
    expect((err as { code?: string }).code).toBe('BAD_SIGNATURE')
    return { ok: false }
  }
}

/** Both paths on `armored`; asserts they agree and returns the common verdict. */
async function both (data: Uint8Array, armored: string, key: openpgp.PublicKey, date?: Date): Promise<Verdict> {
  const signature = await openpgp.readSignature({ armoredSignature: armored })
  const fast = await verdict(verifyDetached(data, armored, key, { date }))
  const reference = await verdict(verifyWithOpenpgp(data, signature, key, { date }))
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

  it('rejects other data, a flipped signature bit, another key, a time before the signature', async () => {
    for (const key of [legacy, modern]) {
      const pub = key.toPublic()
      const data = bytes('{"a":1}')
      const sig = await sign(key, data)
      expect((await both(bytes('{"a":2}'), sig, pub)).ok).toBe(false)
      expect((await both(data, sig, other.toPublic())).ok).toBe(false)
      expect((await both(data, sig, pub, new Date(Date.now() - 3600_000))).ok).toBe(false)
      const s = await openpgp.readSignature({ armoredSignature: sig })
      const params = (s.packets[0] as unknown as { params: Record<string, Uint8Array> }).params
      const field = params.RS ?? params.s
      field[field.length - 1] ^= 1
      expect((await both(data, s.armor(), pub)).ok).toBe(false)
    }
  })

  it('rejects a revoked key, and a signature made after the key expired', async () => {
    const { privateKey } = await openpgp.generateKey({ userIDs, type: 'ecc', curve: 'curve25519Legacy', format: 'object' })
    const sig = await sign(privateKey, bytes('r'))
    expect((await both(bytes('r'), sig, privateKey.toPublic())).ok).toBe(true)
    const { publicKey: revoked } = await openpgp.revokeKey({ key: privateKey, format: 'object' })
    expect((await both(bytes('r'), sig, revoked)).ok).toBe(false)

    const created = new Date('2020-01-01T00:00:00Z')
    const expiring = (await openpgp.generateKey({ userIDs, type: 'ecc', curve: 'curve25519Legacy', keyExpirationTime: 3600, date: created, format: 'object' })).privateKey
    const early = await sign(expiring, bytes('e'), { date: new Date('2020-01-01T00:30:00Z') })
    expect((await both(bytes('e'), early, expiring.toPublic(), new Date('2020-01-01T00:40:00Z'))).ok).toBe(true)
    expect((await both(bytes('e'), await craft(expiring, bytes('e'), new Date('2020-01-01T00:30:00Z')), expiring.toPublic(), new Date('2020-01-01T00:40:00Z'))).ok).toBe(true)
    // Made by the key's own secret, but after the key expired (openpgp.sign would refuse).
    const late = await craft(expiring, bytes('e'), new Date('2020-01-01T02:00:00Z'))
    expect((await both(bytes('e'), late, expiring.toPublic(), new Date('2020-01-01T03:00:00Z'))).ok).toBe(false)
    // …and before the key existed.
    const before = await craft(expiring, bytes('e'), new Date('2019-12-31T00:00:00Z'))
    expect((await both(bytes('e'), before, expiring.toPublic(), new Date('2020-01-01T00:40:00Z'))).ok).toBe(false)
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
      await verifyEd25519Packet(s.packets[0] as openpgp.SignaturePacket, bytes('w'), legacy.toPublic(), new Date())
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
