/**
 * The Byzantine fuzzer (issue 12, "What must be shown"): random honest traffic mixed with the
 * changes of one or two attacking members, delivered to three honest hosts in random orders and
 * random partial subsets, then synced to quiescence; the honest hosts must converge, nothing may
 * throw, and the world must be what the honest changes alone give.
 *
 * Seeded: the seed is printed; `PICOCLOUD_FUZZ_SEED=<n>` replays a run, `PICOCLOUD_FUZZ_RUNS=<n>`
 * changes the number of cases (CI: the fixed seed below, 200 cases), `PICOCLOUD_FUZZ_SEED=random`
 * draws one. A failing case is shrunk by fast-check and printed step by step with its path
 * (`PICOCLOUD_FUZZ_PATH` replays that case alone).
 *
 * A case (test/helpers/byzantine-fuzz.ts). Hosts: the founder H0, honest H1 and H2, attackers M0
 * and M1 (members admitted by the founder), a stranger S (never admitted). Honest steps: a host
 * updates its record, claims a VM, stores a request (a real payload; the signature is a stand-in
 * judged by the real envelope checks, test/helpers/fake-requests.ts), admits a newcomer; the
 * founder flips the admission policy or expels an attacker; two honest hosts sync. Attacker steps,
 * each delivered to a random subset of the honest hosts in a random order:
 * - changes that keep their feed's rules: its record (also malformed: null entries, numbers for
 *   lists, no addresses, 10,001 claims, control characters, a null record, absurd capacity),
 *   padding, membership events with a true, partial or empty `seen` (admissions, expulsions of
 *   honest hosts, policies, its own re-admission), stored requests, copies of honest hosts'
 *   requests with a broken signature or a changed payload, final rejections of others' requests,
 *   an equivocation (a fork to some hosts, the main chain to others), its whole feed again, and
 *   learning the honest hosts' changes (so that its `seen` is current);
 * - changes that break them or are not its to make: a bad signature, its change signed by another
 *   key, rewriting its events or its stored requests, a genesis, an unknown part of the state, a
 *   dependency on another feed, more than 256 KiB, no dependencies, a sequence number that skips,
 *   the stranger's feed, and any earlier change replayed.
 *
 * The checks, after the honest hosts have synced until nothing moves:
 * (a) Convergence: the honest hosts hold the same frontier and evidence (`digestInput`), the same
 *     view (`doc`: mesh and policy, members, records, requests) and the same world (`deriveWorld`
 *     with every stored copy judged at its own stamp).
 * (b) Nothing throws reading it: the world, `listVms`, `vmView`, `requestView`, placement.
 * (c) The world is what the honest changes alone give. Precisely: a reference host that receives,
 *     at once and in order, (1) every honest host's whole feed, (2) the attackers' changes that the
 *     honest hosts applied and (3) the equivocation evidence they hold, has the same view and world
 *     as the honest hosts. What makes (2) and (3) "the attackers' changes that are valid by the
 *     rules" is checked apart, against what each attacker really signed: every applied change is
 *     one the attacker signed that keeps its feed's rules (never a refused one, never a change of
 *     the stranger); every piece of evidence pairs two changes the attacker really signed with one
 *     sequence number (an attacker that signs two changes with one sequence number has
 *     equivocated, whether or not one of them breaks the rules: whether anyone caught it depends on
 *     who saw both, so the evidence is taken from the hosts, after this check); and the attacker's
 *     chain, as far as it reached the honest hosts without a gap, stands up to the cut. So the
 *     attackers' malformed records, events that do not count, requests with broken signatures
 *     and rejections of others' requests are in the reference too, and must change nothing the
 *     rules do not let them change. On top, independent of the fold: every honest host is an active
 *     member and no honest feed is cut or short anywhere; an attacker the founder expelled (or that
 *     equivocated) is not active; a newcomer admitted only by an attacker after what the founder's
 *     expulsion of it had seen is not a member. Everything outside the attackers' own records and
 *     requests (honest records, honest members, honest requests, placement on honest hosts given
 *     the attackers' records) is part of the compared view and world.
 * (d) In fuzz-blame.test.ts (same engine, its own cases): no honest host blames another for an
 *     attacker's change (a `rejected` event against an honest sender, or a sync between honest
 *     hosts ended as misbehaviour), and a request an honest host received is decided by an honest
 *     host's copy.
 *
 * The same against three real daemons, with the attacker on libp2p: the last describe, a handful
 * of cases on one mesh, a new attacking member each (test/helpers/byzantine-daemons.ts says what
 * it checks; PICOCLOUD_FUZZ_DAEMON_CASES sets how many).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { FAST_TMP } from '../helpers/stores.ts'
import { caseArbitrary, makeKeys, runCase, fuzzSettings, report, type Case, type Keys, type Found } from '../helpers/byzantine-fuzz.ts'
import { daemonCaseArbitrary, runDaemonCase, type DaemonMesh } from '../helpers/byzantine-daemons.ts'
import { TestMesh } from '../helpers/daemon.ts'
import { joinAttacker } from '../helpers/attacker.ts'
import { makeUser } from '../helpers/users.ts'

const { seed: SEED, runs: RUNS, path: PATH } = fuzzSettings(20261207, 200)

describe(`adversarial: Byzantine fuzzer, in-process (seed ${SEED}, ${RUNS} cases)`, () => {
  let keys: Keys
  let result: fc.RunDetails<[Case]> | undefined
  const decided: Found[] = []
  let cases = 0

  beforeAll(async () => {
    console.log(`Byzantine fuzzer: seed ${SEED} (PICOCLOUD_FUZZ_SEED=${SEED} replays it), ${RUNS} cases`)
    keys = await makeKeys()
    const property = fc.asyncProperty(caseArbitrary(), async c => {
      cases++
      const out = await runCase(c, keys, FAST_TMP)
      if (out.requests.length > 0) decided.push({ c, out })
      if (out.core.length > 0) throw new Error(`${out.core.slice(0, 5).join('\n')}\nsteps:\n${out.log.join('\n')}`)
    })
    result = await fc.check(property, { seed: SEED, numRuns: RUNS, ...(PATH !== undefined ? { path: PATH } : {}), endOnFailure: false })
  }, Math.max(170_000, RUNS * 1000))

  it(`runs at least ${Math.min(RUNS, 200)} cases`, () => {
    expect(result?.failed === true || cases >= Math.min(RUNS, 200)).toBe(true)
  })

  it('(a–c) the honest hosts converge, reading their state never throws, and the world is what the honest changes alone give', () => {
    const why = result === undefined ? 'not run' : `${fc.defaultReportMessage(result) ?? ''}\n${String((result.errorInstance as Error | undefined)?.message ?? '')}`
    expect(result?.failed, why).toBe(false)
  })

  afterAll(() => {
    if (decided.length > 0) console.log(`requests decided by an attacker's copy (see fuzz-blame.test.ts): ${report(SEED, 'requests', decided)}`)
  })
})

const DAEMON_CASES = Number(process.env.PICOCLOUD_FUZZ_DAEMON_CASES ?? 8)

describe(`adversarial: Byzantine fuzzer against three real daemons (seed ${SEED}, ${DAEMON_CASES} cases)`, () => {
  let mesh: TestMesh
  let dm: DaemonMesh | undefined
  let dir: string

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-adv-fuzz-'))
    mesh = await TestMesh.create()
    const daemons = await mesh.form(['alpha', 'bravo', 'charlie'], 'hypervisor = "none"\nvcpus = 64\nmem_mib = 65536\ndisk_gib = 1000\nheartbeat_interval = 0.5\nreconnect_interval = 0.5\n')
    const user = await makeUser(daemons[0], dir, 'ada')
    for (const d of daemons) expect((await d.cli('trust', 'add', user.keyFile)).code).toBe(0)
    // An honest member that only reads: what the daemons hold, as a host of the mesh sees it.
    const observer = await joinAttacker(daemons, 'observer')
    dm = { daemons, user, meshId: (await daemons[0].status()).mesh?.id as string, observer }
  })
  afterAll(async () => {
    await dm?.observer.stop()
    await mesh.stopAll()
    await rm(dir, { recursive: true, force: true })
  })

  it('each case: the daemons agree and answer alike, every route answers, nothing of the attacker\'s that breaks the rules is held, its chain is, and the honest hosts\' standing is intact', async () => {
    const cases = fc.sample(daemonCaseArbitrary(), { seed: SEED, numRuns: DAEMON_CASES })
    const failed: string[] = []
    for (const [i, steps] of cases.entries()) {
      const { problems, log } = await runDaemonCase(dm as DaemonMesh, steps, i)
      if (problems.length > 0) failed.push(`case ${i} (seed ${SEED}): ${problems.join('; ')}\nsteps:\n${log.join('\n')}\ncase: ${JSON.stringify(steps)}`)
    }
    expect(failed, failed.join('\n\n')).toEqual([])
  }, 170_000)
})
