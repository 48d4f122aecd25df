/**
 * Crash-safe file writes. A file is written to a temporary sibling, fsynced, renamed over the
 * target and the directory fsynced, so a `kill -9` leaves either the old or the new content.
 */
import { open, rename, mkdir, chmod, stat } from 'node:fs/promises'
import { dirname, join, basename } from 'node:path'
import { randomBytes } from 'node:crypto'

/**
 * `tmp` names a fixed temporary file (overwritten if a killed write left it), for big files written
 * again and again where random names would pile up after crashes; by default a fresh random name.
 */
export async function writeFileAtomic (path: string, data: string | Uint8Array, mode = 0o600, tmp?: string): Promise<void> {
  const fixed = tmp !== undefined
  tmp ??= join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`)
  const fh = await open(tmp, fixed ? 'w' : 'wx', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
  await syncDir(dirname(path))
}

export async function syncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try { await fh.sync() } finally { await fh.close() }
}

/** Creates `dir` (and parents) and makes sure it has exactly `mode`. */
export async function ensureDir (dir: string, mode = 0o700): Promise<void> {
  await mkdir(dir, { recursive: true, mode })
  const st = await stat(dir)
  if ((st.mode & 0o777) !== mode) await chmod(dir, mode)
}

/** True when a secret file can be read by group or others (a warning, like ssh's). */
export async function isLooseSecret (path: string): Promise<boolean> {
  const st = await stat(path)
  return (st.mode & 0o077) !== 0
}
