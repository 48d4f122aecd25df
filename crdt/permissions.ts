/**
 * Write permissions of the mesh document. Pure: given the author, the document as the author saw
 * it (the change's causal past, never the receiver's current state, so every honest host reaches
 * the same verdict) and the paths the change touches, say whether the change is allowed.
 */
import { createHash } from 'node:crypto'
import { isActiveMember, mayAdmit, mayExpel, type MeshDoc } from './schema.ts'

export type Path = ReadonlyArray<string | number>

export interface Verdict {
  ok: boolean
  /** Why a change is refused, naming the first offending path. */
  reason?: string
}

const allow: Verdict = { ok: true }
const deny = (reason: string): Verdict => ({ ok: false, reason })

function show (path: Path): string {
  return path.length === 0 ? '/' : path.join('/')
}

/**
 * The first change of a mesh (no dependencies): the founder creates `mesh`, admits itself and may
 * write its own host record, and nothing else.
 */
export function checkGenesis (author: string, after: Partial<MeshDoc>, paths: Path[]): Verdict {
  if (after.mesh?.founder !== author) return deny('the first change of a mesh must name its author as founder')
  if (!isActiveMember(after, author)) return deny('the founder must admit itself in the first change')
  for (const p of paths) {
    const [top, key] = p
    if (top === 'mesh' || (top === 'requests' && key === undefined)) continue
    if ((top === 'members' || top === 'hosts') && (key === undefined || key === author)) continue
    return deny(`the first change may not write ${show(p)}`)
  }
  return allow
}

/**
 * Any later change. `before` is the document at the change's dependencies, `after` the document
 * with the change applied; `paths` are the paths its patches touch (from Automerge's diff).
 */
export function checkChange (author: string, before: Partial<MeshDoc>, after: Partial<MeshDoc>, paths: Path[]): Verdict {
  if (before.mesh === undefined) return deny('change does not descend from the mesh genesis')
  if (!isActiveMember(before, author)) return deny(`${author} is not an active member of the mesh`)
  const checkedRequests = new Set<string>()
  for (const p of paths) {
    const v = checkPath(author, before, after, p, checkedRequests)
    if (!v.ok) return v
  }
  return allow
}

const REQUEST_FIELDS = ['at', 'payload', 'signature', 'via']

/** A stored request is created once, whole, by the host it names as `via`, under its own hash. */
function checkRequest (author: string, before: Partial<MeshDoc>, after: Partial<MeshDoc>, id: string): Verdict {
  if (before.requests?.[id] !== undefined) return deny(`request ${id} already exists; requests are immutable`)
  const r = after.requests?.[id] as unknown as Record<string, unknown> | undefined
  if (r === undefined) return deny(`request ${id} may not be deleted`)
  const keys = Object.keys(r).sort()
  if (keys.join() !== REQUEST_FIELDS.join()) return deny(`request ${id} must have exactly the fields ${REQUEST_FIELDS.join(', ')}`)
  if (String(r.via) !== author) return deny(`request ${id} names ${String(r.via)} as the host that received it, but was written by ${author}`)
  const hash = createHash('sha256').update(String(r.payload), 'utf8').digest('hex')
  if (hash !== id) return deny(`request stored under ${id} has payload hash ${hash}`)
  return allow
}

function checkPath (author: string, before: Partial<MeshDoc>, after: Partial<MeshDoc>, p: Path, checkedRequests: Set<string>): Verdict {
  const [top, key] = p
  if (p.length < 2) return deny(`may not replace or delete top-level ${show(p)}`)
  switch (top) {
    case 'requests': {
      const id = String(key)
      if (checkedRequests.has(id)) return allow
      checkedRequests.add(id)
      return checkRequest(author, before, after, id)
    }
    case 'hosts':
      return key === author ? allow : deny(`${author} may not write ${show(p)}: a host writes only its own record`)
    case 'members': {
      const target = String(key)
      if (before.members?.[target] === undefined) {
        return mayAdmit(before, author) ? allow : deny(`${author} may not admit hosts (mesh policy: admit=${before.mesh?.policy.admit})`)
      }
      // Expelling, re-admitting and renaming an existing member: founder or a named expeller.
      return mayExpel(before, author) ? allow : deny(`${author} may not change the membership of ${target} (needs the founder or an expeller)`)
    }
    case 'mesh':
      return before.mesh?.founder === author ? allow : deny(`only the founder may change the mesh policy (${show(p)})`)
    default:
      return deny(`unknown part of the state: ${show(p)}`)
  }
}
