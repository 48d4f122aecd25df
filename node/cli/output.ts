/**
 * Human output of the CLI: aligned tables and short relative times.
 *
 * What it prints comes mostly from the replicated state, that is from other hosts and users (host,
 * VM and network names, labels, reasons, key user ids). A control character in it could move the
 * cursor, recolour or retitle the terminal, or forge a line; a bidi override could reorder what is
 * shown. So every value is passed through `clean` (tables do it per cell, `line` per value), and
 * the whole human output through `cleanText`. `--json` stays exact JSON.
 */

/** C0 (with ESC, tab, newline), DEL, C1, and the Unicode bidi controls and line separators. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

function escape (c: string): string {
  const n = c.charCodeAt(0)
  return NAMED[c] ?? (n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`)
}

/** One value, safe to print: unsafe characters shown as escapes (`\x1b`, `\n`, `\u202e`). */
export function clean (s: string): string {
  return s.replace(UNSAFE, escape)
}

/** Several lines of output: as `clean`, but the newlines between lines stay. */
export function cleanText (s: string): string {
  return s.split('\n').map(clean).join('\n')
}

/** Template tag for one line of output: every interpolated value is `clean`ed. */
export function line (strings: TemplateStringsArray, ...values: unknown[]): string {
  return strings.reduce((out, s, i) => out + clean(String(values[i - 1])) + s)
}

export function table (headers: string[], rows: string[][]): string {
  const cells = [headers, ...rows].map(r => r.map(c => clean(c ?? '')))
  const widths = cells[0].map((h, i) => Math.max(h.length, ...cells.slice(1).map(r => (r[i] ?? '').length)))
  const row = (r: string[]): string => r.map((c, i) => i === r.length - 1 ? c : c.padEnd(widths[i])).join('  ').trimEnd()
  return cells.map(row).join('\n')
}

export function ago (iso: string | null, now = Date.now()): string {
  if (iso === null) return 'never'
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  if (s < 2) return 'now'
  if (s < 120) return `${s}s ago`
  if (s < 7200) return `${Math.round(s / 60)}m ago`
  if (s < 172800) return `${Math.round(s / 3600)}h ago`
  return `${Math.round(s / 86400)}d ago`
}

export function short (peerId: string): string {
  return peerId.length > 16 ? `${peerId.slice(0, 8)}…${peerId.slice(-6)}` : peerId
}
