/**
 * Write permissions of the mesh document. Pure: given the author, the document as the author saw
 * it (the change's causal past, never the receiver's current state, so every honest host reaches
 * the same verdict) and the paths the change touches, say whether the change is allowed.
 */
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
    if (top === 'mesh') continue
    if ((top === 'members' || top === 'hosts') && (key === undefined || key === author)) continue
    return deny(`the first change may not write ${show(p)}`)
  }
  return allow
}

/**
 * Any later change. `before` is the document at the change's dependencies; `paths` are the paths
 * its patches touch (from Automerge's diff).
 */
export function checkChange (author: string, before: Partial<MeshDoc>, paths: Path[]): Verdict {
  if (before.mesh === undefined) return deny('change does not descend from the mesh genesis')
  if (!isActiveMember(before, author)) return deny(`${author} is not an active member of the mesh`)
  for (const p of paths) {
    const v = checkPath(author, before, p)
    if (!v.ok) return v
  }
  return allow
}

function checkPath (author: string, before: Partial<MeshDoc>, p: Path): Verdict {
  const [top, key] = p
  if (p.length < 2) return deny(`may not replace or delete top-level ${show(p)}`)
  switch (top) {
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
