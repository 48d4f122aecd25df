import { describe, it, expect } from 'vitest'
import { formatLine, createLogger } from '../../node/log.ts'

describe('log lines', () => {
  it('are logfmt with quoted values where needed', () => {
    expect(formatLine('info', 'sync', 'applied change', { peer: '12D3Koo', note: 'two words', n: 3 }))
      .toBe('level=info component=sync msg="applied change" peer=12D3Koo note="two words" n=3')
  })
  it('drop debug lines unless the component is enabled', () => {
    const lines: string[] = []
    const log = createLogger('picocloud:test-off', l => lines.push(l))
    log.debug('hidden')
    log.warn('shown')
    expect(lines).toEqual(['level=warn component=picocloud:test-off msg="shown"'])
  })
})
