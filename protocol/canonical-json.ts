/**
 * RFC 8785 JSON Canonicalization Scheme (JCS).
 *
 * Requests are signed over bytes, and every host must agree on those bytes without agreeing on a
 * JSON library, so the payload is written in one canonical form: object members sorted by the
 * UTF-16 code units of their names, no whitespace, numbers in ECMAScript `Number#toString` form,
 * strings escaped exactly as `JSON.stringify` does (RFC 8785 §3.2.2.2 was written to match it).
 * Input that I-JSON (RFC 7493) forbids — lone surrogates, non-finite numbers — is rejected rather
 * than silently mapped, because a silent mapping lets two different values share one signature.
 *
 * @example
 * canonicalize({ b: 1, a: [true, null] }) // '{"a":[true,null],"b":1}'
 * parseCanonical('{"a":1}')               // { a: 1 }
 * parseCanonical('{ "a": 1 }')            // throws NOT_CANONICAL
 */
import { PicocloudError, ErrorCode } from './errors.ts'

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

/**
 * Deepest nesting accepted. RFC 8785 sets no limit; ours keeps recursion far from the stack limit
 * (a 64 KiB payload could otherwise nest 32k arrays) and no request needs more than a few levels.
 */
export const MAX_DEPTH = 128

/** A lone (unpaired) UTF-16 surrogate: not valid Unicode, so not valid I-JSON. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

function fail (path: string, what: string): never {
  throw new PicocloudError(ErrorCode.NotCanonicalizable,
    `cannot write ${path} as canonical JSON: ${what}`)
}

function serializeString (s: string, path: string): string {
  if (LONE_SURROGATE.test(s)) fail(path, 'string contains a lone UTF-16 surrogate (not valid Unicode)')
  // Well-formed JSON.stringify (ES2019) escapes exactly the set RFC 8785 §3.2.2.2 prescribes:
  // \b \t \n \f \r \" \\ as two-character escapes, other controls as \u00xx (lower-case hex).
  return JSON.stringify(s)
}

function serializeNumber (n: number, path: string): string {
  if (!Number.isFinite(n)) fail(path, `${String(n)} is not a finite number`)
  // ECMAScript Number#toString is the RFC's number format; -0 is written "0" (RFC 8785 §3.2.2.3).
  return Object.is(n, -0) ? '0' : String(n)
}

function isPlainObject (v: object): boolean {
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

/** UTF-16 code-unit order, as RFC 8785 §3.2.3 requires (not locale, not code-point order). */
function compareUtf16 (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

function serialize (v: unknown, path: string, stack: Set<object>): string {
  switch (typeof v) {
    case 'string': return serializeString(v, path)
    case 'number': return serializeNumber(v, path)
    case 'boolean': return v ? 'true' : 'false'
    case 'undefined': return fail(path, 'undefined has no JSON form (omit the field instead)')
    case 'function': return fail(path, 'a function has no JSON form')
    case 'symbol': return fail(path, 'a symbol has no JSON form')
    case 'bigint': return fail(path, 'a bigint has no JSON form (use a number or a string)')
  }
  if (v === null) return 'null'
  const obj = v as object
  if (stack.has(obj)) fail(path, 'the value contains a cycle')
  if (stack.size >= MAX_DEPTH) fail(path, `nesting deeper than ${MAX_DEPTH} levels`)
  stack.add(obj)
  try {
    if (Array.isArray(obj)) {
      const parts: string[] = []
      for (let i = 0; i < obj.length; i++) {
        if (!(i in obj)) fail(`${path}[${i}]`, 'sparse array hole has no JSON form')
        parts.push(serialize(obj[i], `${path}[${i}]`, stack))
      }
      return `[${parts.join(',')}]`
    }
    if (!isPlainObject(obj)) {
      fail(path, `${obj.constructor?.name ?? 'object'} is not a plain object (convert it first, e.g. a Date to an ISO string)`)
    }
    const record = obj as Record<string, unknown>
    const keys = Object.keys(record).sort(compareUtf16)
    const parts: string[] = []
    for (const k of keys) {
      const childPath = `${path}.${k}`
      parts.push(`${serializeString(k, childPath)}:${serialize(record[k], childPath, stack)}`)
    }
    return `{${parts.join(',')}}`
  } finally {
    stack.delete(obj)
  }
}

/**
 * The RFC 8785 canonical form of `value`. Throws `NOT_CANONICALIZABLE` (naming the offending path)
 * for undefined, functions, symbols, bigints, non-finite numbers, lone surrogates, sparse arrays,
 * non-plain objects and cycles. `toJSON` methods are deliberately not honoured.
 */
export function canonicalize (value: unknown): string {
  return serialize(value, '$', new Set())
}

/** UTF-8 bytes of the canonical form: what gets hashed and signed. */
export function canonicalBytes (value: unknown): Uint8Array {
  return new TextEncoder().encode(canonicalize(value))
}

/**
 * Parse `text` and insist it is already canonical: re-canonicalising the parsed value must give the
 * very same string. Catches whitespace, unsorted or duplicate keys, `1.0`, `"\u0041"` and the like —
 * each of which would otherwise let one value travel under several byte strings (and ids).
 */
export function parseCanonical (text: string): JsonValue {
  let value: JsonValue
  try {
    value = JSON.parse(text) as JsonValue
  } catch (err) {
    throw new PicocloudError(ErrorCode.BadJson, `not JSON: ${(err as Error).message}`)
  }
  let again: string
  try {
    again = canonicalize(value)
  } catch (err) {
    throw new PicocloudError(ErrorCode.NotCanonical, `JSON is not canonical (RFC 8785): ${(err as Error).message}`)
  }
  if (again !== text) {
    throw new PicocloudError(ErrorCode.NotCanonical,
      `JSON is not canonical (RFC 8785): first difference at character ${firstDifference(text, again)}; ` +
      'sign the output of canonicalize() exactly, without reformatting')
  }
  return value
}

/** True when `text` is JSON in RFC 8785 canonical form. */
export function isCanonical (text: string): boolean {
  try {
    parseCanonical(text)
    return true
  } catch {
    return false
  }
}

function firstDifference (a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i
  return n
}
