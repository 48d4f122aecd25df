/**
 * A cold move carries the VM's disk (`vm move`, crdt/world.ts `move`). The host the VM leaves
 * stops it, then pushes its disk — the qcow2 overlay over the base image — to the host that takes
 * it, over a libp2p stream (encrypted by the connection, the peer authenticated by its key). The
 * receiver takes it only for a move the state names: the VM placed on the receiver, moving from
 * the sender, by that very request (`accept`); it checks the size and the sha256 before the disk
 * becomes the VM's, then points the overlay at its own copy of the base image (the same content
 * under another path). Until then the VM waits on the new host: it never starts there from its
 * image while the old host may still hand its disk over.
 *
 *   sender   → {vm, request, sha256, size} or {vm, request, none: true} (no disk: it never ran)
 *   receiver → {ok: true} | {error}
 *   sender   → data frames, then an empty frame
 *   receiver → {ok: true} | {error}
 *
 * Files, in the VM's directory (`<state>/vms/<name>/`, as the QEMU and libvirt drivers keep it):
 * `incoming.qcow2` + `incoming.json` (a received disk and the move it belongs to), `moved-in`
 * (the request of the move whose disk — or image — the overlay now is).
 *
 * @example
 * const disks = new DiskHandover({ stateDir, log, accept: (peer, h) => … })
 * p2p.handle(DISK_PROTOCOL, ({ stream, connection }) => disks.serve(stream, connection.remotePeer.toString()))
 * await disks.send(() => diskStream(p2p, toPeer), vmId, requestId)   // on the host the VM leaves, once stopped
 * if (await disks.received(name, request)) await disks.adopt(name, request, spec)   // on the new host
 */
import { lpStream } from 'it-length-prefixed-stream'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream } from '@libp2p/interface'
import type { P2PNode } from '../mesh/index.ts'
import type { Logger } from '../log.ts'
import { check, realExec, type Exec } from '../exec.ts'
import { vmDir, vmName, type VmSpec } from './hypervisor/types.ts'

export const DISK_PROTOCOL = '/picocloud/disk/1.0.0'
const CHUNK = 256 * 1024
const HEADER_BYTES = 4096
const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v))
const dec = (b: { subarray: () => Uint8Array }): any => JSON.parse(new TextDecoder().decode(b.subarray()))

export interface DiskHeader { vm: string, request: string, sha256?: string, size?: number, none?: true }

export interface DiskHandoverInit {
  stateDir: string
  log: Logger
  /**
   * Whether `peer` may hand this disk over now: the largest size accepted, or why not. Decided
   * from this host's view of the state (the VM placed here, moving from `peer` by `request`).
   */
  accept: (peer: string, header: DiskHeader) => { maxBytes: number } | { refuse: string }
  exec?: Exec
}

const HEX64 = /^[0-9a-f]{64}$/

function validHeader (h: any): h is DiskHeader {
  return typeof h === 'object' && h !== null && typeof h.vm === 'string' && HEX64.test(h.vm) &&
    typeof h.request === 'string' && HEX64.test(h.request) &&
    (h.none === true || (typeof h.sha256 === 'string' && HEX64.test(h.sha256) && Number.isSafeInteger(h.size) && h.size >= 0))
}

export class DiskHandover {
  private readonly init: DiskHandoverInit
  private readonly exec: Exec

  constructor (init: DiskHandoverInit) {
    this.init = init
    this.exec = init.exec ?? realExec
  }

  private files (name: string): { dir: string, overlay: string, incoming: string, meta: string, marker: string } {
    const dir = vmDir(this.init.stateDir, name)
    return { dir, overlay: join(dir, 'overlay.qcow2'), incoming: join(dir, 'incoming.qcow2'), meta: join(dir, 'incoming.json'), marker: join(dir, 'moved-in') }
  }

