/**
 * Image fetch progress on gossip: a host tells the mesh how far it got with the image of a VM, so
 * that `vm show` anywhere can show it. Gossip messages carry no signature of their own (changes are
 * signed by their authors, and checked by the store), so a progress report is signed by the host
 * that sends it, with its libp2p key: no member can report progress in another host's name.
 *
 *   {"body": "<JSON of ImageProgress>", "host": "<peer id>", "sig": "<base64 Ed25519 of body>"}
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'

export interface ImageProgress { vm: string, sha256: string, received: number, total: number, peer: string }

/** Larger reports are refused unread. */
export const MAX_PROGRESS_BYTES = 1024

const enc = new TextEncoder()
const dec = new TextDecoder()

export async function sealProgress (key: PrivateKey, host: string, p: ImageProgress): Promise<Uint8Array> {
  const body = JSON.stringify({ vm: p.vm, sha256: p.sha256, received: p.received, total: p.total, peer: p.peer })
  const sig = await key.sign(enc.encode(body))
  return enc.encode(JSON.stringify({ body, host, sig: Buffer.from(sig).toString('base64') }))
}

function isProgress (v: any): v is ImageProgress {
  return typeof v === 'object' && v !== null && typeof v.vm === 'string' && typeof v.sha256 === 'string' &&
    Number.isSafeInteger(v.received) && Number.isSafeInteger(v.total) && v.received >= 0 && v.received <= v.total &&
    typeof v.peer === 'string'
}

/**
 * The report and the host it names, without checking the signature: only for a message that
 * openProgress has accepted already (gossipsub's topic validator). Undefined when malformed.
 */
export function readProgress (data: Uint8Array): { host: string, progress: ImageProgress, body: string, sig: string } | undefined {
  if (data.length > MAX_PROGRESS_BYTES) return undefined
  try {
    const m = JSON.parse(dec.decode(data))
    if (typeof m?.body !== 'string' || typeof m.host !== 'string' || typeof m.sig !== 'string') return undefined
    const progress = JSON.parse(m.body)
    return isProgress(progress) ? { host: m.host, progress, body: m.body, sig: m.sig } : undefined
  } catch {
    return undefined
  }
}

/** The report and the host that signed it; undefined for anything malformed or badly signed. */
export async function openProgress (data: Uint8Array): Promise<{ host: string, progress: ImageProgress } | undefined> {
  const r = readProgress(data)
  if (r === undefined) return undefined
  try {
    const key = peerIdFromString(r.host).publicKey
    if (key === undefined || !await key.verify(enc.encode(r.body), Buffer.from(r.sig, 'base64'))) return undefined
    return { host: r.host, progress: r.progress }
  } catch {
    return undefined
  }
}
