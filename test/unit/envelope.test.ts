import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import {
  buildPayload, sealEnvelope, validateEnvelope, requestId, parseIsoUtc, isKind, type Envelope, type ValidateOptions, type Verify
} from '../../protocol/envelope.ts'
import { canonicalize } from '../../protocol/canonical-json.ts'
import { generateKey, loadPrivateKey, signDetached, keyringVerifier } from '../../keys/keyring.ts'
import { PicocloudError } from '../../protocol/errors.ts'
import type { Fingerprint } from '../../protocol/fingerprint.ts'

const MESH = 'mesh-test'
const ISSUER = 'A'.repeat(40) as Fingerprint
const OTHER = 'B'.repeat(40) as Fingerprint
const NOW = Date.parse('2025-05-01T12:00:00.000Z')
const NONCE = 'nonce-0123456789abcdef'

/**
 * A stand-in for OpenPGP in the ordering tests: the "signature" is `sig:<issuer>:<sha256 of bytes>`,
 * so it binds the exact bytes and the signer, like the real thing, at no cost.
 */
const fakeSign = (issuer: string) => async (data: Uint8Array): Promise<string> =>
  `sig:${issuer}:${createHash('sha256').update(data).digest('hex')}`
const fakeVerify: Verify = async (data, sig, issuer) => {
  const [tag, who, hash] = sig.split(':')
  if (tag !== 'sig' || hash !== createHash('sha256').update(data).digest('hex')) {
    throw new PicocloudError('BAD_SIGNATURE', 'signature does not verify')
  }
  if (who === 'unknown') throw new PicocloudError('UNKNOWN_ISSUER', `no key for ${issuer}`)
  return { fingerprint: who }
}

function opts (over: Partial<ValidateOptions> = {}): ValidateOptions {
  return { meshId: MESH, now: NOW, seen: () => false, verify: fakeVerify, ...over }
}

async function envelopeFor (payloadObject: Record<string, unknown>, signer: string = ISSUER): Promise<Envelope> {
  return await sealEnvelope(canonicalize(payloadObject), fakeSign(signer))
}

const baseObject = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  v: 1,
  kind: 'vm.start',
  mesh: MESH,
  issuer: ISSUER,
  created: '2025-05-01T12:00:00.000Z',
  expires: '2025-05-01T12:10:00.000Z',
  nonce: NONCE,
  body: { vm: 'web' },
  ...over
})

async function codeOf (p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p
  } catch (err) {
    return err instanceof PicocloudError ? err.code : `not a PicocloudError: ${String(err)}`
  }
  return undefined
}

describe('buildPayload', () => {
  it('writes canonical JSON with the header fields and the body as given', () => {
    const payload = buildPayload('vm.start', { vm: 'web' }, { mesh: MESH, issuer: ISSUER, now: NOW, lifetimeMs: 600_000, nonce: NONCE })
    expect(payload).toBe(canonicalize(baseObject()))
    expect(requestId(payload)).toBe(createHash('sha256').update(payload).digest('hex'))
  })
  it('picks a fresh random nonce by default', () => {
    const a = buildPayload('vm.start', { vm: 'web' }, { mesh: MESH, issuer: ISSUER, now: NOW })
    const b = buildPayload('vm.start', { vm: 'web' }, { mesh: MESH, issuer: ISSUER, now: NOW })
    expect(requestId(a)).not.toBe(requestId(b))
  })
  it('refuses a bad body, a long lifetime or a bad issuer before anything is signed', () => {
    const o = { mesh: MESH, issuer: ISSUER, now: NOW }
    expect(() => buildPayload('vm.start', { vm: 'web', xml: '<domain/>' }, o)).toThrow(/body\.xml: unknown field/)
    expect(() => buildPayload('vm.start', { vm: 'web' }, { ...o, lifetimeMs: 3_600_001 })).toThrow(PicocloudError)
    expect(() => buildPayload('vm.start', { vm: 'web' }, { ...o, issuer: 'abc' })).toThrow(/fingerprint/)
  })
})

