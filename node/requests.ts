/**
 * Signed requests on this host: accepting them from the local socket (full validation against this
 * host's clock, then stored in the replicated state) and verifying, independently, every request
 * any host stored (signature by a key some host published, mesh, time window against the
 * receiving host's stamp, schema). Results are cached; the world is derived from them.
 */
import { ImmutableString } from '@automerge/automerge'
import type * as openpgp from 'openpgp'
import { validateEnvelope, type Envelope, type ValidRequest } from '../protocol/envelope.ts'
import { parseKeys, fingerprintOf, keyVerifier } from '../keys/keyring.ts'
import type { Fingerprint } from '../keys/fingerprint.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { StateStore } from '../crdt/store.ts'
import type { Validity, VerifiedRequest } from '../crdt/world.ts'
import type { Logger } from './log.ts'

const str = (v: unknown): string => v instanceof ImmutableString ? v.toString() : String(v)

/** The public key in `text` when it is the key `fpr`, else undefined. */
async function parsePublished (text: string, fpr: Fingerprint): Promise<openpgp.PublicKey | undefined> {
  try {
    const key = (await parseKeys(text))[0].toPublic()
    return fingerprintOf(key) === fpr ? key : undefined
  } catch {
    return undefined
  }
}

/** What the world needs of a request that passed every check. */
function verified (r: ValidRequest, via: string, at: string): VerifiedRequest {
  return {
    id: r.id,
    kind: r.payload.kind,
    issuer: r.payload.issuer,
    created: Date.parse(r.payload.created),
    expires: Date.parse(r.payload.expires),
    body: r.payload.body,
    via,
    at
  }
}

export class RequestBook {
  private readonly store: StateStore
  private readonly log: Logger
  private readonly validity = new Map<string, Validity>()
  /** `host/fingerprint` → the text that host publishes and its key (undefined: unusable). */
  private readonly keyCache = new Map<string, { text: string, key: openpgp.PublicKey | undefined }>()
  private verifying: Promise<void> | undefined
  private again = false
  /** Requests users submitted through this host's socket: accepted, and refused by error code. */
  readonly submitted = { accepted: 0, refused: new Map<string, number>() }
  /** Called after new verdicts are cached. */
  onVerified: () => void = () => {}

  constructor (store: StateStore, log: Logger) {
    this.store = store
    this.log = log
  }

  get (id: string): Validity | undefined { return this.validity.get(id) }

  /**
   * Public keys published by any host: the first host record holding a usable key for `fpr`, as
   * before. Each published text is parsed once (failures too, so a bad key published by one host is
   * not re-parsed for every request); an entry is replaced when that host publishes another text.
   */
  private async lookup (fpr: Fingerprint): Promise<openpgp.PublicKey | undefined> {
    for (const [host, rec] of Object.entries(this.store.doc.hosts ?? {})) {
      const armored = rec.keys?.[fpr]
      if (armored === undefined) continue
      const text = str(armored)
      const slot = `${host}/${fpr}`
      let cached = this.keyCache.get(slot)
      if (cached?.text !== text) {
        cached = { text, key: await parsePublished(text, fpr) }
        this.keyCache.set(slot, cached)
      }
      if (cached.key !== undefined) return cached.key
    }
    return undefined
  }

  private verifier (): ReturnType<typeof keyVerifier> {
    return keyVerifier(async fpr => await this.lookup(fpr))
  }

  /** Verifies requests stored in the state that this host has not judged yet. */
  async verifyPending (): Promise<void> {
    if (this.verifying !== undefined) { this.again = true; return await this.verifying }
    this.verifying = (async () => {
      do {
        this.again = false
        let changed = false
        const meshId = this.store.meshId
        if (meshId === undefined) break
        for (const [id, stored] of Object.entries(this.store.doc.requests ?? {})) {
          const known = this.validity.get(id)
          // Unknown issuers are retried: a host may publish the key later.
          if (known !== undefined && (known.ok || known.code !== ErrorCode.UnknownIssuer)) continue
          const at = Date.parse(str(stored.at))
          let v: Validity
          try {
            const r = await validateEnvelope({ payload: str(stored.payload), signature: str(stored.signature) }, {
              meshId, now: at, seen: () => false, verify: this.verifier()
            })
            v = { ok: true, request: verified(r, str(stored.via), str(stored.at)) }
          } catch (err: any) {
            v = { ok: false, code: err.code ?? 'INVALID', reason: err.message }
            this.log.warn('stored request is invalid', { id: id.slice(0, 12), via: str(stored.via), reason: err.message })
          }
          if (known === undefined || known.ok !== v.ok || (!known.ok && !v.ok && known.code !== v.code)) changed = true
          this.validity.set(id, v)
        }
        if (changed) this.onVerified()
      } while (this.again)
    })()
    try { await this.verifying } finally { this.verifying = undefined }
  }

  /**
   * Accepts a request from a user: every check against this host's clock, then stored (signed and
   * fsynced) in the replicated state. Returns its id. A rejected request changes nothing.
   */
  async submit (envelope: unknown): Promise<{ id: string, kind: string, issuer: string }> {
    try {
      const r = await this.accept(envelope)
      this.submitted.accepted++
      return r
    } catch (err: any) {
      const code = typeof err?.code === 'string' ? err.code : ErrorCode.Internal
      this.submitted.refused.set(code, (this.submitted.refused.get(code) ?? 0) + 1)
      throw err
    }
  }

  private async accept (envelope: unknown): Promise<{ id: string, kind: string, issuer: string }> {
    const meshId = this.store.meshId
    if (meshId === undefined) throw new PicocloudError(ErrorCode.NotInMesh, 'this host is not in a mesh yet', 409)
    // Judged at the time stamped on it, so that this verdict is the one verifyPending would reach.
    const now = Date.now()
    const at = new Date(now).toISOString()
    let valid
    try {
      valid = await validateEnvelope(envelope, {
        meshId,
        now,
        seen: id => this.store.doc.requests?.[id] !== undefined,
        verify: this.verifier()
      })
    } catch (err: any) {
      if (err?.code === ErrorCode.UnknownIssuer) {
        throw new PicocloudError(ErrorCode.UnknownIssuer,
          'no host of this mesh trusts the issuer\'s key (not-trusted on every host): ask a host operator to run `picocloud trust add <your key file>`', 403)
      }
      throw err
    }
    const env = valid.envelope as Envelope
    const id = valid.id
    // Recorded before the change, whose listeners run verifyPending: this host checks it once.
    this.validity.set(id, { ok: true, request: verified(valid, this.store.self, at) })
    try {
      await this.store.change(`request ${valid.payload.kind} ${id}`, d => {
        d.requests ??= {}
        d.requests[id] = {
          payload: new ImmutableString(env.payload) as unknown as string,
          signature: new ImmutableString(env.signature) as unknown as string,
          via: this.store.self,
          at
        }
      })
    } catch (err) {
      if (this.store.doc.requests?.[id] === undefined) this.validity.delete(id)
      throw err
    }
    this.log.info('accepted request', { id: id.slice(0, 12), kind: valid.payload.kind, issuer: valid.payload.issuer })
    void this.verifyPending()
    return { id, kind: valid.payload.kind, issuer: valid.payload.issuer }
  }
}
