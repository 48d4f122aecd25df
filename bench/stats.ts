/** Summaries for benchmark samples: median with min–max, and percentiles. */
export interface Summary { n: number, min: number, p50: number, p99: number, max: number, mean: number }

export function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[i]
}

export function summarize (samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b)
  return {
    n: s.length,
    min: s[0],
    p50: percentile(s, 50),
    p99: percentile(s, 99),
    max: s[s.length - 1],
    mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length)
  }
}

export const fmt = (v: number, digits = 1): string => Number.isFinite(v) ? v.toFixed(digits) : '-'
