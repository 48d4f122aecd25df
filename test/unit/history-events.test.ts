/**
 * `history` and `events` as a person reads them: the host by name and its peer id as everywhere
 * else, the user behind a stored request; events as `key=value` lines, ids shortened.
 */
import { describe, it, expect } from 'vitest'
import { eventLine } from '../../node/cli/host-commands.ts'
import { commands, type Io } from '../../node/cli/commands.ts'
import type { ApiClient } from '../../node/api/client.ts'

const PEER = '12D3KooWDFUk1jee8qYcQHcbM9M1xaRhJWWcPvYPg73EG5xkkgEe'
const FPR = '720C62127A820C1814178FD638C5FF2AF9CD5140'

describe('history and events', () => {
  it('history shows the host name, its peer id shortened as elsewhere, and the user behind a stored request', async () => {
    const out: string[] = []
    const io: Io = { out: s => { out.push(s) }, err: () => {} }
    const entries = [
      { hash: 'a'.repeat(64), author: PEER, authorName: 'alpha', time: 1_765_000_000, message: `request vm.create ${'b'.repeat(64)}`, seq: 3, request: 'b'.repeat(64), issuer: FPR },
      { hash: 'c'.repeat(64), author: PEER, authorName: null, time: 1_765_000_001, message: 'publish images', seq: 4 }
    ]
    await commands.find(c => c.name === 'history')?.run({ values: {}, positionals: [], g: { socket: '/x', json: false }, io, api: { call: async () => entries } as unknown as ApiClient })
    const text = out.join('\n')
    expect(text).toMatch(/TIME +HOST +PEER +CHANGE +WHAT +USER/)
    expect(text).toMatch(/alpha +12D3KooW…xkkgEe +a{12} +request vm\.create b{64} +720C6212…CD5140/)
    // A host whose name is not known: a dash, never an empty column.
    expect(text).toMatch(/ - +12D3KooW…xkkgEe +c{12} +publish images/)
  })

  it('an event is one readable line: time of day, type, key=value with ids shortened and lists counted', () => {
    expect(eventLine({ type: 'state.changed', time: '2026-12-07T21:50:01.123Z', local: true, changes: [{ hash: 'a'.repeat(64) }, { hash: 'b'.repeat(64) }], heads: ['x'] }))
      .toBe('21:50:01.123  state.changed  local=true changes=[2] heads=x')
    expect(eventLine({ type: 'peer.connected', time: '2026-12-07T21:50:02.000Z', peerId: PEER })).toMatch(/^21:50:02\.000  peer\.connected  peerId=12D3KooW…/)
    expect(eventLine({ type: 'x', time: 't', evil: 'a\x1b[2Jb' })).not.toContain('\x1b')
  })
})
