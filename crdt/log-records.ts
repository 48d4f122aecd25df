/**
 * What the change log holds: records of one type byte and a body, a signed change (1) or
 * equivocation evidence (2). The log itself (change-log.ts) knows nothing of them.
 */
import * as A from '@automerge/automerge'
import { peerForActor } from '../keys/peer-key.ts'
import { decodeSignedChange, encodeSignedChange, type SignedChange, type VerifiedChange } from './signed-changes.ts'
import type { Logger } from '../node/log.ts'

export const RECORD_CHANGE = 1
export const RECORD_EVIDENCE = 2

export function record (type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 1)
  out[0] = type
  out.set(body, 1)
  return out
}

/** A change as the change log holds it (for tools that write a log directly, e.g. the bench). */
export function logRecordOf (s: SignedChange): Uint8Array {
  return record(RECORD_CHANGE, encodeSignedChange(s))
}

/**
 * The records from `from` on: changes by author (in log order), and evidence. A record that does
 * not read is skipped with a warning (its change comes again from a peer). Changes are not
 * verified again: this host verified each when it first took it.
 */
export function readLogRecords (records: Uint8Array[], from: number, log: Logger): { byAuthor: Map<string, VerifiedChange[]>, evidence: Uint8Array[], replayed: number } {
  const byAuthor = new Map<string, VerifiedChange[]>()
  const evidence: Uint8Array[] = []
  let replayed = 0
  for (let i = from; i < records.length; i++) {
    const r = records[i]
    try {
      if (r[0] === RECORD_EVIDENCE) { evidence.push(r.subarray(1)); continue }
      if (r[0] !== RECORD_CHANGE) throw new Error(`unknown record type ${r[0]}`)
      const s = decodeSignedChange(r.subarray(1))
      const d = A.decodeChange(s.change)
      if (d.hash === undefined) continue
      const author = peerForActor(d.actor).toString()
      const list = byAuthor.get(author) ?? []
      list.push({ ...s, hash: d.hash, actor: d.actor, seq: d.seq, deps: d.deps, author })
      byAuthor.set(author, list)
      replayed++
    } catch (err: any) {
      log.warn('skipping an unreadable record of the change log', { record: i, error: err.message })
    }
  }
  return { byAuthor, evidence, replayed }
}
