import { describe, it, expect } from 'vitest'
import { readEvent } from '../../crdt/records.ts'
import { storedEvent, storedSeen, type MembershipEvent } from '../../crdt/schema.ts'

const P1 = '12D3KooWA1xCqW8vZ5PGnVpHGSqL3nGFXhPDx1yGiS1kJ7cV2mNb'
const P2 = '12D3KooWB2yDrX9wA6QHoWqJHTrM4oHGYiQEy2zHjT2mK8dW3nPc'
const AT = '2026-12-07T12:00:00.000Z'
const event = (seen: unknown): unknown => ({ op: 'admit', peer: P1, name: 'x', at: AT, seen })

describe('a membership event\'s seen, as stored and as read', () => {
  it('is written as one sorted string and read back as the same map', () => {
    const e: MembershipEvent = { op: 'admit', peer: P1, name: 'x', at: AT, seen: { [P2]: '3:0123456789abcdef', [P1]: '12:fedcba9876543210' } }
    expect(storedSeen(e.seen)).toBe(`${P1}=12:fedcba9876543210 ${P2}=3:0123456789abcdef`)
    const stored = JSON.parse(JSON.stringify(storedEvent(e)))
    expect(readEvent(stored, 'events[0]')).toEqual({ value: e, problems: [] })
    expect(readEvent(event(''), 'events[0]').value).toMatchObject({ seen: {} })
  })
  it('reads the map older daemons wrote', () => {
    expect(readEvent(event({ [P1]: '1:0123456789abcdef' }), 'events[0]').value).toMatchObject({ seen: { [P1]: '1:0123456789abcdef' } })
  })
  it('refuses a malformed one, naming what is wrong', () => {
    const bad: Array<[unknown, RegExp]> = [
      [`${P1}=0:0123456789abcdef`, /is not peer=seq:hash/],
      [`${P1}=1:0123456789ABCDEF`, /is not peer=seq:hash/],
      [`${P1}=1:0123456789abcdef  ${P2}=1:0123456789abcdef`, /is not peer=seq:hash/],
      [`nope=1:0123456789abcdef`, /is not peer=seq:hash/],
      [`${P1}=1:0123456789abcdef ${P1}=2:0123456789abcdef`, /named twice/],
      [42, /events\[0\]\.seen/]
    ]
    for (const [seen, why] of bad) {
      const r = readEvent(event(seen), 'events[0]')
      expect(r.value, String(seen)).toBeUndefined()
      expect(r.problems.join('\n')).toMatch(why)
    }
  })
})
