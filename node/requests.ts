/**
 * Signed requests on this host: accepting them from the local socket (full validation against this
 * host's clock, then stored in the replicated state) and verifying, independently, every request
 * any host stored (signature by a key some host published, mesh, time window against the
 * receiving host's stamp, schema). Results are cached; the world is derived from them.
 */
import { ImmutableString } from '@automerge/automerge'
import type * as openpgp from 'openpgp'
import { validateEnvelope, type Envelope } from '../protocol/envelope.ts'
import { parseKeys, fingerprintOf, keyVerifier } from '../keys/keyring.ts'
import type { Fingerprint } from '../keys/fingerprint.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { StateStore } from '../crdt/store.ts'
import type { Validity, VerifiedRequest } from '../crdt/world.ts'
import type { Logger } from './log.ts'

const str = (v: unknown): string => v instanceof ImmutableString ? v.toString() : String(v)

export class RequestBook {
  private readonly store: StateStore
  private readonly log: Logger
  private readonly validity = new Map<string, Validity>()
  private readonly keyCache = new Map<string, openpgp.PublicKey>()
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

  /** Public keys published by any host, parsed once per armored text. */
  private async lookup (fpr: Fingerprint): Promise<openpgp.PublicKey | undefined> {
    for (const rec of Object.values(this.store.doc.hosts ?? {})) {
      const armored = rec.keys?.[fpr]
      if (armored === undefined) continue
      const text = str(armored)
      let key = this.keyCache.get(text)
      if (key === undefined) {
        try {
          const parsed = (await parseKeys(text))[0]
          key = parsed.toPublic()
          this.keyCache.set(text, key)
        } catch { continue }
      }
      if (fingerprintOf(key) === fpr) return key
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
            const request: VerifiedRequest = {
              id,
              kind: r.payload.kind,
              issuer: r.payload.issuer,
              created: Date.parse(r.payload.created),
              expires: Date.parse(r.payload.expires),
              body: r.payload.body,
              via: str(stored.via),
              at: str(stored.at)
            }
            v = { ok: true, request }
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
    let valid
    try {
      valid = await validateEnvelope(envelope, {
        meshId,
        now: Date.now(),
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
    const at = new Date().toISOString()
    await this.store.change(`request ${valid.payload.kind} ${valid.id}`, d => {
      d.requests ??= {}
      d.requests[valid.id] = {
        payload: new ImmutableString(env.payload) as unknown as string,
        signature: new ImmutableString(env.signature) as unknown as string,
        via: this.store.self,
        at
      }
    })
    this.log.info('accepted request', { id: valid.id.slice(0, 12), kind: valid.payload.kind, issuer: valid.payload.issuer })
    void this.verifyPending()
    return { id: valid.id, kind: valid.payload.kind, issuer: valid.payload.issuer }
  }
}
