/**
 * Signed request envelopes: `{payload, signature}` where `payload` is the RFC 8785 canonical JSON
 * text of `{v, kind, mesh, issuer, created, expires, nonce, body}` exactly as it was signed, and
 * `signature` an armored detached OpenPGP signature over its UTF-8 bytes (what
 * `gpg --armor --detach-sign payload.json` makes). The request id is the hex sha256 of those bytes.
 *
 * The payload travels as a string, not as an object, so that every host verifies the bytes the
 * issuer signed: re-serialising before verifying is how Secure Scuttlebutt's clones diverged.
 *
 * @example
 * const payload = buildPayload('vm.start', { vm: 'web' }, { mesh, issuer, now: Date.now(), lifetimeMs: 600_000 })
 * const envelope = { payload, signature: await signDetached(key, new TextEncoder().encode(payload)) }
 * const request = await validateEnvelope(envelope, { meshId: mesh, now: Date.now(), seen: id => store.has(id), verify })
 */
import { createHash, randomBytes } from 'node:crypto'
import { PicocloudError, ErrorCode } from './errors.ts'
import { canonicalize, parseCanonical } from './canonical-json.ts'
import { isRequestKind, validateBody, type RequestKind, type RequestBodies } from './requests.ts'
import { isFingerprint, type Fingerprint } from './fingerprint.ts'

/** Hex sha256 of the payload bytes. */
export type RequestId = string & { readonly __requestId: true }

export interface Envelope {
  /** Canonical JSON text, exactly as signed. */
  payload: string
  /** Armored detached OpenPGP signature over the UTF-8 bytes of `payload`. */
  signature: string
}

export interface RequestPayload<K extends RequestKind = RequestKind> {
  v: 1
  kind: K
  mesh: string
  issuer: Fingerprint
  /** ISO-8601 UTC, e.g. 2025-05-01T12:00:00.000Z */
  created: string
  expires: string
  nonce: string
  body: RequestBodies[K]
}

/** A request that passed every check. `payload.body` is the validated body, defaults filled in. */
export interface ValidRequest<K extends RequestKind = RequestKind> {
  id: RequestId
  payload: RequestPayload<K>
  envelope: Envelope
  /** Fingerprint and time reported by the signature check. */
  signer: { fingerprint: string, created?: Date }
}

/** Narrow a validated request to one kind: `if (isKind(r, 'vm.create')) r.payload.body.image`. */
export function isKind<K extends RequestKind> (request: ValidRequest, kind: K): request is ValidRequest<K> {
  return request.payload.kind === kind
}

/** How far a request's `created` may lie ahead of this host's clock. */
export const MAX_CLOCK_SKEW_MS = 2 * 60 * 1000
/** Longest `expires - created`: short lifetimes bound how long a host must remember ids for replay. */
export const MAX_LIFETIME_MS = 60 * 60 * 1000
export const MAX_PAYLOAD_BYTES = 64 * 1024
export const MAX_SIGNATURE_CHARS = 16 * 1024
export const PAYLOAD_VERSION = 1

const PAYLOAD_FIELDS = ['body', 'created', 'expires', 'issuer', 'kind', 'mesh', 'nonce', 'v'] as const
const MESH_ID = /^[A-Za-z0-9._:-]{1,128}$/
const NONCE = /^[A-Za-z0-9_-]{16,128}$/
const ISO_UTC = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,3})?Z$/

/** Hex sha256 of the UTF-8 bytes of `payload`: the request's id everywhere. */
export function requestId (payload: string): RequestId {
  return createHash('sha256').update(payload, 'utf8').digest('hex') as RequestId
}

/** Milliseconds since the epoch for a strict ISO-8601 UTC timestamp, or undefined. */
export function parseIsoUtc (s: string): number | undefined {
  const m = ISO_UTC.exec(s)
  if (m === null) return undefined
  const ms = Date.parse(s)
  if (Number.isNaN(ms)) return undefined
  // Date.parse rolls 2025-02-30 over into March; a signed timestamp must mean what it says.
  const d = new Date(ms)
  if (d.getUTCFullYear() !== Number(m[1]) || d.getUTCMonth() + 1 !== Number(m[2]) || d.getUTCDate() !== Number(m[3]) ||
    d.getUTCHours() !== Number(m[4])) return undefined
  return ms
}

export interface BuildOptions {
  mesh: string
  issuer: string
  /** Milliseconds since the epoch; becomes `created`. */
  now: number
  /** `expires - created`, at most MAX_LIFETIME_MS. @default 10 minutes */
  lifetimeMs?: number
  /** @default 16 random bytes, base64url */
  nonce?: string
}

/**
 * The canonical payload text for a request, ready to sign. The body is validated first (so a bad
 * request fails here, not on every host) but embedded as given: defaults are the validator's
 * business, and the signer signs what they wrote.
 */
