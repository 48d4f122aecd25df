import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { mkdtemp, rm, readFile, writeFile, appendFile, truncate, stat, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { randomBytes } from 'node:crypto'
import fc from 'fast-check'
import { ChangeLog, FILE_HEADER, MAX_RECORD, type OpenedLog } from '../../crdt/change-log.ts'
import type { Fields, Logger } from '../../node/log.ts'

const RECORD_HEADER = 16
/** Field offsets inside a record header. */
const FIELD = { magic: 0, length: 4, crc: 8, check: 12 }

let dir: string
let path: string
const opened: ChangeLog[] = []

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-changelog-'))
  path = join(dir, 'changes.log')
})

afterEach(async () => {
  for (const l of opened.splice(0)) await l.close()
  await rm(dir, { recursive: true, force: true })
})

function recorder (): Logger & { lines: Array<{ level: string, msg: string, fields?: Fields }> } {
  const lines: Array<{ level: string, msg: string, fields?: Fields }> = []
  const l: any = { lines, forComponent: () => l }
  for (const level of ['debug', 'info', 'warn', 'error']) l[level] = (msg: string, fields?: Fields) => lines.push({ level, msg, fields })
  return l
}

async function openLog (p = path, log?: Logger): Promise<OpenedLog> {
  const o = await ChangeLog.open(p, log)
  opened.push(o.log)
  return o
}

async function closeAll (): Promise<void> {
  for (const l of opened.splice(0)) await l.close()
}

/** Distinct payloads of varying length, ASCII so none holds a record magic by chance. */
const payload = (i: number) => Buffer.from(`change ${i} `.padEnd(20 + (i * 37) % 90, String.fromCharCode(97 + i % 26)))

const texts = (o: OpenedLog) => o.records.map(r => Buffer.from(r).toString())

/** A closed log of `n` records; returns their start offsets and ends. */
async function writeLog (n: number, make: (i: number) => Uint8Array = payload): Promise<{ starts: number[], ends: number[], payloads: Uint8Array[] }> {
  const { log } = await ChangeLog.open(path)
  const payloads = Array.from({ length: n }, (_, i) => make(i))
  await Promise.all(payloads.map(async p => await log.append(p)))
  await log.close()
  const { log: again, ends } = await ChangeLog.open(path)
  await again.close()
  const starts = [FILE_HEADER, ...ends.slice(0, -1)]
  return { starts, ends, payloads }
}

async function flip (at: number, mask = 0x40): Promise<void> {
  const b = await readFile(path)
  b[at] ^= mask
  await writeFile(path, b)
}

/** Every record sits where `ends` says, in the file as it is now. */
async function expectEndsMatchFile (o: OpenedLog): Promise<void> {
  const file = await readFile(path)
  expect(file.length).toBe(o.log.bytes)
  let start = FILE_HEADER
  o.records.forEach((r, i) => {
    expect(file.subarray(start + RECORD_HEADER, o.ends[i]).equals(r)).toBe(true)
    start = o.ends[i]
  })
  expect(start).toBe(o.log.bytes)
}

