import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { resolveConfig } from '../../node/config.ts'
import { cliSocket, DEFAULT_SOCKET } from '../../node/paths.ts'

describe('daemon configuration: flags, then environment, then the TOML file, then defaults', () => {
  let dir: string
  let file: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-cfg-'))
    file = join(dir, 'config.toml')
    await writeFile(file, 'name = "roof"\nstate = "/srv/pc"\nsocket = "/srv/pc.sock"\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\nlabels = { zone = "north" }\nvcpus = 2\n')
  })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  it('reads the file', async () => {
    const c = await resolveConfig({ config: file }, {})
    expect(c).toMatchObject({ name: 'roof', state: '/srv/pc', socket: '/srv/pc.sock', listen: ['/ip4/0.0.0.0/tcp/4001'], labels: { zone: 'north' }, capacity: { vcpus: 2 } })
  })

  it('the environment wins over the file, flags win over both', async () => {
    const env = { PICOCLOUD_CONFIG: file, PICOCLOUD_STATE: '/env/state', PICOCLOUD_SOCKET: '/env/sock' }
    expect(await resolveConfig({}, env)).toMatchObject({ state: '/env/state', socket: '/env/sock', name: 'roof' })
    expect(await resolveConfig({ state: '/flag/state', socket: '/flag/sock', listen: ['/ip4/127.0.0.1/tcp/0'] }, env))
      .toMatchObject({ state: '/flag/state', socket: '/flag/sock', listen: ['/ip4/127.0.0.1/tcp/0'] })
  })

  it('defaults apply without a file; an explicitly named missing file is an error', async () => {
    const c = await resolveConfig({}, { PICOCLOUD_CONFIG: undefined })
    expect(c.listen).toEqual(['/ip4/0.0.0.0/tcp/9777'])
    await expect(resolveConfig({ config: join(dir, 'missing.toml') }, {})).rejects.toMatchObject({ code: 'BAD_CONFIG', message: expect.stringMatching(/does not exist/) })
  })

  it('bad files are refused with the reason: unknown keys, bad TOML, bad addresses', async () => {
    const bad = async (text: string): Promise<unknown> => {
      const f = join(dir, 'bad.toml')
      await writeFile(f, text)
      return await resolveConfig({ config: f }, {}).then(() => 'accepted', (e: any) => e.message)
    }
    expect(await bad('nmae = "x"\n')).toMatch(/unknown setting "nmae"/)
    expect(await bad('name = \n')).toMatch(/not valid TOML/)
    expect(await bad('listen = ["tcp://1.2.3.4"]\n')).toMatch(/is not a multiaddr/)
    expect(await bad('hypervisor = "vmware"\n')).toMatch(/hypervisor must be/)
  })

  it('beats: 10 s idle, 2 s while holding restart VMs (never slower than idle); a faster lease than heartbeat is refused', async () => {
    const at = async (text: string): Promise<unknown> => {
      const f = join(dir, 'beats.toml')
      await writeFile(f, text)
      return await resolveConfig({ config: f }, {}).then(c => [c.heartbeatInterval, c.leaseInterval], (e: any) => e.message)
    }
    expect(await at('')).toEqual([10, 2])
    expect(await at('heartbeat_interval = 0.5\n')).toEqual([0.5, 0.5])
    expect(await at('lease_interval = 1\n')).toEqual([10, 1])
    expect(await at('heartbeat_interval = 1\nlease_interval = 3\n')).toMatch(/lease_interval \(3\) must not be longer than heartbeat_interval \(1\)/)
    expect(await at('lease_interval = 0\n')).toMatch(/lease_interval must be a positive number/)
  })

  it('image_listen: the side port for image bytes is on by default, "" turns it off, the flag wins', async () => {
    const f = join(dir, 'images.toml')
    expect((await resolveConfig({}, { PICOCLOUD_CONFIG: undefined })).imageListen).toBe(':9779')
    await writeFile(f, 'image_listen = ""\n')
    expect((await resolveConfig({ config: f }, {})).imageListen).toBeUndefined()
    expect((await resolveConfig({ config: f, imageListen: '127.0.0.1:0' }, {})).imageListen).toBe('127.0.0.1:0')
    await writeFile(f, 'image_listen = "9779"\n')
    await expect(resolveConfig({ config: f }, {})).rejects.toThrow(/image_listen: "9779" is not ADDRESS:PORT/)
  })

  it('the CLI finds the socket from --socket, then PICOCLOUD_SOCKET, then the default', () => {
    expect(cliSocket('/a.sock', { PICOCLOUD_SOCKET: '/b.sock' })).toBe('/a.sock')
    expect(cliSocket(undefined, { PICOCLOUD_SOCKET: '/b.sock' })).toBe('/b.sock')
    expect(cliSocket(undefined, {})).toBe(DEFAULT_SOCKET)
  })
})
