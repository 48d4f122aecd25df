/**
 * Signed requests on this host: accepting them from the local socket (full validation against this
 * host's clock, then stored in the replicated state) and verifying, independently, every request
 * any host stored (signature by a key some host published, mesh, time window against the
 * receiving host's stamp, schema). Results are cached; the world is derived from them.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { writeFileAtomic } from './files.ts'
import { join } from 'node:path'
import type * as openpgp from 'openpgp'
import { validateEnvelope, type Envelope, type ValidRequest } from '../protocol/envelope.ts'
import { parseKeys, fingerprintOf, keyVerifier } from '../keys/keyring.ts'
import type { Fingerprint } from '../keys/fingerprint.ts'
import { PicocloudError, ErrorCode } from '../protocol/errors.ts'
import type { StateStore } from '../crdt/store.ts'
import { asString as str, scalars } from '../crdt/schema.ts'
import type { Validity, VerifiedRequest } from '../crdt/world.ts'
import type { Logger } from './log.ts'

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')

/**
 * Verdicts that passed, kept across restarts in the state dir so that a restarted host does not
 * verify every stored request's OpenPGP signature again. A verdict is reused only for the very
 * same stored request (mesh, payload, signature, via, at: `digest`) when the key that lookup()
 * finds for its issuer now is the very text that verified it (`key`); a host publishing another
 * key text, or none, makes the request be judged again. Failures are not kept (they are rare
 * and some are retried anyway). A cache: missing, damaged or of another version, it is ignored.
 */
export const VERDICTS_FILE = 'request-verdicts.json'
const VERDICTS_VERSION = 2
/** New verdicts are written at most this often (each write is the whole file). */
const VERDICTS_SAVE_MS = 5000
interface KeptVerdict { digest: string, key: string, request: VerifiedRequest }

function storedDigest (meshId: string, stored: { payload: string, signature: string, via: string, at: string }): string {
  return sha256(JSON.stringify([meshId, stored.payload, stored.signature, stored.via, stored.at]))
}

