import { describe, it, expect } from 'vitest'
import fc from 'fast-check'
import { canonicalize, parseCanonical, isCanonical, MAX_DEPTH } from '../../protocol/canonical-json.ts'
import { PicocloudError } from '../../protocol/errors.ts'

function codeOf (fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    return err instanceof PicocloudError ? err.code : `not a PicocloudError: ${String(err)}`
  }
  return undefined
}

function fromHex (hex: string): number {
  const view = new DataView(new ArrayBuffer(8))
  view.setBigUint64(0, BigInt('0x' + hex))
  return view.getFloat64(0)
}

describe('canonicalize: RFC 8785 examples', () => {
  it('§3.2.2 sample: numbers, string escapes and literals', () => {
    // The input exactly as the RFC writes it, parsed by an ordinary JSON parser.
    const input = '{\n  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],\n' +
      '  "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n' +
      '  "literals": [null, true, false]\n}'
    expect(canonicalize(JSON.parse(input)))
      .toBe('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],' +
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
  })

  it('§3.2.3 sample: members sorted by UTF-16 code units', () => {
    const input = {
      '\u20ac': 'Euro Sign',
      '\r': 'Carriage Return',
      '\ufb33': 'Hebrew Letter Dalet With Dagesh',
      1: 'One',
      '\ud83d\ude00': 'Emoji: Grinning Face',
      '\u0080': 'Control',
      '\u00f6': 'Latin Small Letter O With Diaeresis'
    }
    const order = Object.keys(JSON.parse(canonicalize(input)) as object)
    // Object.keys puts integer-like keys first, so compare the serialised order instead.
    expect(order).toContain('1')
    const text = canonicalize(input)
    const positions = ['\\r', '"1"', '\u0080', '\u00f6', '\u20ac', '\ud83d\ude00', '\ufb33'].map(k => text.indexOf(k))
    expect(positions.every(p => p >= 0)).toBe(true)
    expect([...positions].sort((a, b) => a - b)).toEqual(positions)
    // U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16 order, though not in code-point order.
    expect(text.indexOf('\ud83d\ude00')).toBeLessThan(text.indexOf('\ufb33'))
  })

  it('Appendix B: IEEE 754 numbers in ECMAScript form', () => {
    const cases: Array<[string, string]> = [
      ['0000000000000000', '0'],
      ['8000000000000000', '0'],
      ['0000000000000001', '5e-324'],
      ['8000000000000001', '-5e-324'],
      ['7fefffffffffffff', '1.7976931348623157e+308'],
      ['ffefffffffffffff', '-1.7976931348623157e+308'],
      ['4340000000000000', '9007199254740992'],
      ['c340000000000000', '-9007199254740992'],
      ['4430000000000000', '295147905179352830000'],
      ['44b52d02c7e14af5', '9.999999999999997e+22'],
      ['44b52d02c7e14af6', '1e+23'],
      ['44b52d02c7e14af7', '1.0000000000000001e+23'],
      ['444b1ae4d6e2ef4e', '999999999999999700000'],
      ['444b1ae4d6e2ef4f', '999999999999999900000'],
      ['444b1ae4d6e2ef50', '1e+21'],
      ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
      ['3eb0c6f7a0b5ed8d', '0.000001'],
      ['41b3de4355555553', '333333333.3333332'],
      ['41b3de4355555554', '333333333.33333325'],
      ['41b3de4355555555', '333333333.3333333'],
      ['41b3de4355555556', '333333333.3333334'],
      ['41b3de4355555557', '333333333.33333343'],
      ['becbf647612f3696', '-0.0000033333333333333333'],
      ['43143ff3c1cb0959', '1424953923781206.2']
    ]
    for (const [hex, expected] of cases) expect(canonicalize(fromHex(hex)), hex).toBe(expected)
    expect(codeOf(() => canonicalize(fromHex('7fffffffffffffff')))).toBe('NOT_CANONICALIZABLE')
    expect(codeOf(() => canonicalize(fromHex('7ff0000000000000')))).toBe('NOT_CANONICALIZABLE')
  })

  it('escapes controls as the RFC does and keeps other characters literal', () => {
    expect(canonicalize('\u0000\u0008\u0009\u000a\u000c\u000d\u001f"\\/\u007f\u00e9'))
      .toBe('"\\u0000\\b\\t\\n\\f\\r\\u001f\\"\\\\/\u007f\u00e9"')
  })
})

describe('canonicalize: rejects what has no canonical form', () => {
  it.each([
    ['undefined', undefined],
    ['a nested undefined', { a: { b: undefined } }],
    ['a function', { f: () => 1 }],
    ['a symbol', [Symbol('x')]],
    ['a bigint', 10n],
    ['NaN', Number.NaN],
    ['-Infinity', { n: -Infinity }],
    ['a lone high surrogate', '\ud800'],
    ['a lone low surrogate in a key', { '\udc00x': 1 }],
    ['a Date', new Date(0)],
    ['a Map', new Map()],
    ['a sparse array', [1, , 3]] // eslint-disable-line no-sparse-arrays
  ])('%s', (_name, value) => {
    expect(codeOf(() => canonicalize(value))).toBe('NOT_CANONICALIZABLE')
  })

  it('a cycle, naming where it was found', () => {
    const a: Record<string, unknown> = { x: [1] }
    ;(a.x as unknown[]).push(a)
    expect(() => canonicalize(a)).toThrow(/\$\.x\[1\].*cycle/)
  })

  it('nesting deeper than MAX_DEPTH, in either direction', () => {
    let v: unknown = 1
    for (let i = 0; i < MAX_DEPTH; i++) v = [v]
    expect(canonicalize(v)).toBe('['.repeat(MAX_DEPTH) + '1' + ']'.repeat(MAX_DEPTH))
    expect(codeOf(() => canonicalize([v]))).toBe('NOT_CANONICALIZABLE')
    const deep = '['.repeat(30_000) + ']'.repeat(30_000)
    expect(codeOf(() => parseCanonical(deep))).toBe('NOT_CANONICAL')
  })

  it('but a value shared twice without a cycle is fine', () => {
    const shared = { k: 1 }
    expect(canonicalize({ a: shared, b: [shared] })).toBe('{"a":{"k":1},"b":[{"k":1}]}')
  })
})

describe('parseCanonical', () => {
  it('accepts canonical text and returns the value', () => {
    expect(parseCanonical('{"a":[1,"x",null],"b":{}}')).toEqual({ a: [1, 'x', null], b: {} })
  })
  it.each([
    ['whitespace', '{"a": 1}'],
    ['unsorted keys', '{"b":1,"a":2}'],
    ['duplicate keys', '{"a":1,"a":1}'],
    ['a non-canonical number', '{"a":1.0}'],
    ['an exponent form', '[1E2]'],
    ['a needless escape', '["\\u0041"]'],
    ['an escaped slash', '["\\/"]'],
    ['upper-case hex escape', '["\\u001F"]'],
    ['a trailing newline', '{}\n'],
    ['an escaped lone surrogate', '["\\ud800"]']
  ])('rejects %s with NOT_CANONICAL', (_name, text) => {
    expect(codeOf(() => parseCanonical(text))).toBe('NOT_CANONICAL')
    expect(isCanonical(text)).toBe(false)
  })
  it('rejects text that is not JSON with BAD_JSON', () => {
    expect(codeOf(() => parseCanonical('{"a":'))).toBe('BAD_JSON')
  })
})

/** JSON values as they come back from JSON.parse: no -0 (it parses back as 0). */
const jsonValue = fc.jsonValue().map(v => JSON.parse(JSON.stringify(v)) as unknown)

function shuffleKeys (v: unknown, rnd: () => number): unknown {
  if (Array.isArray(v)) return v.map(x => shuffleKeys(x, rnd))
  if (v === null || typeof v !== 'object') return v
  const entries = Object.entries(v).map(([k, x]) => [k, shuffleKeys(x, rnd)] as const)
  for (let i = entries.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1))
    ;[entries[i], entries[j]] = [entries[j], entries[i]]
  }
  return Object.fromEntries(entries)
}

describe('canonicalize: properties', () => {
  it('round-trips: parse(canonicalize(x)) deep-equals x', () => {
    fc.assert(fc.property(jsonValue, v => {
      expect(JSON.parse(canonicalize(v))).toEqual(v)
    }), { numRuns: 500 })
  })
  it('is idempotent and its output is accepted by parseCanonical', () => {
    fc.assert(fc.property(jsonValue, v => {
      const once = canonicalize(v)
      expect(canonicalize(JSON.parse(once))).toBe(once)
      expect(parseCanonical(once)).toEqual(v)
    }), { numRuns: 500 })
  })
  it('does not depend on key insertion order', () => {
    fc.assert(fc.property(jsonValue, fc.integer(), (v, seed) => {
      let s = seed
      const rnd = (): number => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x80000000 }
      expect(canonicalize(shuffleKeys(v, rnd))).toBe(canonicalize(v))
    }), { numRuns: 500 })
  })
  it('agrees with JSON.stringify on every double', () => {
    fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), n => {
      expect(canonicalize(n)).toBe(JSON.stringify(n))
    }), { numRuns: 1000 })
  })
})
