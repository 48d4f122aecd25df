/**
 * Signed requests on this host: accepting them from the local socket (full validation against this
 * host's clock, then stored in this host's feed) and verifying, independently, every copy any
 * member stored: signature by the issuer's key as merged from every host's published text
 * (keys/published-keys.ts, so a revocation published anywhere wins), the key valid at the payload's
 * `created` and at the receiving host's stamp `at`, mesh, time window against `at`, schema.
 * Nothing is judged against this host's clock, so every host reaches the same verdict, also one
 * that gets the request hours later. Verdicts are cached and judged again when the issuer's merged
 * key changes (a revocation arriving later turns an accepted request into a refused one).
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { writeFileAtomic } from '../files.ts'
import { join } from 'node:path'
import type * as openpgp from 'openpgp'
import { validateEnvelope, checkWindow, parseIsoUtc, type Envelope, type ValidRequest } from '../../protocol/envelope.ts'
import { keyVerifier, requestDates } from '../../keys/keyring.ts'
import { PublishedKeys } from '../../keys/published-keys.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { StateStore } from '../../crdt/store.ts'
import { scalars, type HostRecord } from '../../crdt/schema.ts'
import type { Validity, VerifiedRequest } from '../../crdt/world.ts'
import type { Logger } from '../log.ts'

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')

/**
 * Verdicts that passed, kept across restarts in the state dir so that a restarted host does not
 * verify every stored request's OpenPGP signature again. A verdict is reused only for the very
 * same stored copy (mesh, payload, signature, via, at: `digest`) when the issuer's merged key now
 * is the very one that verified it (`key`, its digest). Failures are not kept (they are rare).
 * A cache: missing, damaged or of another version, it is ignored.
 */
export const VERDICTS_FILE = 'request-verdicts.json'
const VERDICTS_VERSION = 3
/** New verdicts are written at most this often (each write is the whole file). */
const VERDICTS_SAVE_MS = 5000
interface KeptVerdict { digest: string, key: string, request: VerifiedRequest }

function storedDigest (meshId: string, stored: { payload: string, signature: string, via: string, at: string }): string {
  return sha256(JSON.stringify([meshId, stored.payload, stored.signature, stored.via, stored.at]))
}

/** Verdicts are per copy: the same request stored by two hosts is judged at each one's stamp. */
const copyKey = (id: string, via: string): string => `${id}/${via}`

/** The issuer a payload names, read without validating it (to know whose key change matters). */
function issuerOf (payload: string): string | undefined {
  try {
    const i = (JSON.parse(payload) as { issuer?: unknown }).issuer
    return typeof i === 'string' ? i : undefined
  } catch { return undefined }
}