describe('change log', () => {
  it('starts an absent or empty file with a header, and keeps every appended record across reopens', async () => {
    const fresh = await openLog()
    expect(fresh).toMatchObject({ records: [], ends: [], truncated: 0, skipped: [] })
    expect(fresh.log.bytes).toBe(FILE_HEADER)
    expect(fresh.log.lastChecksum).toBe(0)
    expect((await readFile(path)).subarray(0, 8)).toEqual(Buffer.from('PCLOG\0\0\x02', 'latin1'))
    for (let i = 0; i < 20; i++) await fresh.log.append(payload(i))
    expect(fresh.log.records).toBe(20)
    expect(fresh.log.lastChecksum).toBe(crc32(payload(19)))
    await closeAll()

    const again = await openLog()
    expect(texts(again)).toEqual(Array.from({ length: 20 }, (_, i) => payload(i).toString()))
    expect(again).toMatchObject({ truncated: 0, skipped: [] })
    expect(again.log.records).toBe(20)
    expect(again.log.lastChecksum).toBe(crc32(payload(19)))
    await expectEndsMatchFile(again)

    await writeFile(join(dir, 'empty.log'), '')
    const empty = await openLog(join(dir, 'empty.log'))
    expect(empty.records).toEqual([])
    expect((await stat(join(dir, 'empty.log'))).size).toBe(FILE_HEADER)
  })

  it('writes concurrent appends as a group and rejects appends after close or over the size limit', async () => {
    const o = await openLog()
    await Promise.all(Array.from({ length: 200 }, async (_, i) => await o.log.append(payload(i))))
    await o.log.idle()
    expect(o.log.records).toBe(200)
    await expect(o.log.append(new Uint8Array(MAX_RECORD + 1))).rejects.toThrow(/over the limit/)
    await closeAll()
    await expect(o.log.append(payload(0))).rejects.toThrow(/closed/)
    expect((await openLog()).records).toHaveLength(200)
  })

  for (const [field, at] of [
    ['magic', FIELD.magic + 1], ['length', FIELD.length + 3], ['crc', FIELD.crc + 2], ['header check', FIELD.check],
    ['payload', RECORD_HEADER + 5], ['high length', FIELD.length]
  ] as const) {
    it(`skips record 3 of 20 with a flipped ${field} byte, keeps the other 19, and rewrites the file without it`, async () => {
      const { starts, ends } = await writeLog(20)
      await flip(starts[2] + at)
      const l = recorder()
      const o = await openLog(path, l)
      const expected = Array.from({ length: 20 }, (_, i) => payload(i).toString()).filter((_, i) => i !== 2)
      expect(texts(o)).toEqual(expected)
      expect(o.skipped).toEqual([{ offset: starts[2], bytes: ends[2] - starts[2] }])
      expect(o.truncated).toBe(0)
      expect(o.log.records).toBe(19)
      expect(o.log.lastChecksum).toBe(crc32(payload(19)))
      await expectEndsMatchFile(o)
      expect(l.lines.find(x => x.level === 'warn')?.fields).toMatchObject({ regions: 1, bytes: ends[2] - starts[2], kept: 19 })
      expect(await readdir(dir)).toEqual(['changes.log'])

      // Appends go on from the clean end and survive another reopen; the corruption is gone.
      await o.log.append(payload(20))
      await closeAll()
      const again = await openLog()
      expect(texts(again)).toEqual([...expected, payload(20).toString()])
      expect(again).toMatchObject({ truncated: 0, skipped: [] })
      await expectEndsMatchFile(again)
    })
  }

  it('cuts a torn tail (mid-payload or mid-header) and keeps the records before it', async () => {
    const { starts, ends } = await writeLog(20)
    await truncate(path, ends[19] - 3)
    const l = recorder()
    const o = await openLog(path, l)
    expect(o.records).toHaveLength(19)
    expect(o.truncated).toBe(ends[19] - 3 - starts[19])
    expect(o.skipped).toEqual([])
    expect(o.log.lastChecksum).toBe(crc32(payload(18)))
    expect(l.lines.some(x => x.level === 'warn' && /torn/.test(x.msg))).toBe(true)
    await expectEndsMatchFile(o)
    await closeAll()

    await truncate(path, starts[18] + 7)
    const again = await openLog()
    expect(texts(again)).toEqual(Array.from({ length: 18 }, (_, i) => payload(i).toString()))
    expect(again.truncated).toBe(7)
    await again.log.append(payload(99))
    await closeAll()
    expect(texts(await openLog()).at(-1)).toBe(payload(99).toString())
  })

  it('cuts garbage appended after the last record, even garbage holding record magics', async () => {
    const { ends } = await writeLog(5)
    const garbage = Buffer.concat([Buffer.from('not a record at all'), Buffer.from([0x8c, 0x1a, 0x6e, 0x53, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9])])
    await appendFile(path, garbage)
    const o = await openLog()
    expect(o.records).toHaveLength(5)
    expect(o.truncated).toBe(garbage.length)
    expect(o.skipped).toEqual([])
    expect((await stat(path)).size).toBe(ends[4])
  })

  it('loses only the corrupt record when the last one is hit, with the snapshot position moving back', async () => {
    const { starts, ends } = await writeLog(20)
    await flip(starts[19] + RECORD_HEADER + 1)
    const o = await openLog()
    expect(o.records).toHaveLength(19)
    expect(o.truncated).toBe(ends[19] - starts[19])
    expect(o.log.bytes).toBe(ends[18])
    expect(o.log.lastChecksum).toBe(crc32(payload(18)))
  })

  it('skips two adjacent corrupt records, whether their headers or their payloads are hit', async () => {
    const { starts, ends } = await writeLog(20)
    const expected = Array.from({ length: 20 }, (_, i) => payload(i).toString()).filter((_, i) => i !== 2 && i !== 3)
    await flip(starts[2] + FIELD.length + 2)
    await flip(starts[3] + FIELD.magic)
    const headers = await openLog()
    expect(texts(headers)).toEqual(expected)
    // One unreadable stretch: nothing inside it says where record 4 began.
    expect(headers.skipped).toEqual([{ offset: starts[2], bytes: ends[3] - starts[2] }])
    await closeAll()

    await rm(path)
    const fresh = await writeLog(20)
    await flip(fresh.starts[2] + RECORD_HEADER + 2)
    await flip(fresh.starts[3] + RECORD_HEADER + 9)
    const payloads = await openLog()
    expect(texts(payloads)).toEqual(expected)
    expect(payloads.skipped).toEqual([
      { offset: fresh.starts[2], bytes: fresh.ends[2] - fresh.starts[2] },
      { offset: fresh.starts[3], bytes: fresh.ends[3] - fresh.starts[3] }
    ])
  })

  it('skips a corrupt stretch and a torn tail at once', async () => {
    const { starts, ends } = await writeLog(10)
    await flip(starts[4] + FIELD.check)
    await truncate(path, ends[9] - 1)
    const o = await openLog()
    expect(o.records).toHaveLength(8)
    expect(o.skipped).toEqual([{ offset: starts[4], bytes: ends[4] - starts[4] }])
    expect(o.truncated).toBe(ends[9] - 1 - starts[9])
    await expectEndsMatchFile(o)
  })

  it('does not take a record hidden inside another record\'s payload for a real one', async () => {
    // A peer could put a whole framed record into a change; without this file's salt its header does not check.
    const inner = Buffer.alloc(RECORD_HEADER + 8, 7)
    inner.writeUInt32BE(0x8c1a6e53, 0)
    inner.writeUInt32BE(8, 4)
    inner.writeUInt32BE(crc32(inner.subarray(16)), 8)
    inner.writeUInt32BE(crc32(inner.subarray(0, 12)), 12)
    const { starts } = await writeLog(4, i => i === 1 ? Buffer.concat([Buffer.from('x'), inner]) : payload(i))
    await flip(starts[1] + FIELD.length)
    const o = await openLog()
    expect(texts(o)).toEqual([0, 2, 3].map(i => payload(i).toString()))
  })

  describe('refuses files it cannot read, and names why', () => {
    it('a change log of format 1 (no header)', async () => {
      const p = payload(0)
      const rec = Buffer.alloc(8)
      rec.writeUInt32BE(p.length, 0)
      rec.writeUInt32BE(crc32(p), 4)
      await writeFile(path, Buffer.concat([rec, p]))
      const err = await ChangeLog.open(path).catch((e: unknown) => e)
      expect(err).toMatchObject({ name: 'ChangeLogVersionError', version: 1 })
      expect((err as Error).message).toContain(`${path} was written by an older picocloud (change log format 1)`)
      expect((err as Error).message).toContain('join the mesh again')
      // Never rewritten or cut.
      expect((await stat(path)).size).toBe(8 + p.length)
    })

    it('an unknown format version', async () => {
      await writeLog(2)
      const b = await readFile(path)
      b.writeUInt16BE(3, 6)
      b.writeUInt32BE(crc32(b.subarray(0, 12)), 12)
      await writeFile(path, b)
      await expect(ChangeLog.open(path)).rejects.toMatchObject({ name: 'ChangeLogVersionError', version: 3, message: expect.stringContaining('format 3') })
    })

    it('a corrupt header or a file that is not a change log', async () => {
      await writeLog(2)
      await flip(9)
      await expect(ChangeLog.open(path)).rejects.toMatchObject({ name: 'ChangeLogHeaderError', message: expect.stringContaining('corrupt change log header') })
      await writeFile(path, 'hello, world\n')
      await expect(ChangeLog.open(path)).rejects.toMatchObject({ name: 'ChangeLogHeaderError', message: expect.stringContaining('not a picocloud change log') })
      await writeFile(path, 'PCLOG')
      await expect(ChangeLog.open(path)).rejects.toMatchObject({ name: 'ChangeLogHeaderError' })
    })
  })

  it('opens 50 MB of garbage in linear time, also garbage dense with record magics', async () => {
    const { ends } = await writeLog(3)
    const size = 50 * 1024 * 1024
    // Random bytes, then a stretch where every 8 bytes looks like the start of a short record.
    const garbage = Buffer.alloc(size)
    for (let off = 0; off < size / 2; off += 65536) garbage.set(randomBytes(65536), off)
    for (let off = size / 2; off + 8 <= size; off += 8) { garbage.writeUInt32BE(0x8c1a6e53, off); garbage.writeUInt32BE(1, off + 4) }
    await appendFile(path, garbage)
    const t = performance.now()
    const o = await openLog()
    expect(performance.now() - t).toBeLessThan(15_000)
    expect(o.records).toHaveLength(3)
    expect(o.truncated).toBe(size)
    expect((await stat(path)).size).toBe(ends[2])
    await closeAll()

    // The same garbage between records: skipped, and the records after it kept.
    await appendFile(path, garbage)
    const { log } = await openLog()
    await log.append(payload(3))
    await closeAll()
    const raw = await readFile(path)
    await writeFile(path, Buffer.concat([raw.subarray(0, ends[2]), garbage, raw.subarray(ends[2])]))
    const t2 = performance.now()
    const o2 = await openLog()
    expect(performance.now() - t2).toBeLessThan(15_000)
    expect(texts(o2)).toEqual([0, 1, 2, 3].map(i => payload(i).toString()))
    expect(o2.skipped).toEqual([{ offset: ends[2], bytes: size }])
  }, 120_000)

  it('never loses more than the records random corruptions hit, and never throws unless the header is hit', async () => {
    const log = fc.uint8Array({ minLength: 0, maxLength: 300 })
    await fc.assert(fc.asyncProperty(
      fc.array(log, { minLength: 1, maxLength: 12 }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 3 }),
      async (payloads, flips) => {
        await rm(path, { force: true })
        const { starts, ends } = await writeLog(payloads.length, i => payloads[i])
        const b = await readFile(path)
        const hit = new Set<number>()
        let header = false
        const flipped = new Set<number>()
        for (const [n, mask] of flips) {
          const at = n % b.length
          // A byte flipped twice might come back whole.
          if (flipped.has(at)) continue
          flipped.add(at)
          b[at] ^= mask
          if (at < FILE_HEADER) header = true
          const i = starts.findIndex((s, j) => at >= s && at < ends[j])
          if (i >= 0) hit.add(i)
        }
        await writeFile(path, b)
        if (header) {
          await expect(ChangeLog.open(path)).rejects.toMatchObject({ name: expect.stringMatching(/^ChangeLog(Header|Version)Error$/) })
          return
        }
        const o = await ChangeLog.open(path)
        await o.log.close()
        const kept = payloads.filter((_, i) => !hit.has(i))
        expect(o.records.map(r => Buffer.from(r).toString('hex'))).toEqual(kept.map(p => Buffer.from(p).toString('hex')))
        const lost = [...hit].reduce((n, i) => n + ends[i] - starts[i], 0)
        expect(o.skipped.reduce((n, s) => n + s.bytes, 0) + o.truncated).toBe(lost)
        // Open leaves a clean file.
        const again = await ChangeLog.open(path)
        await again.log.close()
        expect(again).toMatchObject({ truncated: 0, skipped: [], ends: o.ends })
      }
    ), { numRuns: 300 })
  }, 120_000)
})