export function buildPayload<K extends RequestKind> (kind: K, body: unknown, options: BuildOptions): string {
  validateBody(kind, body)
  const lifetimeMs = options.lifetimeMs ?? 10 * 60 * 1000
  if (!Number.isInteger(lifetimeMs) || lifetimeMs <= 0 || lifetimeMs > MAX_LIFETIME_MS) {
    throw new PicocloudError(ErrorCode.LifetimeTooLong, `lifetime must be 1..${MAX_LIFETIME_MS} ms, got ${lifetimeMs}`)
  }
  if (!isFingerprint(options.issuer)) {
    throw new PicocloudError(ErrorCode.BadFingerprint, `issuer must be a fingerprint (40 upper-case hex digits), got ${JSON.stringify(options.issuer)}`)
  }
  if (!MESH_ID.test(options.mesh)) throw new PicocloudError(ErrorCode.BadEnvelope, `not a mesh id: ${JSON.stringify(options.mesh)}`)
  const nonce = options.nonce ?? randomBytes(16).toString('base64url')
  if (!NONCE.test(nonce)) throw new PicocloudError(ErrorCode.BadEnvelope, 'nonce must be 16..128 characters of A-Z a-z 0-9 _ -')
  return canonicalize({
    v: PAYLOAD_VERSION,
    kind,
    mesh: options.mesh,
    issuer: options.issuer,
    created: new Date(options.now).toISOString(),
    expires: new Date(options.now + lifetimeMs).toISOString(),
    nonce,
    body
  })
}

/** Sign a payload built by `buildPayload` with any detached signer (keys/keyring.ts `signDetached`). */
export async function sealEnvelope (payload: string, sign: (data: Uint8Array) => Promise<string>): Promise<Envelope> {
  return { payload, signature: await sign(new TextEncoder().encode(payload)) }
}

/** Checks a detached signature by `issuer` over `data`; throws UNKNOWN_ISSUER or BAD_SIGNATURE. */
export type Verify = (data: Uint8Array, armoredSignature: string, issuer: Fingerprint) => Promise<{ fingerprint: string, created?: Date }>

export interface ValidateOptions {
  /** The id of the mesh this host belongs to. */
  meshId: string
  /** This host's clock, milliseconds since the epoch. */
  now: number
  /** True when a request with this id has been seen (accepted or acted on) before. */
  seen: (id: RequestId) => boolean | Promise<boolean>
  verify: Verify
}

function reject (code: string, message: string, status = 400): PicocloudError {
  return new PicocloudError(code, message, status)
}

function checkShape (env: unknown): Envelope {
  if (typeof env !== 'object' || env === null || Array.isArray(env)) throw reject(ErrorCode.BadEnvelope, 'envelope must be an object {payload, signature}')
  const keys = Object.keys(env).sort()
  if (keys.length !== 2 || keys[0] !== 'payload' || keys[1] !== 'signature') {
    throw reject(ErrorCode.BadEnvelope, `envelope must have exactly the fields payload and signature, got ${keys.join(', ') || 'none'}`)
  }
  const { payload, signature } = env as Record<string, unknown>
  if (typeof payload !== 'string') throw reject(ErrorCode.BadEnvelope, 'envelope.payload must be the canonical JSON text as signed (a string)')
  if (typeof signature !== 'string') throw reject(ErrorCode.BadEnvelope, 'envelope.signature must be an armored OpenPGP signature (a string)')
  if (Buffer.byteLength(payload, 'utf8') > MAX_PAYLOAD_BYTES) throw reject(ErrorCode.BadEnvelope, `payload exceeds ${MAX_PAYLOAD_BYTES} bytes`, 413)
  if (signature.length > MAX_SIGNATURE_CHARS) throw reject(ErrorCode.BadEnvelope, `signature exceeds ${MAX_SIGNATURE_CHARS} characters`, 413)
  return { payload, signature }
}

interface Header { kind: RequestKind, mesh: string, issuer: Fingerprint, created: number, expires: number, body: unknown }

