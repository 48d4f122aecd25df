/**
 * The Byzantine fuzzer's check (d) (fuzz.test.ts says what a case is and checks a–c): after the
 * same kind of cases, here with attackers that also replay honest hosts' requests into their own
 * feeds,
 * - no honest host blames another for an attacker's change: no `rejected` event holds an honest
 *   host as the sender, and no sync between two honest hosts ends as misbehaviour (the daemon
 *   penalises both: node/node.ts);
 * - a request an honest host received is decided with an honest host's copy (among its `vias`), so no
 *   attacker's word (a final rejection) decides it.
 * Seeded as fuzz.test.ts (PICOCLOUD_FUZZ_SEED, PICOCLOUD_FUZZ_RUNS); its own default seed.
 */
import { describe, it, expect, beforeAll } from 'vitest'
import fc from 'fast-check'
import { FAST_TMP } from '../helpers/stores.ts'
import { caseArbitrary, makeKeys, runCase, fuzzSettings, report, type Found } from '../helpers/byzantine-fuzz.ts'

const { seed: SEED, runs: RUNS } = fuzzSettings(7121962, 100)

describe(`adversarial: Byzantine fuzzer, who gets blamed (seed ${SEED}, ${RUNS} cases)`, () => {
  const blamed: Found[] = []
  const decided: Found[] = []
  const broken: Found[] = []

  beforeAll(async () => {
    console.log(`Byzantine fuzzer (d): seed ${SEED} (PICOCLOUD_FUZZ_SEED=${SEED} replays it), ${RUNS} cases`)
    const keys = await makeKeys()
    await fc.check(fc.asyncProperty(caseArbitrary({ reported: true }), async c => {
      const out = await runCase(c, keys, FAST_TMP)
      if (out.blame.length > 0) blamed.push({ c, out })
      if (out.requests.length > 0) decided.push({ c, out })
      if (out.core.length > 0) broken.push({ c, out })
    }), { seed: SEED, numRuns: RUNS })
  }, Math.max(120_000, RUNS * 1000))

  it('no honest host is blamed for an attacker\'s change, and no sync between honest hosts ends as misbehaviour', () => {
    expect(blamed.length, report(SEED, 'blame', blamed)).toBe(0)
  })

  it('a request an honest host received is decided by an honest host\'s copy, whatever copies attackers store', () => {
    expect(decided.length, report(SEED, 'requests', decided)).toBe(0)
  })

  it('(a–c hold in these cases too)', () => {
    expect(broken.length, report(SEED, 'core', broken)).toBe(0)
  })
})
