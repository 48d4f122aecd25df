/**
 * Every malformed call gets a clear error and a non-zero CLI exit; the daemon keeps running and
 * its state is unchanged.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { request } from 'node:http'
import { TestMesh, cli, type TestDaemon } from '../helpers/daemon.ts'

interface Raw { status: number, body: any }

async function raw (socket: string, method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<Raw> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, method, path, headers: { 'content-type': 'application/json', ...headers } }, res => {
      let text = ''
      res.on('data', d => { text += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text === '' ? undefined : JSON.parse(text) }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('bad input to the local API and the CLI', () => {
  let mesh: TestMesh
  let member: TestDaemon
  let loner: TestDaemon
  /** What a bad call could have changed: the members and the mesh. (The state itself moves on in
   *  the background — host records, resources — so its heads are not compared.) */
  let membership: string
  const membershipOf = async (d: TestDaemon): Promise<string> => {
    const s = await d.status()
    return JSON.stringify({ mesh: s.mesh, hosts: (await d.hosts()).map(h => [h.peerId, h.name]) })
  }

  beforeAll(async () => {
    mesh = await TestMesh.create()
    ;[member] = await mesh.form(['member'])
    loner = await mesh.daemon('loner')
    membership = await membershipOf(member)
  })
  afterAll(async () => { await mesh.stopAll() })
  afterEach(async () => {
    // The daemons are still there and nothing changed.
    expect(member.running && loner.running).toBe(true)
    expect(await membershipOf(member)).toBe(membership)
    expect((await loner.status()).mesh).toBeNull()
  })

  it('the socket is mode 0660 (its group may use it, nobody else)', async () => {
    const { stat } = await import('node:fs/promises')
    expect((await stat(member.socket)).mode & 0o777).toBe(0o660)
  })

  it('bad JSON: 400 BAD_JSON', async () => {
    const r = await raw(member.socket, 'POST', '/v1/admit', '{"peerId": ')
    expect(r.status).toBe(400)
    expect(r.body.error.code).toBe('BAD_JSON')
    expect(r.body.error.message).toMatch(/not valid JSON/)
  })

  it('a body that is JSON but not an object, or has unknown fields: 400 BAD_REQUEST', async () => {
    expect((await raw(member.socket, 'POST', '/v1/admit', '[1,2]')).body.error.code).toBe('BAD_REQUEST')
    const r = await raw(member.socket, 'POST', '/v1/admit', JSON.stringify({ peerId: 'x', admin: true }))
    expect(r.body.error).toEqual({ code: 'BAD_REQUEST', message: 'unknown field "admin" (allowed: peerId, name)' })
  })

  it('unknown route: 404 NOT_FOUND; wrong method: 405; unknown CLI command: exit 2', async () => {
    const r = await raw(member.socket, 'GET', '/v1/nothing-here')
    expect(r.status).toBe(404)
    expect(r.body.error.code).toBe('NOT_FOUND')
    const m = await raw(member.socket, 'DELETE', '/v1/status')
    expect(m.status).toBe(405)
    expect(m.body.error.code).toBe('METHOD_NOT_ALLOWED')
    const c = await member.cli('frobnicate')
    expect(c.code).toBe(2)
    expect(c.stderr).toMatch(/unknown command "frobnicate"/)
  })

  it('oversized body: 413 BODY_TOO_LARGE', async () => {
    const big = JSON.stringify({ peerId: 'x'.repeat(2 * 1024 * 1024) })
    const r = await raw(member.socket, 'POST', '/v1/admit', big)
    expect(r.status).toBe(413)
    expect(r.body.error.code).toBe('BODY_TOO_LARGE')
  })

  it('bad peer key: exit 1 with BAD_PEER_KEY, in words and in JSON', async () => {
    const r = await member.cli('admit', 'not-a-peer-key')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/not a peer key: "not-a-peer-key".*picocloud id/)
    const j = await member.cli('--json', 'admit', 'QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N')
    expect(j.code).toBe(1)
    expect(JSON.parse(j.stderr).error.code).toBe('BAD_PEER_KEY')
    const e = await member.cli('expel', 'nobody-by-that-name')
    expect(e.code).toBe(1)
    expect(e.stderr).toMatch(/not a peer key/)
  })

  it('bad member address: exit 1 with BAD_ADDRESS, and nothing is dialled', async () => {
    for (const addr of ['not-an-address', '/ip4/127.0.0.1/tcp/9', '/ip4/127.0.0.1/tcp/9/p2p/not-a-peer']) {
      const r = await loner.cli('--json', 'join', addr)
      expect(r.code).toBe(1)
      expect(['BAD_ADDRESS', 'BAD_PEER_KEY']).toContain(JSON.parse(r.stderr).error.code)
    }
    const words = await loner.cli('join', '/ip4/127.0.0.1/tcp/9')
    expect(words.stderr).toMatch(/names no peer: it must end in \/p2p\/<peer id>/)
    expect((await loner.status()).peers).toEqual([])
  })

  it('a member\'s address whose IP reaches another daemon (a loopback copied from the member) says so in words', async () => {
    // The member's peer id at the loner's own loopback port: the daemon that answers is not the member.
    const own = (await loner.id()).addresses.find(a => a.startsWith('/ip4/127.0.0.1/')) as string
    const memberId = (await member.id()).peerId
    const r = await loner.cli('join', `${own.replace(/\/p2p\/.*$/, '')}/p2p/${memberId}`)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/a loopback address reaches only the machine it is used on.*picocloud id` on the member/)
    expect(r.stderr).not.toMatch(/gater/)
  })

  it('a selector that is not key=value is an error, not an empty list', async () => {
    const r = await member.cli('vm', 'list', '--selector', 'zone')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/selector "zone" must be key=value/)
  })

  it('operations that need a mesh, or no mesh, say so', async () => {
    const r = await loner.cli('admit', (await member.id()).peerId)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/not in a mesh yet: run `picocloud init`/)
    const again = await member.cli('init')
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/already in mesh/)
  })

  it('a missing argument is a usage error (exit 2); an unreachable daemon is exit 3', async () => {
    const u = await member.cli('admit')
    expect(u.code).toBe(2)
    expect(u.stderr).toMatch(/usage: picocloud admit PEER-KEY/)
    const d = await cli('/nonexistent/picocloud.sock', 'status')
    expect(d.code).toBe(3)
    expect(d.stderr).toMatch(/is the daemon running\?/)
  })
})
