/**
 * Signing on the user's side: pick the user's key, get its passphrase (option, file, environment,
 * or a prompt on a terminal), build and sign a request, submit it, and wait for its outcome.
 */
import { createInterface } from 'node:readline'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { ApiClient } from '../api/index.ts'
import { MAX_REQUEST_WAIT_S, type StatusView } from '../../protocol/api.ts'
import type { RequestView, VmView } from '../control/index.ts'
import type { RequestKind } from '../../protocol/requests.ts'
import { line } from './output.ts'

export interface SignOptions {
  key?: string
  passphraseFile?: string
}

export async function keyring (): Promise<typeof import('../../keys/keyring.ts') & { dir: string }> {
  const k = await import('../../keys/keyring.ts')
  return { ...k, dir: k.keyringDir() }
}

/** The signing key: --key, then PICOCLOUD_KEY, then the only secret key in the keyring. */
export async function chooseKey (opts: SignOptions): Promise<string> {
  const k = await keyring()
  const { normalizeFingerprint } = await import('../../protocol/fingerprint.ts')
  const wanted = opts.key ?? process.env.PICOCLOUD_KEY
  if (wanted !== undefined && wanted !== '') return normalizeFingerprint(wanted)
  const secret = (await k.listKeys(k.dir)).filter(i => i.hasSecret && !i.revoked && !i.expired)
  if (secret.length === 1) return secret[0].fingerprint
  if (secret.length === 0) {
    throw new PicocloudError(ErrorCode.KeyNotFound, `no secret key in ${k.dir}: create one with \`picocloud key generate --name NAME --email EMAIL\` or import yours with \`picocloud key import FILE\``, 404)
  }
  throw new PicocloudError(ErrorCode.Usage, `${secret.length} secret keys in the keyring; choose one with --key FPR or PICOCLOUD_KEY (see \`picocloud key list\`)`)
}

async function prompt (question: string): Promise<string> {
  return await new Promise(resolve => {
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true })
    const out = rl as unknown as { _writeToOutput: (s: string) => void }
    let asked = false
    out._writeToOutput = (s: string) => { if (!asked) { process.stderr.write(s); asked = true } }
    rl.question(question, answer => { rl.close(); process.stderr.write('\n'); resolve(answer) })
  })
}

export async function signBytes (data: Uint8Array, opts: SignOptions): Promise<{ signature: string, fingerprint: string }> {
  const k = await keyring()
  const fingerprint = await chooseKey(opts)
  let passphrase = await k.resolvePassphrase({ passphraseFile: opts.passphraseFile })
  let key
  try {
    key = await k.loadPrivateKey(k.dir, fingerprint, passphrase)
  } catch (err: any) {
    if (err?.code !== ErrorCode.PassphraseRequired || !process.stdin.isTTY) throw err
    passphrase = await prompt(`passphrase for ${fingerprint}: `)
    key = await k.loadPrivateKey(k.dir, fingerprint, passphrase)
  }
  return { signature: await k.signDetached(key, data), fingerprint }
}

export async function meshId (api: ApiClient): Promise<string> {
  const s = await api.call<StatusView>('GET', '/v1/status')
  if (s.mesh === null) throw new PicocloudError(ErrorCode.NotInMesh, 'the daemon is not in a mesh yet: run `picocloud init` or `picocloud join` first', 409)
  return s.mesh.id
}

export async function buildSigned (api: ApiClient, kind: RequestKind, body: unknown, opts: SignOptions): Promise<{ payload: string, signature: string }> {
  const { buildPayload } = await import('../../protocol/envelope.ts')
  const issuer = await chooseKey(opts)
  const payload = buildPayload(kind, body, { mesh: await meshId(api), issuer, now: Date.now() })
  const { signature } = await signBytes(new TextEncoder().encode(payload), opts)
  return { payload, signature }
}

const done = (r: RequestView): boolean =>
  r.status === 'rejected' || r.status === 'placed' || (r.kind !== 'vm.create' && r.status === 'accepted')

/**
 * Waits until the request is placed, accepted (not a vm.create) or rejected: long polls, each
 * answered by the daemon as soon as the status changes (`?unless=`), up to the timeout.
 */
export async function waitForOutcome (api: ApiClient, id: string, timeoutMs: number): Promise<RequestView> {
  const deadline = Date.now() + timeoutMs
  let r = await api.call<RequestView>('GET', `/v1/requests/${id}`)
  for (;;) {
    const left = deadline - Date.now()
    if (done(r) || left <= 0) return r
    const wait = Math.max(0, Math.min(MAX_REQUEST_WAIT_S, Math.ceil(left / 1000)))
    const t0 = Date.now()
    const before = r.status
    r = await api.call<RequestView>('GET', `/v1/requests/${r.id}?unless=${encodeURIComponent(before)}&wait=${wait}`)
    // A daemon that does not know the long poll answers at once: do not ask it in a tight loop.
    if (r.status === before && Date.now() - t0 < 50) await new Promise(resolve => setTimeout(resolve, 100))
  }
}

const SETTLED = new Set(['running', 'failed', 'stopped', 'destroyed', 'rejected'])

/**
 * After placement, follows the VM until it runs (or fails), drawing the image download as a
 * progress bar on a terminal. Returns the last view.
 */
/**
 * Polls a VM until its status is one of `until` (by default any settled one), it runs nowhere
 * (`hypervisor = "none"`), or the time is up (said on stderr).
 */
export async function waitForVm (api: ApiClient, id: string, timeoutMs: number, err: (s: string) => void, until: ReadonlySet<string> = SETTLED): Promise<VmView> {
  const deadline = Date.now() + timeoutMs
  const tty = process.stderr.isTTY
  let drew = false
  for (;;) {
    const vm = await api.call<VmView & { progress?: { received: number, total: number } }>('GET', `/v1/vms/${id}`)
    if (vm.progress !== undefined && tty) {
      const frac = vm.progress.total === 0 ? 1 : vm.progress.received / vm.progress.total
      const bar = '#'.repeat(Math.round(frac * 30)).padEnd(30, '.')
      process.stderr.write(`\rfetching image [${bar}] ${(vm.progress.received / 2 ** 20).toFixed(1)}/${(vm.progress.total / 2 ** 20).toFixed(1)} MiB`)
      drew = true
    }
    // A VM its host's operator stopped does not start whatever its owner asks: no use waiting.
    const held = vm.operatorStop !== undefined && !until.has('stopped')
    if (until.has(vm.status) || held || vm.status === 'host-down' || !vm.runs || Date.now() > deadline) {
      if (drew) process.stderr.write('\n')
      if (Date.now() > deadline && !until.has(vm.status)) err(line`still ${vm.status} after ${Math.round(timeoutMs / 1000)} s; follow it with \`picocloud vm show ${vm.name}\``)
      return vm
    }
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

export function outcomeText (r: RequestView): string {
  const lines = [line`request ${r.id.slice(0, 16)} (${r.kind}): ${r.status}`]
  for (const x of r.reasons) lines.push(line`  ${x.hostName ?? (x.host === null ? 'every host' : x.host)}: ${x.reason}${x.detail === '' ? '' : ` — ${x.detail}`}`)
  return lines.join('\n')
}
