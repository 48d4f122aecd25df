/**
 * Small, hand-written field validators for wire data. Each takes the untrusted value and the path
 * it was found at (`body.nics[1].net`) and returns a typed value or throws a PicocloudError whose
 * message starts with that path, so the person who signed a bad request learns which field to fix.
 * Objects are allowlists: a field not named is an error, never silently carried along — that is
 * how hypervisor XML, QEMU arguments or host paths are kept out of requests.
 */
import { PicocloudError, ErrorCode } from './errors.ts'

export type Validator<T> = (value: unknown, path: string) => T

/** Throw BAD_BODY for `path`. Callers that validate other things re-tag the code. */
export function invalid (path: string, message: string): never {
  throw new PicocloudError(ErrorCode.BadBody, `${path}: ${message}`)
}

function describe (v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return v.length > 40 ? `"${v.slice(0, 40)}…"` : JSON.stringify(v)
  return typeof v === 'object' ? 'an object' : `${typeof v} ${String(v)}`
}

/**
 * A plain object whose keys are all in `allowed` and include every key in `required`.
 * Returns it as a record for field-by-field validation.
 */
export function object (v: unknown, path: string, allowed: readonly string[], required: readonly string[] = []): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) invalid(path, `expected an object, got ${describe(v)}`)
  const rec = v as Record<string, unknown>
  for (const k of Object.keys(rec)) {
    if (!allowed.includes(k)) invalid(`${path}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`)
  }
  for (const k of required) {
    if (!Object.hasOwn(rec, k)) invalid(`${path}.${k}`, 'required field is missing')
  }
  return rec
}

export interface StringRule {
  /** Pattern the whole string must match. */
  pattern?: RegExp
  /** Human description of the pattern, used in the message. */
  what?: string
  /** @default 0 */
  min?: number
  /** @default 1024 */
  max?: number
}

export function string (v: unknown, path: string, rule: StringRule = {}): string {
  if (typeof v !== 'string') invalid(path, `expected a string${rule.what !== undefined ? ` (${rule.what})` : ''}, got ${describe(v)}`)
  const { min = 0, max = 1024 } = rule
  if (v.length < min) invalid(path, min === 1 ? 'must not be empty' : `must be at least ${min} characters`)
  if (v.length > max) invalid(path, `must be at most ${max} characters`)
  if (rule.pattern !== undefined && !rule.pattern.test(v)) invalid(path, `${describe(v)} is not ${rule.what ?? `matching ${String(rule.pattern)}`}`)
  return v
}

export function integer (v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) invalid(path, `expected an integer, got ${describe(v)}`)
  if (v < min || v > max) invalid(path, `${v} is out of range ${min}..${max}`)
  return v
}

export function boolean (v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') invalid(path, `expected true or false, got ${describe(v)}`)
  return v
}

export function oneOf<T extends string> (v: unknown, path: string, values: readonly T[]): T {
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    invalid(path, `expected one of ${values.map(x => JSON.stringify(x)).join(', ')}, got ${describe(v)}`)
  }
  return v as T
}

export function array<T> (v: unknown, path: string, max: number, item: Validator<T>): T[] {
  if (!Array.isArray(v)) invalid(path, `expected an array, got ${describe(v)}`)
  if (v.length > max) invalid(path, `at most ${max} entries allowed, got ${v.length}`)
  return v.map((x, i) => item(x, `${path}[${i}]`))
}

/** A string-keyed map with validated keys and values (labels, selectors). */
export function map<T> (v: unknown, path: string, maxEntries: number, key: StringRule, value: Validator<T>): Record<string, T> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) invalid(path, `expected an object, got ${describe(v)}`)
  const entries = Object.entries(v as Record<string, unknown>)
  if (entries.length > maxEntries) invalid(path, `at most ${maxEntries} entries allowed, got ${entries.length}`)
  // Object.fromEntries defines own properties, so a key like "__proto__" cannot reach a prototype.
  return Object.fromEntries(entries.map(([k, x]) => {
    string(k, `${path} key ${JSON.stringify(k)}`, key)
    return [k, value(x, `${path}.${k}`)]
  }))
}

/** Run `check` when the field is present, else return undefined. */
export function optional<T> (rec: Record<string, unknown>, key: string, path: string, check: Validator<T>): T | undefined {
  return Object.hasOwn(rec, key) ? check(rec[key], `${path}.${key}`) : undefined
}

/** Drop undefined members so that validated values compare and serialise cleanly. */
export function compact<T extends object> (o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}

// ---------------------------------------------------------------- IP addresses

/** Parse dotted-quad IPv4 (no leading zeros, which some parsers read as octal). */
export function parseIpv4 (s: string): number[] | undefined {
  const parts = s.split('.')
  if (parts.length !== 4) return undefined
  const out: number[] = []
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return undefined
    out.push(Number(p))
  }
  return out
}

/** Parse IPv6 text (RFC 4291 §2.2, with `::` and an optional trailing dotted quad) into 8 groups. */
export function parseIpv6 (s: string): number[] | undefined {
  if (!/^[0-9a-fA-F:.]+$/.test(s) || s.length > 45) return undefined
  const halves = s.split('::')
  if (halves.length > 2) return undefined
  const groups = (h: string): number[] | undefined => {
    if (h === '') return []
    const out: number[] = []
    const parts = h.split(':')
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = parseIpv4(p)
        if (v4 === undefined) return undefined
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3])
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined
        out.push(parseInt(p, 16))
      }
    }
    return out
  }
  const head = groups(halves[0])
  const tail = halves.length === 2 ? groups(halves[1]) : []
  if (head === undefined || tail === undefined) return undefined
  if (halves.length === 1) return head.length === 8 ? head : undefined
  if (head.length + tail.length > 7) return undefined
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail]
}

export interface Cidr { family: 4 | 6, prefix: number, address: string }

/** `10.1.0.0/24` or `fd00:1::/64`, with the host bits zero (a network, not an address in it). */
export function parseCidr (s: string, family: 4 | 6): Cidr | undefined {
  const m = /^([^/]+)\/(0|[1-9][0-9]{0,2})$/.exec(s)
  if (m === null) return undefined
  const prefix = Number(m[2])
  const bits = family === 4 ? 32 : 128
  if (prefix > bits) return undefined
  const units = family === 4 ? parseIpv4(m[1]) : parseIpv6(m[1])
  if (units === undefined) return undefined
  const unitBits = family === 4 ? 8 : 16
  for (let i = 0; i < units.length; i++) {
    const keep = Math.max(0, Math.min(unitBits, prefix - i * unitBits))
    const hostMask = (1 << (unitBits - keep)) - 1
    if ((units[i] & hostMask) !== 0) return undefined
  }
  return { family, prefix, address: m[1] }
}
