/**
 * The shape of the code base, checked on every run (docs/ARCHITECTURE.md says why it is so):
 * - no import circle anywhere in the daemon's code;
 * - the layers: protocol/ at the bottom, then keys/, then crdt/, then node/; a lower layer never
 *   imports a higher one (log.ts and files.ts of node/ are the shared base everyone may use);
 * - a subsystem of node/ (a folder with an index.ts) is used by the rest only through its
 *   index.ts, never through its internals;
 * - production code never imports tests.
 */
import { describe, it, expect } from 'vitest'
import { readFileSync, readdirSync, statSync, existsSync } from 'node:fs'
import { join, dirname, resolve, relative, sep } from 'node:path'

const ROOT = resolve(import.meta.dirname, '../..')
const SOURCES = ['node', 'crdt', 'keys', 'protocol']
const BASE = new Set(['node/log.ts', 'node/files.ts'])
const LAYER: Record<string, number> = { protocol: 0, keys: 1, crdt: 2, node: 3 }

function files (dir: string): string[] {
  const out: string[] = []
  for (const f of readdirSync(dir)) {
    const p = join(dir, f)
    if (statSync(p).isDirectory()) out.push(...files(p))
    else if (p.endsWith('.ts')) out.push(p)
  }
  return out
}

const IMPORT = /(?:^|[;\n])\s*(?:import|export)\s[^'"]*?from\s+['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g
const posix = (p: string): string => p.split(sep).join('/')

/** Module (path from the root) → the modules it imports. */
function graph (): Map<string, Set<string>> {
  const g = new Map<string, Set<string>>()
  for (const d of SOURCES) {
    for (const f of files(join(ROOT, d))) {
      const deps = new Set<string>()
      for (const m of readFileSync(f, 'utf8').matchAll(IMPORT)) deps.add(posix(relative(ROOT, resolve(dirname(f), m[1] ?? m[2]))))
      g.set(posix(relative(ROOT, f)), deps)
    }
  }
  return g
}

/** Strongly connected components of more than one module (Tarjan). */
function cycles (g: Map<string, Set<string>>): string[][] {
  let next = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const on = new Set<string>()
  const out: string[][] = []
  const visit = (v: string): void => {
    index.set(v, next); low.set(v, next); next++
    stack.push(v); on.add(v)
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue
      if (!index.has(w)) { visit(w); low.set(v, Math.min(low.get(v) as number, low.get(w) as number)) } else if (on.has(w)) low.set(v, Math.min(low.get(v) as number, index.get(w) as number))
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = []
      let w: string
      do { w = stack.pop() as string; on.delete(w); c.push(w) } while (w !== v)
      if (c.length > 1) out.push(c.sort())
    }
  }
  for (const v of g.keys()) if (!index.has(v)) visit(v)
  return out
}

/** node/<name>/ folders that are subsystems (they have an index.ts). */
function subsystems (): string[] {
  return readdirSync(join(ROOT, 'node')).filter(d => statSync(join(ROOT, 'node', d)).isDirectory() && existsSync(join(ROOT, 'node', d, 'index.ts')))
}

describe('architecture', () => {
  const g = graph()

  it('has no import circle', () => {
    expect(cycles(g)).toEqual([])
  })

  it('keeps its layers: protocol/ < keys/ < crdt/ < node/ (node/log.ts and node/files.ts are the base)', () => {
    const wrong: string[] = []
    for (const [from, deps] of g) {
      const lf = LAYER[from.split('/')[0]]
      for (const to of deps) {
        if (to.startsWith('test/')) { wrong.push(`${from} imports a test: ${to}`); continue }
        const lt = LAYER[to.split('/')[0]]
        if (lt === undefined || BASE.has(to)) continue
        if (lt > lf) wrong.push(`${from} (layer ${from.split('/')[0]}) imports ${to}`)
      }
    }
    expect(wrong).toEqual([])
  })

  it('uses a subsystem of node/ only through its index.ts', () => {
    const subs = subsystems()
    expect(subs.length).toBeGreaterThan(0)
    const wrong: string[] = []
    for (const [from, deps] of g) {
      for (const to of deps) {
        const parts = to.split('/')
        if (parts[0] !== 'node' || !subs.includes(parts[1])) continue
        const inside = from.startsWith(`node/${parts[1]}/`)
        if (!inside && to !== `node/${parts[1]}/index.ts`) wrong.push(`${from} reaches into ${to}`)
      }
    }
    expect(wrong).toEqual([])
  })

  it('finds the circles and the breaches it is meant to find (the checks can fail)', () => {
    const bad = new Map<string, Set<string>>([['a.ts', new Set(['b.ts'])], ['b.ts', new Set(['c.ts'])], ['c.ts', new Set(['a.ts'])], ['d.ts', new Set(['a.ts'])]])
    expect(cycles(bad)).toEqual([['a.ts', 'b.ts', 'c.ts']])
  })
})