describe('validateEnvelope', () => {
  it('accepts a good request and returns id, typed payload and signer', async () => {
    const env = await envelopeFor(baseObject({ kind: 'vm.create', body: { name: 'web', image: 'debian-12', type: 'small' } }))
    const r = await validateEnvelope(env, opts())
    expect(r.id).toBe(requestId(env.payload))
    expect(r.signer.fingerprint).toBe(ISSUER)
    expect(r.payload.kind).toBe('vm.create')
    expect(r.payload.body).toMatchObject({ name: 'web', arch: 'x86_64', restart: 'always', nics: [] })
    expect(isKind(r, 'vm.start')).toBe(false)
    if (!isKind(r, 'vm.create')) throw new Error('expected vm.create')
    expect(r.payload.body.image).toBe('debian-12') // typed as VmCreateBody
    expect(r.envelope.payload).toBe(env.payload) // the bytes as received are kept, not re-serialised
  })

  it.each([
    ['not an object', 'hello'],
    ['missing signature', { payload: '{}' }],
    ['extra field', { payload: '{}', signature: 's', note: 1 }],
    ['payload as an object', { payload: {}, signature: 's' }],
    ['huge payload', { payload: 'x'.repeat(70_000), signature: 's' }]
  ])('shape: %s → BAD_ENVELOPE', async (_n, env) => {
    expect(await codeOf(validateEnvelope(env, opts()))).toBe('BAD_ENVELOPE')
  })

  it('rejects a payload that is not canonical, before looking at the signature', async () => {
    const text = JSON.stringify(baseObject(), null, 1) // valid JSON, valid signature, wrong bytes
    const env = { payload: text, signature: await fakeSign(ISSUER)(new TextEncoder().encode(text)) }
    expect(await codeOf(validateEnvelope(env, opts()))).toBe('NOT_CANONICAL')
    expect(await codeOf(validateEnvelope({ payload: '{', signature: 's' }, opts()))).toBe('BAD_JSON')
  })

  it.each([
    ['unknown field', { extra: 1 }],
    ['wrong version', { v: 2 }],
    ['unknown kind', { kind: 'vm.explode' }],
    ['lower-case issuer', { issuer: 'a'.repeat(40) }],
    ['short nonce', { nonce: 'abc' }],
    ['local time', { created: '2025-05-01T14:00:00+02:00' }],
    ['impossible date', { created: '2025-02-30T12:00:00Z' }],
    ['expires before created', { expires: '2025-05-01T11:59:00.000Z' }]
  ])('header: %s → BAD_ENVELOPE', async (_n, over) => {
    expect(await codeOf(validateEnvelope(await envelopeFor(baseObject(over)), opts()))).toBe('BAD_ENVELOPE')
  })

  it('rejects a missing header field', async () => {
    const o = baseObject()
    delete o.nonce
    expect(await codeOf(validateEnvelope(await envelopeFor(o), opts()))).toBe('BAD_ENVELOPE')
  })

  it('checks the signature over the bytes received, by the issuer', async () => {
    const env = await envelopeFor(baseObject())
    const tampered = { ...env, payload: env.payload.replace('"web"', '"www"') }
    expect(await codeOf(validateEnvelope(tampered, opts()))).toBe('BAD_SIGNATURE')
    expect(await codeOf(validateEnvelope(await envelopeFor(baseObject(), OTHER), opts()))).toBe('BAD_SIGNATURE')
    expect(await codeOf(validateEnvelope(await envelopeFor(baseObject(), 'unknown'), opts()))).toBe('UNKNOWN_ISSUER')
  })

  it('checks, in order: signature, mesh, future, expiry, lifetime, replay, body', async () => {
    // Each envelope below fails exactly one check *and* every check after it; the first one wins.
    const badBody = { body: { vm: 'web', qemuArgs: ['-hda', '/etc/shadow'] } }
    const cases: Array<[string, Record<string, unknown>, Partial<ValidateOptions>, string]> = [
      ['wrong mesh', { mesh: 'other-mesh', ...badBody }, { seen: () => true }, 'WRONG_MESH'],
      ['created 3 min ahead', { created: '2025-05-01T12:03:00.000Z', expires: '2025-05-01T14:00:00.000Z', ...badBody }, { seen: () => true }, 'CREATED_IN_FUTURE'],
      ['expired', { created: '2025-05-01T09:00:00.000Z', expires: '2025-05-01T12:00:00.000Z', ...badBody }, { seen: () => true }, 'REQUEST_EXPIRED'],
      ['lifetime 61 min', { created: '2025-05-01T11:00:00.000Z', expires: '2025-05-01T12:01:00.000Z', ...badBody }, { seen: () => true }, 'LIFETIME_TOO_LONG'],
      ['replay', badBody, { seen: () => true }, 'REPLAYED_REQUEST'],
      ['body', badBody, {}, 'BAD_BODY']
    ]
    for (const [name, over, o, code] of cases) {
      expect(await codeOf(validateEnvelope(await envelopeFor(baseObject(over)), opts(o))), name).toBe(code)
      // and the signature check comes before all of them
      const env = await envelopeFor(baseObject(over), OTHER)
      expect(await codeOf(validateEnvelope(env, opts(o))), `${name}, wrong signer`).toBe('BAD_SIGNATURE')
    }
  })

  it('allows up to 2 minutes of clock skew and exactly 1 hour of lifetime', async () => {
    const env = await envelopeFor(baseObject({ created: '2025-05-01T12:02:00.000Z', expires: '2025-05-01T13:02:00.000Z' }))
    expect((await validateEnvelope(env, opts())).payload.kind).toBe('vm.start')
    // expiry is exclusive: at the expiry instant the request is dead
    const e2 = await envelopeFor(baseObject())
    expect(await codeOf(validateEnvelope(e2, opts({ now: Date.parse('2025-05-01T12:10:00.000Z') })))).toBe('REQUEST_EXPIRED')
    expect(await codeOf(validateEnvelope(e2, opts({ now: Date.parse('2025-05-01T12:09:59.999Z') })))).toBeUndefined()
  })

  it('asks the replay check with the request id', async () => {
    const env = await envelopeFor(baseObject())
    const asked: string[] = []
    await validateEnvelope(env, opts({ seen: async id => { asked.push(id); return false } }))
    expect(asked).toEqual([requestId(env.payload)])
  })

  it('reports the field path of a bad body', async () => {
    const env = await envelopeFor(baseObject({ kind: 'vm.create', body: { name: 'web', image: 'x', type: 'small', nics: [{ net: 'LAN' }] } }))
    await expect(validateEnvelope(env, opts())).rejects.toThrow(/body\.nics\[0\]\.net/)
  })
})