/** Throws the time-window error of a payload received at `at`, if it has one. */
function windowFirst (data: Uint8Array, at: string): void {
  let p: { created?: unknown, expires?: unknown }
  try { p = JSON.parse(new TextDecoder().decode(data)) } catch { return }
  const created = typeof p.created === 'string' ? parseIsoUtc(p.created) : undefined
  const expires = typeof p.expires === 'string' ? parseIsoUtc(p.expires) : undefined
  if (created !== undefined && expires !== undefined) checkWindow(created, expires, Date.parse(at))
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
  private readonly published = new PublishedKeys()
  /** Per copy judged: its issuer, and the digest of the merged key it was judged with. */
  private readonly judgedWith = new Map<string, { issuer: string, key: string | undefined }>()
  /** Per host, the record whose keys were read last (records are new objects when they change). */
  private readonly keysSeen = new Map<string, HostRecord | undefined>()
  /** Merged key digest per fingerprint, as of the last pass. */
  private readonly keyDigests = new Map<string, string | undefined>()
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
  /** Called with the fingerprints whose merged key changed (e.g. to republish a revocation). */
  onKeysChanged: (fprs: string[]) => void = () => {}

  constructor (store: StateStore, log: Logger) {
    this.store = store
    this.log = log
  }

  get (id: string, via: string): Validity | undefined { return this.validity.get(copyKey(id, via)) }

  /**
   * The issuer's public key: the union of what every member publishes for it (a revocation from
   * any one host wins; nobody's older text undoes it). Undefined when none is usable.
   */
  async mergedKey (fpr: string): Promise<{ digest: string, key: openpgp.PublicKey } | undefined> {
    const texts: Array<{ source: string, text: string }> = []
    for (const [host, rec] of Object.entries(this.store.doc.hosts)) {
      const text = rec.keys?.[fpr]
      if (text !== undefined) texts.push({ source: host, text })
    }
    if (texts.length === 0) return undefined
    const m = await this.published.merge(fpr, texts)
    for (const i of m.ignored) this.log.debug('ignoring a published key text', { fingerprint: fpr, host: i.source, reason: i.reason })
    return m.key === undefined || m.digest === undefined ? undefined : { digest: m.digest, key: m.key }
  }

  /** A verifier judging keys at `dates`, and the digest of the merged key it last used. */
  private verifier (at: string): { verify: ReturnType<typeof keyVerifier>, keyUsed: () => string | undefined } {
    let used: string | undefined
    const inner = keyVerifier(async fpr => {
      const found = await this.mergedKey(fpr)
      used = found?.digest
      return found?.key
    }, { dates: requestDates(at) })
    // A key not valid at a request's own times says less than that those times are out of the
    // window (a request backdated two hours, signed with a key made since): that is the reason given.
    const verify: typeof inner = async (data, signature, issuer) => {
      try {
        return await inner(data, signature, issuer)
      } catch (err: any) {
        if (typeof err?.code === 'string' && err.code.startsWith('KEY_')) windowFirst(data, at)
        throw err
      }
    }
    return { verify, keyUsed: () => used }
  }

  /** The kept verdict on this stored copy, if it and its issuer's merged key are unchanged. */
  private async reuse (key: string, meshId: string, stored: Parameters<typeof storedDigest>[1]): Promise<Validity | undefined> {
    const k = this.kept?.get(key)
    if (k === undefined || k.digest !== storedDigest(meshId, stored)) return undefined
    if ((await this.mergedKey(k.request.issuer))?.digest !== k.key) return undefined
    this.bindings.set(key, k)
    this.judgedWith.set(key, { issuer: k.request.issuer, key: k.key })
    return { ok: true, request: k.request }
  }

  /**
   * Fingerprints whose merged key may have changed since the last pass: those published by a host
   * whose record changed (a validated record is a new object exactly when its feed changed).
   */
  private async changedKeys (): Promise<Set<string>> {
    const touched = new Set<string>()
    const hosts = this.store.doc.hosts
    for (const [host, before] of this.keysSeen) {
      if (hosts[host] === before) continue
      for (const f of Object.keys(before?.keys ?? {})) touched.add(f)
    }
    for (const [host, rec] of Object.entries(hosts)) {
      if (this.keysSeen.get(host) === rec) continue
      for (const f of Object.keys(rec.keys ?? {})) touched.add(f)
      this.keysSeen.set(host, rec)
    }
    for (const host of [...this.keysSeen.keys()]) if (hosts[host] === undefined) this.keysSeen.delete(host)
    const changed = new Set<string>()
    for (const f of touched) {
      const digest = (await this.mergedKey(f))?.digest
      if (this.keyDigests.get(f) !== digest) changed.add(f)
      if (digest === undefined) this.keyDigests.delete(f)
      else this.keyDigests.set(f, digest)
    }
    return changed
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

  /**
   * Verifies the copies of requests stored in the state that this host has not judged yet, and
   * judges again those whose issuer's merged key changed since.
   */
  async verifyPending (): Promise<void> {
    if (this.verifying !== undefined) { this.again = true; return await this.verifying }
    this.verifying = (async () => {
      do {
        this.again = false
        let changed = false
        const meshId = this.store.meshId
        if (meshId === undefined) break
        this.kept ??= await this.loadVerdicts()
        const keysChanged = await this.changedKeys()
        if (keysChanged.size > 0) this.onKeysChanged([...keysChanged])
        for (const [id, copies] of this.store.doc.requests) {
          for (const stored of copies) {
            const key = copyKey(id, stored.via)
            const known = this.validity.get(key)
            const judged = this.judgedWith.get(key)
            if (known !== undefined && (judged === undefined || !keysChanged.has(judged.issuer))) continue
            const reused = known === undefined ? await this.reuse(key, meshId, stored) : undefined
            if (reused !== undefined) {
              this.validity.set(key, reused)
              changed = true
              continue
            }
            const { verify, keyUsed } = this.verifier(stored.at)
            let v: Validity
            try {
              const r = await validateEnvelope({ payload: stored.payload, signature: stored.signature }, {
                meshId, now: Date.parse(stored.at), seen: () => false, verify
              })
              v = { ok: true, request: verified(r, stored.via, stored.at) }
              this.bind(key, meshId, stored, keyUsed(), v)
            } catch (err: any) {
              v = { ok: false, code: err.code ?? 'INVALID', reason: err.message }
              this.bindings.delete(key)
              this.log.warn('stored request is invalid', { id: id.slice(0, 12), via: stored.via, reason: err.message })
            }
            const issuer = issuerOf(stored.payload)
            if (issuer !== undefined) this.judgedWith.set(key, { issuer, key: keyUsed() })
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
    const { verify, keyUsed } = this.verifier(at)
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
    this.judgedWith.set(key, { issuer: valid.payload.issuer, key: keyUsed() })
    this.log.info('accepted request', { id: id.slice(0, 12), kind: valid.payload.kind, issuer: valid.payload.issuer })
    void this.verifyPending()
    return { id, kind: valid.payload.kind, issuer: valid.payload.issuer }
  }
}
