/**
 * Image transfer between two daemons on loopback (offered over libp2p, bytes over the side channel
 * of node/compute/images/bulk.ts) against the bare baseline: `cat` of the same file through a TCP socket on
 * loopback into a file (and, beside it, into a reader that drops the bytes).
 * Run: node bench/images.ts [MiB]
 */
import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { randomBytes } from 'node:crypto'
import { open, rm, stat, writeFile } from 'node:fs/promises'
import { closeSync, openSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { TestMesh } from '../test/helpers/daemon.ts'
import { waitFor } from '../test/helpers/wait.ts'

export interface TransferResult {
  mib: number
  /** From the signed vm.create to the whole file in B's store (placement included). */
  picocloudMiBs: number
  /** The fetch alone, as B's daemon timed it: request to the peer → verified, fsynced, in the store. */
  fetchMiBs: number
  /** How the bytes came: side-channel or libp2p. */
  over: string
  /** cat through a socket into a file on the other end (`nc -l PORT > FILE`): the baseline. */
  catMiBs: number
  /** cat through a socket whose reader drops the bytes: no file at the end. */
  catDiscardMiBs: number
  ratio: number
  fetchRatio: number
  /** The fetch ÷ the cat whose bytes are dropped. */
  fetchDiscardRatio: number
}

/**
 * `cat FILE > /dev/tcp/127.0.0.1/PORT` into a TCP server on loopback; the ms from its connection to
 * the last byte. With `dest`, the server writes what it reads to that file, read by read, as
 * `nc -l PORT > DEST` does: a copy of the file through a socket. Without, it drops the bytes.
 */
async function catThroughTcp (file: string, dest?: string): Promise<number> {
  const server = createServer()
  const done = new Promise<number>(resolve => {
    server.on('connection', sock => {
      const t0 = performance.now()
      const fd = dest === undefined ? undefined : openSync(dest, 'w')
      sock.on('data', d => { if (fd !== undefined) writeSync(fd, d) })
      sock.on('end', () => {
        if (fd !== undefined) closeSync(fd)
        resolve(performance.now() - t0)
      })
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => { resolve() }))
  const port = (server.address() as { port: number }).port
  // bash's /dev/tcp: cat writes straight into the socket.
  const q = spawn('bash', ['-c', `cat "$1" > /dev/tcp/127.0.0.1/${port}`, 'bash', file], { stdio: 'ignore' })
  const closed = new Promise(resolve => q.on('close', resolve))
  const ms = await done
  await closed
  server.close()
  if (dest !== undefined) await rm(dest, { force: true })
  return ms
}

/** The median of three runs: one 256 MiB copy takes a fraction of a second, and varies. */
async function medianCat (file: string, dest?: string): Promise<number> {
  const ms: number[] = []
  for (let i = 0; i < 3; i++) ms.push(await catThroughTcp(file, dest))
  return ms.sort((a, b) => a - b)[1]
}

export async function imageTransfer (mib: number): Promise<TransferResult> {
  const mesh = await TestMesh.create()
  const file = join(mesh.dir, 'image.raw')
  try {
    const fh = await open(file, 'w')
    for (let i = 0; i < mib; i++) await fh.write(randomBytes(1024 * 1024))
    await fh.close()
    const catMs = await medianCat(file, join(mesh.dir, 'copy.raw'))
    const catDiscardMs = await medianCat(file)
    const config = 'vcpus = 4\nmem_mib = 4096\ndisk_gib = 100\nheartbeat_interval = 1\nreconnect_interval = 1\n'
    const [a, b] = await mesh.form(['img-a', 'img-b'], config)
    const keyring = join(mesh.dir, 'kr')
    await a.as(keyring, 'key', 'generate', '--name', 'bench', '--email', 'b@example.org')
    await writeFile(join(mesh.dir, 'k.asc'), (await a.as(keyring, 'key', 'export')).stdout)
    for (const d of [a, b]) await d.cli('trust', 'add', join(mesh.dir, 'k.asc'))
    const added = await a.as(keyring, 'image', 'add', file, '--name', 'big')
    if (added.code !== 0) throw new Error(added.stderr)
    const sha = (await a.api.call<Array<{ sha256: string }>>('GET', '/v1/images'))[0].sha256
    // A VM placed on B makes B fetch the image (it will not boot: random bytes; that is fine).
    const t0 = performance.now()
    await b.as(keyring, 'vm', 'create', 'pull', '--image', 'big', '--cpus', '1', '--mem', '64', '--on', 'img-b', '--no-wait')
    await waitFor(async () => (await stat(join(b.state, 'images', 'sha256', sha)).catch(() => undefined))?.size === mib * 2 ** 20, { timeoutMs: 600_000, intervalMs: 20, what: 'the image on B' })
    const ms = performance.now() - t0
    const fetched = await waitFor(async () => /msg="fetched image" .*over=(\S+) ms=(\d+)/.exec(b.log) ?? undefined, { what: 'B to log the fetch' })
    const picocloudMiBs = mib / (ms / 1000)
    const fetchMiBs = mib / (Number(fetched[2]) / 1000)
    const catMiBs = mib / (catMs / 1000)
    const catDiscardMiBs = mib / (catDiscardMs / 1000)
    return {
      mib, picocloudMiBs, fetchMiBs, over: fetched[1], catMiBs, catDiscardMiBs,
      ratio: picocloudMiBs / catMiBs, fetchRatio: fetchMiBs / catMiBs, fetchDiscardRatio: fetchMiBs / catDiscardMiBs
    }
  } finally {
    await mesh.stopAll()
    await rm(file, { force: true })
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await imageTransfer(Number(process.argv[2] ?? 256))
  console.log(JSON.stringify(r))
  process.exit(0)
}
