/**
 * The CLI's human output shows text from other hosts and users (names, labels, reasons, change
 * messages): control characters and bidi overrides in it come out as visible escapes, never raw.
 * `--json` stays exact JSON.
 */
import { describe, it, expect } from 'vitest'
import { clean, cleanText, line, table } from '../../node/cli/output.ts'
import { commands, type Io } from '../../node/cli/commands.ts'
import type { ApiClient } from '../../node/api/client.ts'

/** Every character that must not reach a terminal raw. */
const UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/
const EVIL = 'roof\x1b]0;pwned\x07\x1b[2J\nFAKE  12D3KooWfake  yes\r\t\x7f\x9b31m\u202eoof\u2066x\u2069'

async function run (name: string, api: Record<string, unknown>, json = false): Promise<string> {
  const out: string[] = []
  const io: Io = { out: s => { out.push(s) }, err: s => { out.push(s) } }
  const c = commands.find(c => c.name === name)
  if (c === undefined) throw new Error(`no command ${name}`)
  await c.run({ values: {}, positionals: [], g: { socket: '/nonexistent', json }, io, api: { call: async () => api[name] } as unknown as ApiClient })
  return out.join('\n')
}

describe('CLI human output', () => {
  it('clean shows control characters, DEL, C1 and bidi controls as escapes', () => {
    expect(clean('a\x1b[31mb')).toBe('a\\x1b[31mb')
    expect(clean('a\nb\r\tc')).toBe('a\\nb\\r\\tc')
    expect(clean('\x00\x7f\x85\x9f')).toBe('\\x00\\x7f\\x85\\x9f')
    expect(clean('\u202eabc\u2066\u2069\u200f')).toBe('\\u202eabc\\u2066\\u2069\\u200f')
    // Ordinary text, accents, CJK, emoji and the ellipsis of short ids pass as they are.
    expect(clean('roof-node é 屋顶 🛰 12D3KooW…abcdef')).toBe('roof-node é 屋顶 🛰 12D3KooW…abcdef')
    expect(clean(EVIL)).not.toMatch(UNSAFE)
    expect(clean(EVIL)).not.toContain('\n')
  })

  it('cleanText keeps the lines of the output; line cleans each value, not the text around it', () => {
    expect(cleanText('one\x1b[2J\ntwo\u202e')).toBe('one\\x1b[2J\ntwo\\u202e')
    expect(line`host ${'a\nb'} and ${42}`).toBe('host a\\nb and 42')
  })

  it('tables clean every cell and align on the cleaned width', () => {
    const t = table(['NAME', 'X'], [[EVIL, '1'], ['b', '2\x1b']])
    expect(t).not.toMatch(UNSAFE)
    const rows = t.split('\n')
    expect(rows).toHaveLength(3)
    expect(rows[2]).toBe('b'.padEnd(clean(EVIL).length) + '  2\\x1b')
  })

  it('hosts, history and status print a hostile name on one line, without control characters', async () => {
    const host = { name: EVIL, peerId: '12D3KooWA' + 'a'.repeat(40), self: false, reachable: true, lastSeen: null, addresses: [`/ip4/10.0.0.1/tcp/1${EVIL}`] }
    const status = {
      name: EVIL, peerId: host.peerId, version: '0.1.0', uptimeSeconds: 1, addresses: [],
      mesh: { name: EVIL, id: 'm', members: 2, founder: host.peerId, policy: { admit: 'any-member', expellers: [] } },
      state: { changes: 1, pending: 0, logBytes: 1, heads: [] },
      expelled: { by: host.peerId, at: 'now', reason: EVIL },
      peers: [{ peerId: host.peerId, name: EVIL, address: EVIL, direction: 'inbound' }],
      penalties: [{ peerId: host.peerId, score: 1, offences: [{ reason: EVIL }] }]
    }
    const api = {
      hosts: [host],
      history: [{ hash: 'ab'.repeat(32), author: host.peerId, time: 0, message: EVIL }],
      status
    }
    const hosts = await run('hosts', api)
    expect(hosts).not.toMatch(UNSAFE)
    expect(hosts.split('\n')).toHaveLength(2)
    expect(hosts).toContain('roof\\x1b]0;pwned\\x07\\x1b[2J\\nFAKE')
    const history = await run('history', api)
    expect(history).not.toMatch(UNSAFE)
    expect(history.split('\n')).toHaveLength(2)
    const text = await run('status', api)
    expect(text).not.toMatch(UNSAFE)
    // One line each: host, mesh, expelled, the peer's row, the penalty's row.
    expect(text.split('\n').filter(l => l.includes('FAKE'))).toHaveLength(5)
    expect(text.split('\n').filter(l => l.startsWith('FAKE'))).toEqual([])
    // --json: the exact JSON, which gives back the very same strings.
    expect(JSON.parse(await run('hosts', api, true))).toEqual([host])
  })
})