/** Verdicts are per copy: the same request stored by two hosts is judged at each one's stamp. */
const copyKey = (id: string, via: string): string => `${id}/${via}`

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
  /** `host/fingerprint` → the text that host publishes, its digest and its key (undefined: unusable). */
  private readonly keyCache = new Map<string, { text: string, digest: string, key: openpgp.PublicKey | undefined }>()
  /** Verdicts kept by an earlier run (loaded on first use), and what binds this run's own. */
  private kept: Map<string, KeptVerdict> | undefined
  private readonly bindings = new Map<string, KeptVerdict>()
  private saveTimer: NodeJS.Timeout | undefined
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

  get (id: string, via: string): Validity | undefined { return this.validity.get(copyKey(id, via)) }

  /**
   * Public keys published by any host: the first host record holding a usable key for `fpr`, as
   * before. Each published text is parsed once (failures too, so a bad key published by one host is
   * not re-parsed for every request); an entry is replaced when that host publishes another text.
   */
  private async lookup (fpr: Fingerprint): Promise<{ digest: string, key: openpgp.PublicKey } | undefined> {
    for (const [host, rec] of Object.entries(this.store.doc.hosts ?? {})) {
      const armored = rec.keys?.[fpr]
      if (armored === undefined) continue
      const text = str(armored)
      const slot = `${host}/${fpr}`
      let cached = this.keyCache.get(slot)
      if (cached?.text !== text) {
        cached = { text, digest: sha256(text), key: await parsePublished(text, fpr) }
        this.keyCache.set(slot, cached)
      }
      if (cached.key !== undefined) return { digest: cached.digest, key: cached.key }
    }
    return undefined
  }

  /** A verifier, and the digest of the key text it last verified with. */
  private verifier (): { verify: ReturnType<typeof keyVerifier>, keyUsed: () => string | undefined } {
    let used: string | undefined
    const verify = keyVerifier(async fpr => {
      const found = await this.lookup(fpr)
      used = found?.digest
      return found?.key
    })
    return { verify, keyUsed: () => used }
  }

  /** The kept verdict on this stored request, if it and its issuer's key are unchanged. */
  private async reuse (key: string, meshId: string, stored: Parameters<typeof storedDigest>[1]): Promise<Validity | undefined> {
    const k = this.kept?.get(key)
    if (k === undefined || k.digest !== storedDigest(meshId, stored)) return undefined
    if ((await this.lookup(k.request.issuer as Fingerprint))?.digest !== k.key) return undefined
    this.bindings.set(key, k)
    return { ok: true, request: k.request }
  }

  private bind (key: string, meshId: string, stored: Parameters<typeof storedDigest>[1], keyText: string | undefined, v: Validity): void {
    if (!v.ok || keyText === undefined) return
    this.bindings.set(key, { digest: storedDigest(meshId, stored), key: keyText, request: v.request })
    this.saveTimer ??= setTimeout(() => { void this.saveVerdicts() }, VERDICTS_SAVE_MS).unref()
  }

  private async loadVerdicts (): Promise<Map<string, KeptVerdict>> {
    const path = join(this.store.stateDir, VERDICTS_FILE)
    try {
      const file = JSON.parse(await readFile(path, 'utf8'))
      const body = JSON.stringify(file.verdicts)
      if (file.v !== VERDICTS_VERSION || file.sum !== sha256(body)) throw new Error('damaged or of another version')
      return new Map(Object.entries(file.verdicts as Record<string, KeptVerdict>))
    } catch (err: any) {
      if (err.code !== 'ENOENT') this.log.warn('ignoring the kept request verdicts; judging every request again', { reason: err.message })
      return new Map()
    }
  }

  /** Writes this run's verdicts (called on a timer after new ones; by tests and the bench). */
  async saveVerdicts (): Promise<void> {
    clearTimeout(this.saveTimer)
    this.saveTimer = undefined
    const verdicts = Object.fromEntries(this.bindings)
    const body = JSON.stringify(verdicts)
    const path = join(this.store.stateDir, VERDICTS_FILE)
    try {
      await writeFileAtomic(path, JSON.stringify({ v: VERDICTS_VERSION, sum: sha256(body), verdicts }))
    } catch (err: any) {
      this.log.warn('could not keep the request verdicts', { error: err.message })
    }
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
        this.kept ??= await this.loadVerdicts()
        for (const [id, copies] of this.store.doc.requests) {
          for (const stored of copies) {
            const key = copyKey(id, stored.via)
            const known = this.validity.get(key)
            // Unknown issuers are retried: a host may publish the key later.
            if (known !== undefined && (known.ok || known.code !== ErrorCode.UnknownIssuer)) continue
            const reused = known === undefined ? await this.reuse(key, meshId, stored) : undefined
            if (reused !== undefined) {
              this.validity.set(key, reused)
              changed = true
              continue
            }
            // Judged at the stamp of the host that received it, never at this host's clock: every
            // host, also one that gets the request hours later by sync, reaches the same verdict.
            const at = Date.parse(stored.at)
            const { verify, keyUsed } = this.verifier()
            let v: Validity
            try {
              const r = await validateEnvelope({ payload: stored.payload, signature: stored.signature }, {
                meshId, now: at, seen: () => false, verify
              })
              v = { ok: true, request: verified(r, stored.via, stored.at) }
              this.bind(key, meshId, stored, keyUsed(), v)
            } catch (err: any) {
              v = { ok: false, code: err.code ?? 'INVALID', reason: err.message }
              this.log.warn('stored request is invalid', { id: id.slice(0, 12), via: stored.via, reason: err.message })
            }
            if (known === undefined || known.ok !== v.ok || (!known.ok && !v.ok && known.code !== v.code)) changed = true
            this.validity.set(key, v)
          }
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
    const { verify, keyUsed } = this.verifier()
    try {
      valid = await validateEnvelope(envelope, {
        meshId,
        now,
        seen: id => this.store.doc.requests.has(id),
        verify
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
    const verdict: Validity = { ok: true, request: verified(valid, this.store.self, at) }
    const key = copyKey(id, this.store.self)
    this.validity.set(key, verdict)
    try {
      await this.store.change(`request ${valid.payload.kind} ${id}`, d => {
        d.requests ??= {}
        // Scalars: as text they were ~75 ops per request, more than the rest of it.
        d.requests[id] = scalars({ payload: env.payload, signature: env.signature, at })
      })
    } catch (err) {
      if (!this.store.doc.requests.has(id)) this.validity.delete(key)
      throw err
    }
    this.bind(key, meshId, { payload: env.payload, signature: env.signature, via: this.store.self, at }, keyUsed(), verdict)
    this.log.info('accepted request', { id: id.slice(0, 12), kind: valid.payload.kind, issuer: valid.payload.issuer })
    void this.verifyPending()
    return { id, kind: valid.payload.kind, issuer: valid.payload.issuer }
  }
}