describe('parseIsoUtc', () => {
  it('accepts UTC with or without milliseconds and nothing else', () => {
    expect(parseIsoUtc('2025-05-01T12:00:00Z')).toBe(NOW)
    expect(parseIsoUtc('2025-05-01T12:00:00.000Z')).toBe(NOW)
    for (const s of ['2025-05-01', '2025-05-01T12:00:00', '2025-05-01T12:00:00+00:00', '2025-13-01T00:00:00Z', '2025-05-01T24:00:00Z', ' 2025-05-01T12:00:00Z']) {
      expect(parseIsoUtc(s), s).toBeUndefined()
    }
  })
})

describe('validateEnvelope with real OpenPGP keys', () => {
  let dir: string
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'pc-envelope-')) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  it('accepts a request signed by a keyring key and rejects it under another issuer', async () => {
    const alice = await generateKey(dir, { userIds: ['Alice <alice@example.org>'] })
    const bob = await generateKey(dir, { userIds: ['Bob <bob@example.org>'] })
    const now = Date.now()
    const key = await loadPrivateKey(dir, alice.fingerprint)
    const payload = buildPayload('net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24' }, mode: 'dhcp' },
      { mesh: MESH, issuer: alice.fingerprint, now })
    const env = await sealEnvelope(payload, async d => await signDetached(key, d))
    const verify = keyringVerifier(dir)
    const r = await validateEnvelope(env, { meshId: MESH, now, seen: () => false, verify })
    expect(r.payload.body).toEqual({ name: 'lan', subnet: { ipv4: '10.1.0.0/24' }, mode: 'dhcp', gateway: 'host-nat', labels: {} })
    expect(r.signer.fingerprint).toBe(alice.fingerprint)
    // Same signature, payload claiming Bob as issuer: the bytes differ, and Bob did not sign.
    const forged = { payload: payload.replace(alice.fingerprint, bob.fingerprint), signature: env.signature }
    expect(await codeOf(validateEnvelope(forged, { meshId: MESH, now, seen: () => false, verify }))).toBe('BAD_SIGNATURE')
  })
})
