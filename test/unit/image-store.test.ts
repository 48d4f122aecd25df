import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { mkdtemp, rm, writeFile, readFile, readdir } from 'node:fs/promises'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { createHash, randomBytes } from 'node:crypto'
import { ImageStore, detectFormat } from '../../node/compute/images/store.ts'

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

function qcow2Header (backing = 0n, incompatible = 0n): Buffer {
  const b = Buffer.alloc(1024)
  b.write('QFI\xfb', 0, 'latin1')
  b.writeUInt32BE(3, 4)
  b.writeBigUInt64BE(backing, 8)
  b.writeBigUInt64BE(incompatible, 72)
  return b
}

async function * chunks (data: Buffer, size: number, failAfter?: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) {
    if (failAfter !== undefined && i >= failAfter) throw new Error('connection reset')
    yield data.subarray(i, i + size)
  }
}

describe('image store', () => {
  let dir: string
  let store: ImageStore
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-images-'))
    store = new ImageStore({ stateDir: dir })
  })
  afterEach(async () => { await rm(dir, { recursive: true, force: true }) })
  const leftovers = async (): Promise<string[]> => await readdir(join(dir, 'images', 'tmp'))

  it('adds a file under its sha256, verifies the expected hash, lists and removes it', async () => {
    const data = randomBytes(300_000)
    const src = join(dir, 'disk.img')
    await writeFile(src, data)
    const info = await store.add(src, { expectedSha256: sha(data) })
    expect(info).toMatchObject({ sha256: sha(data), format: 'raw', size: data.length, name: 'disk.img' })
    expect(await store.has(sha(data))).toBe(true)
    expect(store.path(sha(data))).toBe(join(dir, 'images', 'sha256', sha(data)))
    expect(await readFile(store.path(sha(data)))).toEqual(data)
    expect((await new ImageStore({ stateDir: dir }).list()).map(i => i.sha256)).toEqual([sha(data)])
    expect(await store.add(chunks(data, 4096))).toMatchObject({ sha256: sha(data) }) // same content: same entry
    await store.remove(sha(data))
    expect(await store.has(sha(data))).toBe(false)
    expect(await store.list()).toEqual([])
  })

  it('never stores a corrupted or truncated write', async () => {
    const data = randomBytes(100_000)
    const corrupted = Buffer.from(data); corrupted[5000] ^= 0xff
    await expect(store.add(chunks(corrupted, 8192), { expectedSha256: sha(data) })).rejects.toMatchObject({ code: 'IMAGE_HASH_MISMATCH' })
    await expect(store.add(chunks(data.subarray(0, 50_000), 8192), { expectedSha256: sha(data) })).rejects.toMatchObject({ code: 'IMAGE_HASH_MISMATCH' })
    await expect(store.add(chunks(data, 8192, 40_000), { expectedSha256: sha(data) })).rejects.toThrow(/connection reset/)
    expect(await store.has(sha(data))).toBe(false)
    expect(await store.has(sha(corrupted))).toBe(false)
    expect(await store.list()).toEqual([])
    expect(await leftovers()).toEqual([])
  })

  it('detects qcow2 and refuses backing files, external data files and other formats', async () => {
    expect(detectFormat(qcow2Header())).toBe('qcow2')
    expect(detectFormat(Buffer.alloc(512))).toBe('raw')
    const q = qcow2Header()
    expect(await store.add(chunks(q, 512))).toMatchObject({ format: 'qcow2' })
    await expect(store.add(chunks(qcow2Header(), 512), { format: 'raw' })).rejects.toMatchObject({ code: 'BAD_IMAGE', message: /declared raw but is qcow2/ })
    await expect(store.add(chunks(qcow2Header(1024n), 512))).rejects.toMatchObject({ code: 'BAD_IMAGE', message: /backing file/ })
    await expect(store.add(chunks(qcow2Header(0n, 4n), 512))).rejects.toMatchObject({ code: 'BAD_IMAGE', message: /external data file/ })
    const vmdk = Buffer.alloc(1024); vmdk.write('KDMV')
    await expect(store.add(chunks(vmdk, 512))).rejects.toMatchObject({ code: 'BAD_IMAGE', message: /vmdk is not accepted/ })
    await expect(store.add(chunks(Buffer.alloc(0), 1))).rejects.toMatchObject({ code: 'BAD_IMAGE', message: /empty/ })
    expect((await store.list()).map(i => i.format)).toEqual(['qcow2'])
    expect(() => store.path('../../etc/passwd')).toThrow(/sha256/)
  })

  it('accepts a real qcow2 made by qemu-img, if installed', async (ctx) => {
    try {
      execFileSync('qemu-img', ['--version'], { stdio: 'ignore' })
    } catch {
      console.log('skipping the real qcow2 test: qemu-img is not installed (Debian package qemu-utils; CI installs it: .ci/install-system-packages)')
      ctx.skip()
      return
    }
    const f = join(dir, 'real.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', f, '64M'])
    expect(await store.add(f)).toMatchObject({ format: 'qcow2' })
  })

  it('resumes a partial download from its offset and verifies the whole on finalize', async () => {
    const data = randomBytes(200_000)
    const hash = sha(data)
    const first = await store.partial(hash)
    expect(first.offset).toBe(0)
    await first.write(data.subarray(0, 70_000))
    await first.close() // the connection dropped
    expect(await store.has(hash)).toBe(false)

    const resumed = await new ImageStore({ stateDir: dir }).partial(hash) // even after a restart
    expect(resumed.offset).toBe(70_000)
    await resumed.write(data.subarray(resumed.offset))
    expect(await resumed.finalize({ name: 'from-peer' })).toMatchObject({ sha256: hash, size: data.length, format: 'raw' })
    expect(await readFile(store.path(hash))).toEqual(data)
  })

  it('rejects a partial download whose bytes are wrong, and starts it over', async () => {
    const data = randomBytes(50_000)
    const hash = sha(data)
    const p = await store.partial(hash)
    const bad = Buffer.from(data); bad[10] ^= 1
    await p.write(bad)
    await expect(p.finalize()).rejects.toMatchObject({ code: 'IMAGE_HASH_MISMATCH' })
    expect(await store.has(hash)).toBe(false)
    const again = await store.partial(hash)
    expect(again.offset).toBe(0)
    await again.discard()
  })
})
