/**
 * The operator's picopeering policy for this host: which OpenPGP keys may run VMs here, and how
 * much. Changed only through the local socket; published in the host's record (with the trusted
 * public keys, so every host can verify those keys' requests and compute placement).
 */
import { mergeOwnKeyText } from '../../keys/published-keys.ts'
import { addEntry, removeEntry, validatePolicy, emptyPolicy, findEntry, type TrustPolicy, type TrustEntry } from '../../keys/trust-policy.ts'
import { parseKeys, fingerprintOf } from '../../keys/keyring.ts'
import { normalizeFingerprint } from '../../protocol/fingerprint.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { StateStore } from '../../crdt/store.ts'
import { asString as str, scalars } from '../../crdt/schema.ts'
import type { TrustBody } from '../../protocol/api.ts'

/** What `trust add` sends (validated at the socket by protocol/api.ts): an armored public key, or a fingerprint the mesh already knows, plus quotas. */
export type TrustAddInput = TrustBody

export interface TrustView extends TrustEntry {
  userIds: string[]
  /** How much of the quota the key uses on this host now. */
  usage?: { vms: number, vcpus: number, memMiB: number, diskGiB: number }
}

function currentPolicy (store: StateStore): TrustPolicy {
  const p = store.doc.hosts?.[store.self]?.policy
  return p === undefined ? emptyPolicy() : validatePolicy(JSON.parse(JSON.stringify(p)))
}


export function publishedKey (store: StateStore, fpr: string): string | undefined {
  for (const rec of Object.values(store.doc.hosts ?? {})) {
    const k = rec.keys?.[fpr]
    if (k !== undefined) return str(k)
  }
  return undefined
}

export async function trustAdd (store: StateStore, input: TrustAddInput): Promise<TrustEntry> {
  if (!store.inMesh) throw new PicocloudError(ErrorCode.NotInMesh, 'this host is not in a mesh yet: run `picocloud init` or `picocloud join` first', 409)
  let fpr: string
  let armored: string | undefined
  if (input.publicKey !== undefined) {
    const keys = await parseKeys(input.publicKey)
    if (keys.length !== 1) throw new PicocloudError(ErrorCode.BadKey, `the key file holds ${keys.length} keys; give one key per \`trust add\``)
    const key = keys[0].toPublic()
    fpr = fingerprintOf(key)
    if (input.fingerprint !== undefined && normalizeFingerprint(input.fingerprint) !== fpr) {
      throw new PicocloudError(ErrorCode.BadFingerprint, `the key given is ${fpr}, not ${input.fingerprint}`)
    }
    // Merged with what this host publishes already: an updated key (a revocation imported since)
    // replaces the old text, and nothing once published (a revocation) is ever dropped.
    const merged = await mergeOwnKeyText(store.doc.hosts?.[store.self]?.keys?.[fpr], key.armor())
    if (merged.changed) armored = merged.armored
  } else if (input.fingerprint !== undefined) {
    fpr = normalizeFingerprint(input.fingerprint)
    if (publishedKey(store, fpr) === undefined) {
      throw new PicocloudError(ErrorCode.KeyNotFound, `no public key for ${fpr} is known in this mesh; give the key file: \`picocloud trust add KEYFILE\` (from \`gpg --armor --export\` or \`picocloud key export\`)`, 404)
    }
  } else {
    throw new PicocloudError(ErrorCode.BadRequest, 'give a public key file or a fingerprint')
  }
  const { publicKey: _pk, fingerprint: _f, ...quotas } = input
  const next = addEntry(currentPolicy(store), { fingerprint: fpr, ...quotas })
  await store.change(`trust ${fpr}`, d => {
    const rec = d.host
    if (rec === undefined) throw new PicocloudError(ErrorCode.NotInMesh, 'this host has no record yet; try again in a moment', 409)
    // Scalars: read back only through JSON (toJSON), by this daemon and older ones alike.
    rec.policy = scalars(JSON.parse(JSON.stringify(next)))
    rec.keys ??= {}
    if (armored !== undefined) rec.keys[fpr] = scalars(armored)
  })
  return findEntry(next, fpr) as TrustEntry
}

export async function trustRemove (store: StateStore, fingerprint: string): Promise<{ fingerprint: string }> {
  const fpr = normalizeFingerprint(fingerprint)
  const cur = currentPolicy(store)
  if (findEntry(cur, fpr) === undefined) throw new PicocloudError(ErrorCode.NotFound, `${fpr} is not in this host's trust policy (see \`picocloud trust list\`)`, 404)
  const next = removeEntry(cur, fpr)
  // The public key stays published: requests it signed earlier must stay verifiable.
  await store.change(`distrust ${fpr}`, d => { if (d.host !== undefined) d.host.policy = scalars(JSON.parse(JSON.stringify(next))) })
  return { fingerprint: fpr }
}

/**
 * Republishes, for keys this host trusts, the key as merged from every host's text when it holds
 * more than this host's own text (a revocation another host published): a revocation then stays
 * published even if the host that first published it goes away or drops its text.
 */
export async function republishKeys (store: StateStore, fprs: string[], merged: (fpr: string) => Promise<{ key: { armor: () => string } } | undefined>): Promise<number> {
  const trusted = new Set(currentPolicy(store).entries.map(e => e.fingerprint as string))
  const updates = new Map<string, string>()
  for (const fpr of fprs) {
    if (!trusted.has(fpr)) continue
    const m = await merged(fpr)
    if (m === undefined) continue
    try {
      const r = await mergeOwnKeyText(store.doc.hosts?.[store.self]?.keys?.[fpr], m.key.armor())
      if (r.changed) updates.set(fpr, r.armored)
    } catch {}
  }
  if (updates.size === 0) return 0
  await store.change(`republish ${updates.size} merged keys`, d => {
    if (d.host === undefined) return
    d.host.keys ??= {}
    for (const [fpr, text] of updates) d.host.keys[fpr] = scalars(text)
  })
  return updates.size
}

export async function trustList (store: StateStore, usage: (fpr: string) => TrustView['usage']): Promise<TrustView[]> {
  const out: TrustView[] = []
  for (const e of currentPolicy(store).entries) {
    let userIds: string[] = []
    const armored = publishedKey(store, e.fingerprint)
    if (armored !== undefined) {
      try { userIds = (await parseKeys(armored))[0].getUserIDs() } catch {}
    }
    out.push({ ...e, userIds, usage: usage(e.fingerprint) })
  }
  return out
}
