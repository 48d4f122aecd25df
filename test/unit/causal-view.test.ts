import { describe, it, expect } from 'vitest'
import * as A from '@automerge/automerge'
import { causalView } from '../../crdt/causal-view.ts'
import type { MeshDoc } from '../../crdt/schema.ts'

// Plain JSON of what a permission check reads, for comparing the partial view with A.view.
const relevant = (d: Partial<MeshDoc>, ids: string[]) => JSON.parse(JSON.stringify({
  mesh: d.mesh,
  members: d.members,
  requests: d.requests === undefined ? undefined : Object.fromEntries(ids.filter(id => d.requests?.[id] !== undefined).map(id => [id, d.requests?.[id]]))
}))

describe('causal view', () => {
  it('shows the mesh, the members and the asked-for requests exactly as A.view does at the same heads', () => {
    let d = A.from<any>({ mesh: { id: 'm', founder: 'a', policy: { admit: 'any-member' } }, members: { a: { name: 'alpha' } }, hosts: { a: { name: 'alpha' } }, requests: {} })
    const h0 = A.getHeads(d)
    d = A.change(d, x => {
      x.members.b = { name: 'bravo' }
      x.requests.r1 = { via: new A.ImmutableString('a'), payload: new A.ImmutableString('{}'), signature: new A.ImmutableString('sig'), at: new A.ImmutableString('now') }
      x.hosts.a.name = 'renamed'
    })
    const h1 = A.getHeads(d)
    d = A.change(d, x => { x.mesh.policy.admit = 'expellers'; delete x.members.b })
    for (const heads of [h0, h1, A.getHeads(d)]) {
      for (const ids of [[], ['r1'], ['r1', 'missing']]) {
        expect(relevant(causalView(d, heads, ids), ids)).toEqual(relevant(A.view(d, heads), ids))
      }
    }
    // Only what was asked for: no hosts, no other requests.
    const v = causalView(d, h1, [])
    expect(v.hosts).toBeUndefined()
    expect(v.requests).toEqual({})
  })

  it('is empty before the genesis', () => {
    const d = A.from<any>({})
    expect(causalView(d, A.getHeads(d), ['x'])).toEqual({})
  })
})
