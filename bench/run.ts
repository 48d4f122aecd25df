/**
 * `npm run bench [-- --quick]`: runs the benchmarks on this machine and writes bench/RESULTS.md.
 * `--quick` only checks that each benchmark still works (few samples; CI runs this).
 */
import { writeFile } from 'node:fs/promises'
import { cpus, totalmem } from 'node:os'
import { join } from 'node:path'
import { dissemination, idleRss, statusRoundTrip } from './control-plane.ts'
import { fmt, type Summary } from './stats.ts'

const quick = process.argv.includes('--quick')
const rows: string[] = []
const add = (what: string, s: Summary, unit: string, target: string, command: string): void => {
  rows.push(`| ${what} | ${fmt(s.p50)} ${unit} | ${fmt(s.p99)} ${unit} | ${fmt(s.min)}–${fmt(s.max)} ${unit} | ${s.n} | ${target} | \`${command}\` |`)
  console.log(`${what}: p50 ${fmt(s.p50)} ${unit}, p99 ${fmt(s.p99)} ${unit}, min–max ${fmt(s.min)}–${fmt(s.max)} (n=${s.n})`)
}

const cmd = 'npm run bench'
for (const hosts of [3, 10]) {
  const r = await dissemination(hosts, quick ? 5 : 100)
  add(`dissemination, ${hosts} daemons on loopback`, r.latencyMs, 'ms', hosts === 10 ? 'p50 < 30 ms, p99 < 100 ms' : '', cmd)
}
const rss = await idleRss(10, quick ? 2000 : 30_000)
add('idle RSS of a daemon, 10-host mesh', rss.rssMiB, 'MiB', '< 100 MB', cmd)
add('`picocloud status` round trip', await statusRoundTrip(quick ? 5 : 50), 'ms', '< 150 ms', cmd)

const md = [
  '# Benchmark results',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${Math.round(totalmem() / 2 ** 30)} GiB; Node ${process.version}. Date: ${new Date().toISOString()}.${quick ? ' (quick mode: few samples, not representative)' : ''}`,
  '',
  '| what | p50 | p99 | min–max | n | target | command |',
  '| --- | --- | --- | --- | --- | --- | --- |',
  ...rows,
  ''
].join('\n')
if (!quick) await writeFile(join(import.meta.dirname, 'RESULTS.md'), md)
console.log(md)
process.exit(0)
