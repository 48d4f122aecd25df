/**
 * The parts of the mesh document a permission check reads (crdt/permissions.ts), as they were at
 * given heads. `A.view` would materialize the whole document at those heads: tens of milliseconds
 * per concurrent change once the state holds thousands of requests and VMs. The check reads only
 * the mesh, the members and the requests a change touches, so only those are materialized.
 */
import * as A from '@automerge/automerge'
import type { MeshDoc } from './schema.ts'

export function causalView (doc: A.Doc<MeshDoc>, heads: A.Heads, requestIds: Iterable<string>): Partial<MeshDoc> {
  const backend = A.getBackend(doc)
  const child = (obj: string, prop: string): unknown => {
    const v = backend.getWithType(obj, prop, heads)
    if (v === null) return undefined
    const [type, value] = v
    return type === 'map' || type === 'list' || type === 'text' ? backend.materialize(value as string, heads) : value
  }
  const view: Record<string, unknown> = {}
  for (const top of ['mesh', 'members'] as const) {
    const v = child('_root', top)
    if (v !== undefined) view[top] = v
  }
  const requests = backend.getWithType('_root', 'requests', heads)
  if (requests !== null && requests[0] === 'map') {
    const picked: Record<string, unknown> = {}
    for (const id of requestIds) {
      const r = child(requests[1] as string, id)
      if (r !== undefined) picked[id] = r
    }
    view.requests = picked
  }
  return view as Partial<MeshDoc>
}