  /** Receives one disk from `peer` (the DISK_PROTOCOL handler). */
  async serve (stream: Stream, peer: string): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: CHUNK + HEADER_BYTES })
    const reply = async (v: unknown): Promise<void> => { await lp.write(enc(v), { signal: AbortSignal.timeout(10_000) }) }
    let part: string | undefined
    try {
      const header = dec(await lp.read({ signal: AbortSignal.timeout(10_000) }))
      if (!validHeader(header)) { await reply({ error: 'malformed header' }); return }
      const verdict = this.init.accept(peer, header)
      if ('refuse' in verdict) {
        this.init.log.warn('refused a disk hand-over', { peer, vm: header.vm.slice(0, 12), reason: verdict.refuse })
        await reply({ error: verdict.refuse })
        return
      }
      const f = this.files(vmName(header.vm))
      if (await this.received(vmName(header.vm), header.request) !== undefined || await this.adopted(vmName(header.vm), header.request)) {
        await reply({ ok: true, already: true })
        return
      }
      await mkdir(f.dir, { recursive: true, mode: 0o700 })
      if (header.none === true) {
        await rm(f.incoming, { force: true })
        await writeFile(f.meta, JSON.stringify({ request: header.request, none: true }) + '\n', { mode: 0o600 })
        await reply({ ok: true })
        return
      }
      const size = header.size as number
      if (size > verdict.maxBytes) { await reply({ error: `a disk of ${size} bytes is larger than this VM's ${verdict.maxBytes}` }); return }
      await reply({ ok: true })
      part = `${f.incoming}.part`
      const fh = await open(part, 'w', 0o600)
      const hash = createHash('sha256')
      let got = 0
      try {
        for (;;) {
          const chunk = (await lp.read({ signal: AbortSignal.timeout(60_000) })).subarray()
          if (chunk.length === 0) break
          got += chunk.length
          if (got > size) throw new Error(`sent more than the ${size} bytes it announced`)
          hash.update(chunk)
          await fh.write(chunk)
        }
        await fh.sync()
      } finally {
        await fh.close()
      }
      const sha = hash.digest('hex')
      if (got !== size || sha !== header.sha256) {
        await rm(part, { force: true })
        await reply({ error: got !== size ? `received ${got} of ${size} bytes` : 'sha256 does not match' })
        this.init.log.warn('a handed-over disk did not verify; discarded', { peer, vm: header.vm.slice(0, 12), got, size })
        return
      }
      await rename(part, f.incoming)
      part = undefined
      await writeFile(f.meta, JSON.stringify({ request: header.request, sha256: sha }) + '\n', { mode: 0o600 })
      this.init.log.info('received a disk for a moved VM', { peer, vm: header.vm.slice(0, 12), bytes: size })
      await reply({ ok: true })
    } catch (err: any) {
      this.init.log.warn('disk hand-over failed', { peer, error: err.message })
      stream.abort(err)
    } finally {
      if (part !== undefined) await rm(part, { force: true }).catch(() => {})
    }
    await stream.close().catch(() => {})
  }

  /**
   * Pushes the disk of VM `vmId` (stopped) for move `request` on a stream `open` gives (to the new
   * host: `diskStream`); resolves once the receiver verified it.
   */
  async send (open: () => Promise<Stream>, vmId: string, request: string): Promise<{ bytes: number }> {
    const f = this.files(vmName(vmId))
    const size = await stat(f.overlay).then(s => s.size, () => undefined)
    const header: DiskHeader = size === undefined ? { vm: vmId, request, none: true } : { vm: vmId, request, sha256: await sha256Of(f.overlay), size }
    const stream = await open()
    const lp = lpStream(stream, { maxDataLength: HEADER_BYTES })
    try {
      await lp.write(enc(header))
      const first = dec(await lp.read({ signal: AbortSignal.timeout(30_000) }))
      if (first?.ok !== true) throw new Error(`refused: ${String(first?.error ?? 'no answer')}`)
      if (first.already === true || header.none === true) return { bytes: 0 }
      for await (const chunk of createReadStream(f.overlay, { highWaterMark: CHUNK })) await lp.write(chunk as Buffer)
      await lp.write(new Uint8Array(0))
      const last = dec(await lp.read({ signal: AbortSignal.timeout(120_000) }))
      if (last?.ok !== true) throw new Error(`not accepted: ${String(last?.error ?? 'no answer')}`)
      return { bytes: size as number }
    } catch (err) {
      stream.abort(err as Error)
      throw err
    } finally {
      await stream.close().catch(() => {})
    }
  }

  /** What arrived here for move `request`: 'disk', 'none' (the VM had no disk yet), or undefined. */
  async received (name: string, request: string): Promise<'disk' | 'none' | undefined> {
    const meta = await readFile(this.files(name).meta, 'utf8').then(t => JSON.parse(t), () => undefined)
    if (meta?.request !== request) return undefined
    return meta.none === true ? 'none' : 'disk'
  }

  /** Whether the VM's overlay is already what move `request` left it (its disk, or its image). */
  async adopted (name: string, request: string): Promise<boolean> {
    return (await readFile(this.files(name).marker, 'utf8').catch(() => '')).trim().split(' ')[0] === request
  }

  /** How move `request` was settled here: 'disk' (handed over) or 'image', or undefined. */
  async adoptedFrom (name: string, request: string): Promise<'disk' | 'image' | undefined> {
    const [r, how] = (await readFile(this.files(name).marker, 'utf8').catch(() => '')).trim().split(' ')
    return r !== request ? undefined : how === 'image' ? 'image' : 'disk'
  }

  /**
   * Makes the received disk the VM's overlay, backed by this host's copy of the image; with no
   * disk received (`fromImage`, or the sender had none) the VM starts from its image, so an older
   * overlay of it here (it ran here before) is removed.
   */
  async adopt (name: string, request: string, spec: Pick<VmSpec, 'disk'>, fromImage = false): Promise<void> {
    const f = this.files(name)
    await mkdir(f.dir, { recursive: true, mode: 0o700 })
    const got = fromImage ? undefined : await this.received(name, request)
    if (got === 'disk') {
      await check(this.exec, 'qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', spec.disk.format, '-b', spec.disk.baseImage, f.incoming])
      await rename(f.incoming, f.overlay)
    } else {
      await rm(f.overlay, { force: true })
    }
    await rm(f.meta, { force: true })
    await writeFile(f.marker, `${request} ${got === 'disk' ? 'disk' : 'image'}\n`, { mode: 0o600 })
  }
}

/** A DISK_PROTOCOL stream to `peer`. */
export async function diskStream (p2p: P2PNode, peer: string): Promise<Stream> {
  const conn = await p2p.dial(peerIdFromString(peer), { signal: AbortSignal.timeout(10_000) })
  return await conn.newStream(DISK_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
}

async function sha256Of (path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) h.update(chunk as Buffer)
  return h.digest('hex')
}
