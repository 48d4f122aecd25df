/**
 * Requests for state-level tests, with a stand-in for OpenPGP: real payloads (protocol/envelope.ts
 * `buildPayload`, canonical, id = sha256) whose "signature" is the text `ok:<issuer>`, judged by the
 * real `validateEnvelope` at each copy's receipt stamp, as node/control/requests.ts judges stored requests.
 * A copy whose payload was tampered with has another id, and a copy whose signature is anything
 * else is invalid, as with real signatures. What is left out: key validity over time.
 *
 * @example
 * const r = fakeRequest(meshId, ISSUER, 'vm.create', { name: 'web', image: 'tiny', type: 'small' })
 * await store.change('store', storeRequest(r))
 * const validity = await judgeRequests(store.doc)
 * const world = deriveWorld(store.doc, validity)
 */
import { buildPayload, validateEnvelope, requestId } from '../../protocol/envelope.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { RequestKind } from '../../protocol/requests.ts'
import { scalars, type MeshDoc } from '../../crdt/schema.ts'
import type { Validity } from '../../crdt/world.ts'
import type { Fingerprint } from '../../protocol/fingerprint.ts'

export interface FakeRequest { id: string, payload: string, signature: string }

/** A fingerprint-shaped issuer: 40 upper-case hex digits. */
export const issuer = (n: number): string => n.toString(16).toUpperCase().padStart(40, 'A')

export function fakeRequest (mesh: string, by: string, kind: RequestKind, body: unknown, opts: { now?: number, lifetimeMs?: number, nonce?: string } = {}): FakeRequest {
  const payload = buildPayload(kind, body, { mesh, issuer: by, now: opts.now ?? Date.now(), lifetimeMs: opts.lifetimeMs, nonce: opts.nonce })
  return { id: requestId(payload), payload, signature: `ok:${by}` }
}

/** A writer for `StateStore.change`/`forge` that stores `r` with receipt stamp `at`. */
export const storeRequest = (r: FakeRequest, at: string | Date = new Date(), id = r.id) => (d: any): void => {
  d.requests ??= {}
  d.requests[id] = scalars({ payload: r.payload, signature: r.signature, at: typeof at === 'string' ? at : at.toISOString() })
}

async function fakeVerify (_data: Uint8Array, signature: string, by: Fingerprint): Promise<{ fingerprint: string }> {
  if (signature !== `ok:${by}`) throw new PicocloudError(ErrorCode.BadSignature, 'bad (fake) signature', 403)
  return { fingerprint: by }
}

/** Every copy of every stored request judged at its own stamp, as a validity function for `deriveWorld`. */
export async function judgeRequests (doc: MeshDoc): Promise<(id: string, via: string) => Validity | undefined> {
  const out = new Map<string, Validity>()
  for (const [id, copies] of doc.requests ?? new Map()) {
    for (const c of copies) {
      let v: Validity
      try {
        const r = await validateEnvelope({ payload: c.payload, signature: c.signature }, { meshId: doc.mesh.id, now: Date.parse(c.at), seen: () => false, verify: fakeVerify })
        if (r.id !== id) throw new PicocloudError(ErrorCode.BadEnvelope, `stored under ${id} but its id is ${r.id}`)
        v = {
          ok: true,
          request: { id, kind: r.payload.kind, issuer: r.payload.issuer, created: Date.parse(r.payload.created), expires: Date.parse(r.payload.expires), body: r.payload.body, via: c.via, at: c.at }
        }
      } catch (err: any) {
        v = { ok: false, code: err.code ?? 'INVALID', reason: err.message }
      }
      out.set(`${id}/${c.via}`, v)
    }
  }
  return (id, via) => out.get(`${id}/${via}`)
}

/** A trust policy that trusts `issuers` (what a host publishes in its record). */
export const trusting = (...issuers: string[]): { version: number, entries: Array<{ fingerprint: string }> } =>
  ({ version: 1, entries: [...issuers].sort().map(fingerprint => ({ fingerprint })) })

export const RESOURCES = { arch: ['x86_64'], vcpus: 8, memMiB: 16384, diskGiB: 200, labels: {} }
