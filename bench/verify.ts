/**
 * How many signed requests a host can check per second: detached OpenPGP verification (the
 * dominant cost of validateEnvelope) for Ed25519 and RSA keys, and the whole envelope check with
 * keyringVerifier (a stat of the key file per check; the key is parsed again only when it changed).
 *
 *   node bench/verify.ts [seconds-per-case]     (npm's Node 24: npx node bench/verify.ts)
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKey, loadPrivateKey, signDetached, verifyDetached, keyringVerifier } from '../keys/keyring.ts'
import { buildPayload, sealEnvelope, validateEnvelope } from '../protocol/envelope.ts'

const seconds = Number(process.argv[2] ?? 2)
const dir = await mkdtemp(join(tmpdir(), 'pc-bench-verify-'))

async function measure (name: string, fn: () => Promise<unknown>): Promise<void> {
  for (let i = 0; i < 5; i++) await fn() // warm up the JIT and openpgp's lazy imports
  const until = performance.now() + seconds * 1000
  let n = 0
  const start = performance.now()
  while (performance.now() < until) {
    await fn()
    n++
  }
  const ms = performance.now() - start
  console.log(`${name.padEnd(34)} ${(n / (ms / 1000)).toFixed(0).padStart(7)} /s   ${(ms / n).toFixed(3)} ms each`)
}

try {
  const mesh = 'bench-mesh'
  const cases: Array<{ label: string, type: 'ed25519' | 'rsa', rsaBits?: number }> = [
    { label: 'ed25519', type: 'ed25519' },
    { label: 'rsa2048', type: 'rsa', rsaBits: 2048 },
    { label: 'rsa3072', type: 'rsa', rsaBits: 3072 },
    { label: 'rsa4096', type: 'rsa', rsaBits: 4096 }
  ]
  console.log(`node ${process.version}, ${seconds} s per case`)
  for (const c of cases) {
    const { fingerprint } = await generateKey(dir, { userIds: [`Bench ${c.label} <bench@example.org>`], type: c.type, rsaBits: c.rsaBits })
    const key = await loadPrivateKey(dir, fingerprint)
    const now = Date.now()
    const payload = buildPayload('vm.create', {
      name: 'web', image: 'debian-12', type: 'small', nics: [{ net: 'lan' }], labels: { tier: 'web' }
    }, { mesh, issuer: fingerprint, now })
    const bytes = new TextEncoder().encode(payload)
    const envelope = await sealEnvelope(payload, async d => await signDetached(key, d))
    const pub = key.toPublic()
    await measure(`sign ${c.label}`, async () => await signDetached(key, bytes))
    await measure(`verify ${c.label}`, async () => await verifyDetached(bytes, envelope.signature, pub))
    const verify = keyringVerifier(dir)
    await measure(`validateEnvelope ${c.label} (keyring dir: stat, key cached)`, async () =>
      await validateEnvelope(envelope, { meshId: mesh, now, seen: () => false, verify }))
  }
} finally {
  await rm(dir, { recursive: true, force: true })
}
