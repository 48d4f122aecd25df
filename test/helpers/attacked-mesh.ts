/**
 * What most adversarial tests start from: real daemons formed into one mesh, optionally a user
 * key every host trusts, and an attacking member built on the project's own stack (NetAttacker)
 * admitted and joined. `stop` tears it all down, also after a failed setup.
 *
 * @example
 * let t: AttackedMesh
 * beforeAll(async () => { t = await attackedMesh(['alpha', 'bravo'], CONFIG, { user: 'ada' }) })
 * afterAll(async () => { await t?.stop() })
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestMesh, type TestDaemon } from './daemon.ts'
import { joinAttacker, type NetAttacker } from './attacker.ts'
import { makeUser, type User } from './users.ts'

export interface AttackedMesh {
  mesh: TestMesh
  daemons: TestDaemon[]
  /** The attacking member. */
  m: NetAttacker
  /** A temp dir of the test's own (keyrings, key files). */
  dir: string
  /** Set with `{ user }`: a key every daemon trusts. */
  user: User
  stop: () => Promise<void>
}

export async function attackedMesh (names: string[], config: string, opts: { user?: string } = {}): Promise<AttackedMesh> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-adv-'))
  const mesh = await TestMesh.create()
  let m: NetAttacker | undefined
  const stop = async (): Promise<void> => {
    await m?.stop()
    await mesh.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
  try {
    const daemons = await mesh.form(names, config)
    let user: User | undefined
    if (opts.user !== undefined) {
      user = await makeUser(daemons[0], dir, opts.user)
      for (const d of daemons) {
        const r = await d.cli('trust', 'add', user.keyFile)
        if (r.code !== 0) throw new Error(`trust add on ${d.name}: ${r.stderr}`)
      }
    }
    m = await joinAttacker(daemons)
    return { mesh, daemons, m, dir, user: user as User, stop }
  } catch (err) {
    await stop()
    throw err
  }
}
