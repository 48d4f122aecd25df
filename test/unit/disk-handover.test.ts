/**
 * The disk hand-over of a cold move (node/compute/disk-handover.ts) over an in-memory stream: a
 * real qcow2 overlay goes across, is verified, and becomes the VM's overlay over the receiver's
 * own copy of the base image. Attacks: a hand-over the receiver's state does not name, a disk
 * larger than the VM's, bytes that do not match the announced sha256.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { duplexPair } from 'it-pair/duplex'
import { lpStream } from 'it-length-prefixed-stream'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, mkdir, readFile, rm, writeFile, access } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DiskHandover, type DiskHeader } from '../../node/compute/disk-handover.ts'
import { realExec, check } from '../../node/exec.ts'
import { silentLogger } from '../../node/log.ts'

const qemuImg = (await realExec('sh', ['-c', 'command -v qemu-img']).catch(() => ({ code: 1 }))).code === 0
if (!qemuImg) console.log('skipping the qcow2 hand-over test: qemu-img is not installed (Debian package qemu-utils; CI installs it: .ci/install-system-packages)')

const VM = 'c'.repeat(64)
const REQ = 'd'.repeat(64)
const NAME = `pc-${VM.slice(0, 8)}`
const SENDER = '12D3KooW' + 'S'.repeat(44)

/** A libp2p-like stream pair (source, sink, close, abort). */
function streams (): [any, any] {
  const [a, b] = duplexPair<any>()
  const wrap = (d: any): any => ({ ...d, close: async () => {}, abort: () => {} })
  return [wrap(a), wrap(b)]
}

describe('disk hand-over', () => {
  let dir: string
  let from: string
  let to: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-disk-'))
    from = join(dir, 'from')
    to = join(dir, 'to')
    await mkdir(join(from, 'vms', NAME), { recursive: true })
  })
  afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

  function pair (accept: (peer: string, h: DiskHeader) => { maxBytes: number } | { refuse: string }): { send: () => Promise<{ bytes: number }>, receiver: DiskHandover } {
    const sender = new DiskHandover({ stateDir: from, log: silentLogger, accept: () => ({ refuse: 'not here' }) })
    const receiver = new DiskHandover({ stateDir: to, log: silentLogger, accept })
    const send = async (): Promise<{ bytes: number }> => {
      const [a, b] = streams()
      const served = receiver.serve(b, SENDER)
      try { return await sender.send(async () => a, VM, REQ) } finally { await served }
    }
    return { send, receiver }
  }

  it.skipIf(!qemuImg)('a stopped VM\'s overlay goes across, verified, and becomes the VM\'s disk over the receiver\'s own base image', async () => {
    const baseFrom = join(from, 'base.raw')
    const baseTo = join(to, 'images', 'base.raw')
    await writeFile(baseFrom, randomBytes(1024 * 1024))
    await mkdir(join(to, 'images'), { recursive: true })
    await writeFile(baseTo, await readFile(baseFrom))
    const overlay = join(from, 'vms', NAME, 'overlay.qcow2')
    await check(realExec, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', baseFrom, overlay, '64M'])
    await check(realExec, 'qemu-io', ['-c', 'write -P 0x5a 40M 1M', overlay]).catch(async () => {
      // qemu-io may be missing: the overlay then carries only its header, which is enough here.
    })
    const sent = await readFile(overlay)
    const { send, receiver } = pair((peer, h) => peer === SENDER && h.request === REQ ? { maxBytes: 2 ** 30 } : { refuse: 'no' })
    expect(await send()).toEqual({ bytes: sent.length })
    expect(await receiver.received(NAME, REQ)).toBe('disk')
    await receiver.adopt(NAME, REQ, { disk: { baseImage: baseTo, format: 'raw' } })
    const got = join(to, 'vms', NAME, 'overlay.qcow2')
    const info = JSON.parse(await check(realExec, 'qemu-img', ['info', '--output=json', got]))
    expect(info['backing-filename']).toBe(baseTo)
    expect(await receiver.adopted(NAME, REQ)).toBe(true)
    expect(await receiver.adoptedFrom(NAME, REQ)).toBe('disk')
    // A second hand-over of the same move is taken as done, not received twice.
    expect(await send()).toEqual({ bytes: 0 })
  })

  it('a VM that never had a disk hands over "none": the receiver starts it from its image, removing an older disk of it', async () => {
    const { send, receiver } = pair(() => ({ maxBytes: 2 ** 30 }))
    await mkdir(join(to, 'vms', NAME), { recursive: true })
    await writeFile(join(to, 'vms', NAME, 'overlay.qcow2'), 'stale')
    expect(await send()).toEqual({ bytes: 0 })
    expect(await receiver.received(NAME, REQ)).toBe('none')
    await receiver.adopt(NAME, REQ, { disk: { baseImage: '/nowhere', format: 'raw' } })
    await expect(access(join(to, 'vms', NAME, 'overlay.qcow2'))).rejects.toThrow()
    expect(await receiver.adoptedFrom(NAME, REQ)).toBe('image')
  })

  it('a hand-over the receiver\'s state does not name is refused, and nothing is written', async () => {
    await writeFile(join(from, 'vms', NAME, 'overlay.qcow2'), randomBytes(4096))
    const { send, receiver } = pair(() => ({ refuse: 'the state names no such move of this VM from that host' }))
    await expect(send()).rejects.toThrow(/refused: the state names no such move/)
    expect(await receiver.received(NAME, REQ)).toBeUndefined()
    await expect(access(join(to, 'vms', NAME))).rejects.toThrow()
  })

  it('a disk larger than the VM\'s is refused before any byte is taken', async () => {
    await writeFile(join(from, 'vms', NAME, 'overlay.qcow2'), randomBytes(8192))
    const { send, receiver } = pair(() => ({ maxBytes: 4096 }))
    await expect(send()).rejects.toThrow(/larger than this VM's 4096/)
    expect(await receiver.received(NAME, REQ)).toBeUndefined()
  })

  it('bytes that do not match the announced sha256 are discarded (a hostile sender)', async () => {
    const receiver = new DiskHandover({ stateDir: to, log: silentLogger, accept: () => ({ maxBytes: 2 ** 20 }) })
    const [a, b] = streams()
    const served = receiver.serve(b, SENDER)
    const lp = lpStream(a)
    const data = randomBytes(1000)
    const wrong = createHash('sha256').update('something else').digest('hex')
    await lp.write(new TextEncoder().encode(JSON.stringify({ vm: VM, request: REQ, sha256: wrong, size: data.length })))
    expect(JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))).toEqual({ ok: true })
    await lp.write(data)
    await lp.write(new Uint8Array(0))
    expect(JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))).toEqual({ error: 'sha256 does not match' })
    await served
    expect(await receiver.received(NAME, REQ)).toBeUndefined()
    await expect(access(join(to, 'vms', NAME, 'incoming.qcow2'))).rejects.toThrow()
    await expect(access(join(to, 'vms', NAME, 'incoming.qcow2.part'))).rejects.toThrow()
  })
})