function checkHeader (value: unknown): Header {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw reject(ErrorCode.BadEnvelope, 'payload must be a JSON object')
  const p = value as Record<string, unknown>
  for (const k of Object.keys(p)) {
    if (!(PAYLOAD_FIELDS as readonly string[]).includes(k)) throw reject(ErrorCode.BadEnvelope, `payload.${k}: unknown field (allowed: ${PAYLOAD_FIELDS.join(', ')})`)
  }
  for (const k of PAYLOAD_FIELDS) {
    if (!Object.hasOwn(p, k)) throw reject(ErrorCode.BadEnvelope, `payload.${k}: required field is missing`)
  }
  if (p.v !== PAYLOAD_VERSION) throw reject(ErrorCode.BadEnvelope, `payload.v: unsupported version ${JSON.stringify(p.v)} (this host speaks ${PAYLOAD_VERSION})`)
  if (!isRequestKind(p.kind)) throw reject(ErrorCode.BadEnvelope, `payload.kind: unknown request kind ${JSON.stringify(p.kind)}`)
  if (typeof p.mesh !== 'string' || !MESH_ID.test(p.mesh)) throw reject(ErrorCode.BadEnvelope, 'payload.mesh: not a mesh id')
  if (!isFingerprint(p.issuer)) throw reject(ErrorCode.BadEnvelope, 'payload.issuer: must be an OpenPGP v4 fingerprint, 40 upper-case hex digits')
  if (typeof p.nonce !== 'string' || !NONCE.test(p.nonce)) throw reject(ErrorCode.BadEnvelope, 'payload.nonce: must be 16..128 characters of A-Z a-z 0-9 _ -')
  const created = typeof p.created === 'string' ? parseIsoUtc(p.created) : undefined
  const expires = typeof p.expires === 'string' ? parseIsoUtc(p.expires) : undefined
  if (created === undefined) throw reject(ErrorCode.BadEnvelope, 'payload.created: must be an ISO-8601 UTC time such as 2025-05-01T12:00:00.000Z')
  if (expires === undefined) throw reject(ErrorCode.BadEnvelope, 'payload.expires: must be an ISO-8601 UTC time such as 2025-05-01T12:10:00.000Z')
  if (expires <= created) throw reject(ErrorCode.BadEnvelope, 'payload.expires must be later than payload.created')
  return { kind: p.kind, mesh: p.mesh, issuer: p.issuer, created, expires, body: p.body }
}

/**
 * The request's time window against `now` (the receiving host's stamp): created at most 2 minutes
 * ahead, not expired, lifetime at most an hour. Throws CREATED_IN_FUTURE / REQUEST_EXPIRED /
 * LIFETIME_TOO_LONG.
 */
export function checkWindow (created: number, expires: number, now: number): void {
  if (created > now + MAX_CLOCK_SKEW_MS) {
    throw reject(ErrorCode.CreatedInFuture,
      `request was created ${Math.round((created - now) / 1000)} s in the future (at most ${MAX_CLOCK_SKEW_MS / 1000} s allowed); check the signer's clock`)
  }
  if (now >= expires) {
    throw reject(ErrorCode.RequestExpired, `request expired at ${new Date(expires).toISOString()}; sign it again`)
  }
  if (expires - created > MAX_LIFETIME_MS) {
    throw reject(ErrorCode.LifetimeTooLong, `request lifetime is ${Math.round((expires - created) / 60000)} min; at most ${MAX_LIFETIME_MS / 60000} min allowed`)
  }
}

/**
 * Check a received envelope, in this order, each failure with its own code:
 * shape (BAD_ENVELOPE) → canonical payload (BAD_JSON / NOT_CANONICAL) → header fields
 * (BAD_ENVELOPE) → signature by the issuer's primary key over the bytes received (UNKNOWN_ISSUER /
 * BAD_SIGNATURE) → mesh (WRONG_MESH) → created at most 2 minutes ahead (CREATED_IN_FUTURE) →
 * not expired (REQUEST_EXPIRED) → lifetime at most 1 hour (LIFETIME_TOO_LONG) → replay
 * (REPLAYED_REQUEST) → body schema (BAD_BODY).
 * The signature comes before everything that depends on content, so that a rejection reason
 * recorded in the state is about a request its issuer really made.
 */
export async function validateEnvelope (env: unknown, options: ValidateOptions): Promise<ValidRequest> {
  const envelope = checkShape(env)
  const parsed = parseCanonical(envelope.payload)
  const header = checkHeader(parsed)

  const signer = await options.verify(new TextEncoder().encode(envelope.payload), envelope.signature, header.issuer)
  if (signer.fingerprint !== header.issuer) {
    throw reject(ErrorCode.BadSignature, `signature is by ${signer.fingerprint}, but the issuer is ${header.issuer}`, 403)
  }

  if (header.mesh !== options.meshId) throw reject(ErrorCode.WrongMesh, `request is for mesh ${header.mesh}, this is mesh ${options.meshId}`)
  checkWindow(header.created, header.expires, options.now)
  const id = requestId(envelope.payload)
  if (await options.seen(id)) throw reject(ErrorCode.Replay, `request ${id} was already received; sign a new one (a fresh nonce) to repeat it`, 409)

  const body = validateBody(header.kind, header.body)
  const payload = { ...(parsed as object), body } as RequestPayload
  return { id, payload, envelope, signer }
}
