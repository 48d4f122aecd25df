/**
 * Commands of people (key, request, vm, net) and of host operators (trust). Requests are signed
 * here, on the user's side, with the user's key; the daemon only relays and judges them.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { HostView } from '../../protocol/api.ts'
import type { RequestView, VmView, EvictOutcome, MoveCheck } from '../control/index.ts'
import type { Command } from './command.ts'
import { table, short, line, ago } from './output.ts'
import { keyring, buildSigned, waitForOutcome, waitForVm, outcomeText, chooseKey, meshId, signBytes } from './sign.ts'
import type { RequestKind } from '../../protocol/requests.ts'

const signOpts = {
  key: { type: 'string' as const },
  'passphrase-file': { type: 'string' as const }
}
const signHelp = {
  key: 'fingerprint of the key to sign with (default: PICOCLOUD_KEY, or the only secret key)',
  'passphrase-file': 'file whose first line is the key\'s passphrase (or PICOCLOUD_PASSPHRASE; else asked on a terminal)'
}
const waitOpts = { 'no-wait': { type: 'boolean' as const }, timeout: { type: 'string' as const } }
const waitHelp = { 'no-wait': 'return once the request is accepted by this host', timeout: 'seconds to wait for the outcome (default 60)' }

async function readText (path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (err: any) {
    throw new PicocloudError(ErrorCode.BadRequest, `cannot read ${what} ${path}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`)
  }
}

function kv (items: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const item of items ?? []) {
    const i = item.indexOf('=')
    if (i <= 0) throw new PicocloudError(ErrorCode.Usage, `${what} ${JSON.stringify(item)} must be key=value`)
    out[item.slice(0, i)] = item.slice(i + 1)
  }
  return out
}

function int (v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined
  if (!/^\d+$/.test(v)) throw new PicocloudError(ErrorCode.Usage, `${what} must be a whole number, got ${JSON.stringify(v)}`)
  return Number(v)
}

/** Signs, submits and (unless --no-wait) waits; exit status 1 when rejected. */
const STOPPED: ReadonlySet<string> = new Set(['stopped', 'failed', 'destroyed', 'rejected'])
const RUNNING: ReadonlySet<string> = new Set(['running', 'failed', 'destroyed', 'rejected'])

/**
 * Signs and submits a request, waits for its outcome and prints it. With `until`, a VM request
 * accepted by the mesh then waits until the VM's status is one of those (unless --no-wait).
 */
async function request (args: Parameters<Command['run']>[0], kind: RequestKind, body: unknown, until?: ReadonlySet<string>): Promise<void> {
  const { values, g, io, api } = args
  const env = await buildSigned(api, kind, body, { key: values.key, passphraseFile: values['passphrase-file'] })
  let r = await api.call<RequestView>('POST', '/v1/requests', env)
  if (values['no-wait'] !== true) r = await waitForOutcome(api, r.id, (int(values.timeout, '--timeout') ?? 60) * 1000)
  if (until !== undefined && values['no-wait'] !== true && r.status === 'accepted' && r.vm !== undefined) {
    const vm = await waitForVm(api, r.vm, (int(values.timeout, '--timeout') ?? 60) * 1000, io.err, until)
    if (g.json) io.out(JSON.stringify({ ...r, vm: vm.id, vmStatus: vm.status, vmReason: vm.reason }, null, 2))
    else io.out([outcomeText(r), line`VM ${vm.name}: ${vm.status}${vm.reason === undefined ? '' : ` (${vm.reason})`}`].join('\n'))
    if (vm.status === 'failed') throw new PicocloudError('VM_FAILED', `VM ${vm.name} failed on ${vm.hostName ?? '?'}: see \`picocloud vm show ${vm.name}\``)
    if (vm.operatorStop !== undefined && !until.has(vm.status)) throw new PicocloudError('VM_HELD', `VM ${vm.name} is held stopped by the operator of ${vm.hostName ?? '?'} (${vm.operatorStop.reason || 'no reason given'}): only they can start it again (\`picocloud vm start --operator ${vm.name}\` on that host); or destroy it and create it again elsewhere`)
    return
  }
  if (g.json) io.out(JSON.stringify(r, null, 2))
  else {
    io.out(outcomeText(r))
    if ((kind === 'vm.nic.add' || kind === 'vm.nic.remove') && r.status === 'accepted' && r.vm !== undefined) {
      const vm = await api.call<VmView>('GET', `/v1/vms/${r.vm}`)
      if (vm.status === 'running') io.out(line`the NIC change applies at ${vm.name}'s next start: \`picocloud vm restart ${vm.name}\``)
    }
    if (r.kind === 'vm.create' && r.status === 'placed') {
      const placed = await api.call<VmView>('GET', `/v1/vms/${r.id}`)
      io.out(line`VM ${placed.name} (${placed.id.slice(0, 12)}) placed on ${placed.hostName ?? placed.host ?? '?'}`)
      if (values['no-wait'] !== true && placed.runs) {
        const vm = await waitForVm(api, r.id, (int(values.timeout, '--timeout') ?? 300) * 1000, io.err)
        io.out(line`VM ${vm.name}: ${vm.status}${vm.reason === undefined ? '' : ` (${vm.reason})`}`)
        if (vm.status === 'failed') throw new PicocloudError('VM_FAILED', `VM ${vm.name} failed on ${vm.hostName ?? '?'}: see \`picocloud vm show ${vm.name}\` and \`picocloud vm logs ${vm.name}\` on that host`)
      }
    }
  }
  if (r.status === 'rejected') throw new PicocloudError('REQUEST_REJECTED', g.json ? 'request rejected' : 'the request was rejected (reasons above)')
}

async function resolveHost (api: Parameters<Command['run']>[0]['api'], ref: string): Promise<string> {
  const hosts = await api.call<HostView[]>('GET', '/v1/hosts')
  const m = hosts.filter(h => h.peerId === ref || h.name === ref)
  if (m.length === 1) return m[0].peerId
  throw new PicocloudError(ErrorCode.Usage, m.length === 0 ? `no host ${ref} in the mesh (see \`picocloud hosts\`)` : `${m.length} hosts are named ${ref}; give the peer id`)
}

const EVICT_HELP = 'also move away the VMs of this key that run here and that the new policy no longer admits: another host starts each from its image (its disk here is deleted); a VM no other host can take stays'

/** What an eviction did, for people. */
function evictLines (e: EvictOutcome | undefined): string[] {
  if (e === undefined) return []
  if (e.moved.length + e.kept.length === 0) return ['no VM of this key runs here']
  return [
    ...e.moved.map(v => `moving ${v.name} away (${v.why}): another host will start it from its image`),
    ...e.kept.map(v => `${v.name} stays here: ${v.why}`)
  ]
}

// `?? []`: a daemon of an older version says nothing of addresses.
const addressText = (v: VmView): string => (v.addresses ?? []).map(a => a.address).join(',') || '-'
const labelText = (v: VmView): string => Object.entries(v.labels).map(([k, x]) => `${k}=${x}`).join(',')
const VM_COLUMNS = ['NAME', 'ID', 'STATUS', 'HOST', 'ADDRESSES', 'OWNER', 'LABELS']
const vmRow = (v: VmView): string[] => [v.name, v.id.slice(0, 12), v.status, v.hostName ?? '-', addressText(v), short(v.owner), labelText(v)]
const VM_WIDE_COLUMNS = [...VM_COLUMNS, 'IMAGE', 'SIZE', 'HA', 'AGE']
const vmWideRow = (v: VmView): string[] => [...vmRow(v), v.image, `${v.vcpus}c/${v.memMiB}M/${v.diskGiB}G`, v.ha, ago(v.created)]

/** `--output`: how `vm list` prints (`--json` is the same as `-o json`). */
const OUTPUTS = ['table', 'wide', 'json', 'yaml'] as const

/** YAML for plain JSON data (strings always quoted: JSON strings are valid YAML scalars). */
export function toYaml (v: unknown, indent = ''): string {
  if (Array.isArray(v)) return v.length === 0 ? '[]' : v.map(x => `\n${indent}- ${toYaml(x, `${indent}  `).replace(/^\n\s*/, '')}`).join('')
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined)
    if (entries.length === 0) return '{}'
    return entries.map(([k, x]) => {
      const inner = toYaml(x, `${indent}  `)
      return `\n${indent}${JSON.stringify(k)}:${inner.startsWith('\n') ? inner : ` ${inner}`}`
    }).join('')
  }
  return JSON.stringify(v) ?? 'null'
}

export const userCommands: Command[] = [
  // ——— keys (local keyring, no daemon needed) ———
  {
    name: 'key generate',
    summary: 'create an OpenPGP key pair (Ed25519) in your keyring',
    usage: 'picocloud key generate [--name NAME] [--email EMAIL] [--passphrase-file FILE] [--rsa]',
    description: 'Give --name, --email or both (the key\'s user id). Your keyring is ~/.config/picocloud/keyring (or PICOCLOUD_KEYRING). A passphrase comes from --passphrase-file or PICOCLOUD_PASSPHRASE; without one the key is stored unprotected (mode 0600).',
    options: { name: { type: 'string' }, email: { type: 'string' }, 'passphrase-file': { type: 'string' }, rsa: { type: 'boolean' } },
    optionHelp: { name: 'your name', email: 'your e-mail address', 'passphrase-file': 'protect the key with the passphrase in this file', rsa: 'make an RSA 3072 key instead of Ed25519' },
    run: async ({ values, g, io }) => {
      if (values.name === undefined && values.email === undefined) throw new PicocloudError(ErrorCode.Usage, 'give --name and/or --email\nusage: picocloud key generate --name NAME --email EMAIL')
      const k = await keyring()
      const uid = values.email === undefined ? values.name : `${values.name ?? ''} <${values.email}>`.trim()
      const info = await k.generateKey(k.dir, { userIds: [uid], passphrase: await k.resolvePassphrase({ passphraseFile: values['passphrase-file'] }), type: values.rsa === true ? 'rsa' : 'ed25519' })
      const { publicKey: _p, ...rest } = info
      io.out(g.json ? JSON.stringify(rest, null, 2) : `created key ${info.fingerprint} (${info.algorithm}) for ${info.userIds.join(', ')}\nGive your public key to host operators: picocloud key export ${info.fingerprint} > my-key.asc`)
    }
  },
  {
    name: 'key import',
    summary: 'import OpenPGP keys (public or secret, e.g. from `gpg --armor --export`) into your keyring',
    usage: 'picocloud key import FILE',
    positionals: [1, 1],
    run: async ({ positionals, g, io }) => {
      const k = await keyring()
      const infos = await k.importKeys(k.dir, await readFile(positionals[0]).catch((err: any) => { throw new PicocloudError(ErrorCode.BadRequest, `cannot read ${positionals[0]}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`) }))
      io.out(g.json ? JSON.stringify(infos, null, 2) : infos.map(i => line`imported ${i.fingerprint} ${i.hasSecret ? '(with secret key) ' : ''}${i.userIds.join(', ')}`).join('\n'))
    }
  },
  {
    name: 'key export',
    summary: 'print a key from your keyring, armored (public unless --secret)',
    usage: 'picocloud key export [FINGERPRINT] [--secret]',
    description: 'Without FINGERPRINT: the key of PICOCLOUD_KEY, else the only secret key in your keyring. Prints armored text, also with --json.',
    positionals: [0, 1],
    options: { secret: { type: 'boolean' } },
    optionHelp: { secret: 'export the secret key too (keep it safe)' },
    run: async ({ positionals, values, io }) => {
      const k = await keyring()
      const fpr = positionals[0] ?? await chooseKey({})
      io.out((await k.exportKey(k.dir, fpr, { secret: values.secret === true })).trimEnd())
    }
  },
  {
    name: 'key list',
    summary: 'the keys in your keyring',
    usage: 'picocloud key list',
    run: async ({ g, io }) => {
      const k = await keyring()
      const keys = await k.listKeys(k.dir)
      io.out(g.json ? JSON.stringify(keys, null, 2) : keys.length === 0 ? `no keys in ${k.dir} (create one with \`picocloud key generate\`)` : table(['FINGERPRINT', 'ALGO', 'SECRET', 'USER'], keys.map(i => [i.fingerprint, i.algorithm, i.hasSecret ? 'yes' : 'no', i.userIds.join(', ') + (i.revoked ? ' (revoked)' : i.expired ? ' (expired)' : '')])))
    }
  },
  // ——— trust (host operator, through the socket) ———
  {
    name: 'trust add',
    summary: 'let a key run VMs on this host, within quotas (host operator)',
    usage: 'picocloud trust add FINGERPRINT|KEYFILE [--max-vms N] [--max-vcpus N] [--max-mem MiB] [--max-disk GiB] [--networks a,b] [--evict]',
    description: 'KEYFILE is an armored public key (`gpg --armor --export`, `picocloud key export`). A fingerprint is looked up in your keyring, then among the keys the mesh already knows. A quota not given is unlimited. Trusting a key again replaces its quotas; VMs of the key that already run here stay, unless --evict. The policy and the key are published in this host\'s record.',
    positionals: [1, 1],
    options: { 'max-vms': { type: 'string' }, 'max-vcpus': { type: 'string' }, 'max-mem': { type: 'string' }, 'max-disk': { type: 'string' }, networks: { type: 'string' }, evict: { type: 'boolean' } },
    optionHelp: { 'max-vms': 'at most N VMs of this key here', 'max-vcpus': 'at most N vCPUs in all', 'max-mem': 'at most this many MiB of memory in all', 'max-disk': 'at most this many GiB of disk in all', networks: 'comma-separated networks its VMs may use (default: any)', evict: EVICT_HELP },
    run: async ({ positionals, values, g, io, api }) => {
      const arg = positionals[0]
      const body: Record<string, unknown> = {
        maxVms: int(values['max-vms'], '--max-vms'),
        maxVcpus: int(values['max-vcpus'], '--max-vcpus'),
        maxMemMiB: int(values['max-mem'], '--max-mem'),
        maxDiskGiB: int(values['max-disk'], '--max-disk'),
        networks: values.networks === undefined ? undefined : String(values.networks).split(',').filter(Boolean),
        evict: values.evict === true ? true : undefined
      }
      if (/^(0x)?[0-9a-fA-F ]{40,50}$/.test(arg) && arg.replace(/\s|0x/g, '').length === 40) {
        body.fingerprint = arg
        const k = await keyring()
        try { body.publicKey = await k.exportKey(k.dir, arg) } catch {}
      } else {
        body.publicKey = await readText(arg, 'key file')
      }
      const e = await api.call<Record<string, unknown> & { evicted?: EvictOutcome }>('POST', '/v1/trust', body)
      io.out(g.json ? JSON.stringify(e, null, 2) : [`this host now trusts ${String(e.fingerprint)}`, ...evictLines(e.evicted)].join('\n'))
    }
  },
  {
    name: 'trust list',
    summary: 'the keys this host trusts, their quotas and use (host operator)',
    usage: 'picocloud trust list',
    run: async ({ g, io, api }) => {
      const list = await api.call<Array<Record<string, any>>>('GET', '/v1/trust')
      const q = (used: number, max: number | undefined): string => `${used}/${max ?? '∞'}`
      io.out(g.json ? JSON.stringify(list, null, 2) : list.length === 0 ? 'this host trusts no key yet (`picocloud trust add KEYFILE`)' : table(['FINGERPRINT', 'VMS', 'VCPUS', 'MEM MiB', 'DISK GiB', 'NETWORKS', 'USER'], list.map(e => [
        e.fingerprint, q(e.usage?.vms ?? 0, e.maxVms), q(e.usage?.vcpus ?? 0, e.maxVcpus), q(e.usage?.memMiB ?? 0, e.maxMemMiB), q(e.usage?.diskGiB ?? 0, e.maxDiskGiB), (e.networks ?? ['any']).join(','), (e.userIds ?? []).join(', ')
      ])))
    }
  },
  {
    name: 'trust remove',
    summary: 'stop placing new VMs of a key here (host operator); running VMs stay unless --evict',
    usage: 'picocloud trust remove FINGERPRINT [--evict]',
    positionals: [1, 1],
    options: { evict: { type: 'boolean' } },
    optionHelp: { evict: EVICT_HELP },
    run: async ({ positionals, values, g, io, api }) => {
      const r = await api.call<{ fingerprint: string, evicted?: EvictOutcome }>('DELETE', `/v1/trust/${encodeURIComponent(positionals[0].replace(/\s/g, ''))}${values.evict === true ? '?evict=1' : ''}`)
      io.out(g.json ? JSON.stringify(r) : [`this host no longer trusts ${r.fingerprint}`, ...evictLines(r.evicted)].join('\n'))
    }
  },
  // ——— requests ———
  {
    name: 'request payload',
    summary: 'print the canonical payload of a request, to sign with another tool (gpg --armor --detach-sign)',
    usage: 'picocloud request payload FILE [--issuer FINGERPRINT] [--lifetime MINUTES] [-o OUT]',
    description: 'FILE is JSON {"kind": "vm.create", "body": {…}}. Sign the output with `gpg --armor --detach-sign OUT`, then `picocloud request submit OUT --signature OUT.asc`.',
    positionals: [1, 1],
    options: { issuer: { type: 'string' }, output: { type: 'string', short: 'o' }, lifetime: { type: 'string' } },
    optionHelp: { issuer: 'fingerprint of the key that will sign (default: PICOCLOUD_KEY, or the only secret key)', output: 'write to this file instead of stdout', lifetime: 'minutes until it expires (default 10, at most 60)' },
    run: async ({ positionals, values, io, api }) => {
      const { buildPayload } = await import('../../protocol/envelope.ts')
      const { normalizeFingerprint } = await import('../../protocol/fingerprint.ts')
      const spec = parseSpec(await readText(positionals[0], 'request file'))
      const issuer = values.issuer === undefined ? await chooseKey({}) : normalizeFingerprint(values.issuer)
      const payload = buildPayload(spec.kind, spec.body, { mesh: await meshId(api), issuer, now: Date.now(), lifetimeMs: (int(values.lifetime, '--lifetime') ?? 10) * 60_000 })
      if (values.output !== undefined) await writeFile(values.output, payload)
      else io.out(payload)
    }
  },
  {
    name: 'request sign',
    summary: 'sign a request with your key and print the envelope {payload, signature}',
    usage: 'picocloud request sign FILE [-o OUT] [--key FPR] [--passphrase-file F]',
    description: 'FILE is JSON {"kind": "vm.create", "body": {…}}. Submit the result with `picocloud request submit OUT` through any host.',
    positionals: [1, 1],
    options: { ...signOpts, output: { type: 'string', short: 'o' } },
    optionHelp: { ...signHelp, output: 'write to this file instead of stdout' },
    run: async ({ positionals, values, io, api }) => {
      const spec = parseSpec(await readText(positionals[0], 'request file'))
      const env = await buildSigned(api, spec.kind, spec.body, { key: values.key, passphraseFile: values['passphrase-file'] })
      const text = JSON.stringify(env, null, 2)
      if (values.output !== undefined) await writeFile(values.output, text + '\n')
      else io.out(text)
    }
  },
  {
    name: 'request submit',
    summary: 'submit a signed request (an envelope, or a payload with --signature) and wait for its outcome',
    usage: 'picocloud request submit FILE [--signature FILE.asc] [--no-wait] [--timeout S]',
    positionals: [1, 1],
    options: { signature: { type: 'string' }, ...waitOpts },
    optionHelp: { signature: 'detached armored signature of FILE (FILE is then the payload as signed)', ...waitHelp },
    run: async ({ positionals, values, g, io, api }) => {
      let env: unknown
      if (values.signature !== undefined) {
        env = { payload: await readText(positionals[0], 'payload'), signature: await readText(values.signature, 'signature') }
      } else {
        const text = await readText(positionals[0], 'envelope')
        try { env = JSON.parse(text) } catch { throw new PicocloudError(ErrorCode.BadEnvelope, `${positionals[0]} is not a JSON envelope; for a payload signed with gpg give --signature FILE.asc`) }
      }
      let r = await api.call<RequestView>('POST', '/v1/requests', env)
      if (values['no-wait'] !== true) r = await waitForOutcome(api, r.id, (int(values.timeout, '--timeout') ?? 60) * 1000)
      io.out(g.json ? JSON.stringify(r, null, 2) : outcomeText(r))
      if (r.status === 'rejected') throw new PicocloudError('REQUEST_REJECTED', 'the request was rejected')
    }
  },
  {
    name: 'request show',
    summary: 'a request\'s status and each host\'s decision with its reason',
    usage: 'picocloud request show ID',
    positionals: [1, 1],
    run: async ({ positionals, g, io, api }) => {
      const r = await api.call<RequestView>('GET', `/v1/requests/${encodeURIComponent(positionals[0])}`)
      io.out(g.json ? JSON.stringify(r, null, 2) : outcomeText(r))
    }
  },
  // ——— VMs ———
  {
    name: 'vm create',
    summary: 'ask the mesh for a VM (signed with your key); waits until it runs or is rejected',
    usage: 'picocloud vm create NAME --image IMAGE (--type small|medium|large | --cpus N --mem MiB) [--disk GiB] [--net NET[:IP]]... [--label k=v]... [--on HOST|--on k=v] [--arch ARCH] [--ssh-key FILE]... [--restart always|on-failure|never] [--ha none|restart]',
    description: 'With --ha restart the VM is started again on another host when a majority of the hosts lose its host (from its image: the disk is not replicated yet); its host stops it by itself when it hears fewer than half of the hosts. With --ha none (the default) it stays down with its host. A mesh needs three hosts to move a VM (a host with hypervisor = "none" counts).',
    positionals: [1, 1],
    options: {
      image: { type: 'string' }, type: { type: 'string' }, cpus: { type: 'string' }, mem: { type: 'string' }, disk: { type: 'string' },
      net: { type: 'string', multiple: true }, label: { type: 'string', multiple: true }, on: { type: 'string', multiple: true },
      arch: { type: 'string' }, 'ssh-key': { type: 'string', multiple: true }, restart: { type: 'string' }, ha: { type: 'string' }, ...signOpts, ...waitOpts
    },
    optionHelp: {
      image: 'image name or sha256:HASH', type: 'machine type: small (1 vCPU, 1 GiB), medium (2, 4 GiB), large (4, 8 GiB)', cpus: 'vCPUs (with --mem)', mem: 'memory in MiB (with --cpus)', disk: 'disk in GiB (default 10)',
      net: 'attach to this network (repeatable); NET:IP for a static address', label: 'label k=v (repeatable)', on: 'pin to a host (name or peer id) or to hosts labelled k=v',
      arch: 'x86_64 (default) or aarch64', 'ssh-key': 'OpenSSH public key file for the guest (repeatable)', restart: 'restart policy (default always)', ha: 'after its host is lost: restart elsewhere, or none (default): stay down', ...signHelp,
      'no-wait': 'return once the request is accepted by this host (do not wait for placement or boot)', timeout: 'seconds to wait for placement (default 60), then for the VM to run (default 300)'
    },
    run: async (args) => {
      const { positionals, values, api } = args
      if (values.image === undefined) throw new PicocloudError(ErrorCode.Usage, 'vm create needs --image IMAGE')
      if (values.type === undefined && (values.cpus === undefined || values.mem === undefined)) throw new PicocloudError(ErrorCode.Usage, 'vm create needs --type T, or --cpus N with --mem MiB')
      const pin: Record<string, unknown> = {}
      for (const on of values.on ?? []) {
        if (on.includes('=')) pin.labels = { ...(pin.labels as object ?? {}), ...kv([on], '--on') }
        else pin.host = await resolveHost(api, on)
      }
      const sshKeys = await Promise.all((values['ssh-key'] ?? []).map(async (f: string) => (await readText(f, 'SSH key')).trim()))
      const body = {
        name: positionals[0],
        image: values.image,
        ...(values.type !== undefined ? { type: values.type } : { cpus: int(values.cpus, '--cpus'), memMiB: int(values.mem, '--mem') }),
        ...(values.disk !== undefined ? { diskGiB: int(values.disk, '--disk') } : {}),
        ...(values.arch !== undefined ? { arch: values.arch } : {}),
        ...(values.restart !== undefined ? { restart: values.restart } : {}),
        ...(values.ha !== undefined ? { ha: values.ha } : {}),
        nics: (values.net ?? []).map((n: string) => { const [net, ip] = n.split(':'); return ip === undefined ? { net } : { net, ip } }),
        labels: kv(values.label, '--label'),
        ...(Object.keys(pin).length > 0 ? { pin } : {}),
        ...(sshKeys.length > 0 ? { sshKeys } : {})
      }
      await request(args, 'vm.create', body)
    }
  },
  {
    name: 'vm list',
    summary: 'VMs of the mesh',
    usage: 'picocloud vm list [--selector k=v]... [--owner FPR] [--all] [-o table|wide|json|yaml]',
    options: { selector: { type: 'string', multiple: true }, owner: { type: 'string' }, all: { type: 'boolean' }, output: { type: 'string', short: 'o' } },
    optionHelp: { selector: 'only VMs with this label (repeatable)', owner: 'only VMs of this key', all: 'include destroyed and rejected VMs', output: 'table (default), wide (adds image, size, HA policy, age), json or yaml' },
    run: async ({ values, g, io, api }) => {
      const output = values.output ?? (g.json ? 'json' : 'table')
      if (!(OUTPUTS as readonly string[]).includes(output)) throw new PicocloudError(ErrorCode.Usage, `--output must be one of ${OUTPUTS.join(', ')}, not ${JSON.stringify(output)}`)
      const q = new URLSearchParams()
      for (const s of values.selector ?? []) q.append('selector', s)
      if (values.owner !== undefined) q.set('owner', values.owner)
      if (values.all === true) q.set('all', '1')
      const vms = await api.call<VmView[]>('GET', `/v1/vms?${q.toString()}`)
      if (output === 'json') io.out(JSON.stringify(vms, null, 2))
      else if (output === 'yaml') io.out(toYaml(vms).replace(/^\n/, ''))
      else io.out(vms.length === 0 ? 'no VMs' : output === 'wide' ? table(VM_WIDE_COLUMNS, vms.map(vmWideRow)) : table(VM_COLUMNS, vms.map(vmRow)))
    }
  },
  {
    name: 'vm show',
    summary: 'one VM in detail, with its history',
    usage: 'picocloud vm show NAME|ID',
    positionals: [1, 1],
    run: async ({ positionals, g, io, api }) => {
      const vm = await api.call<VmView & { history: RequestView[] }>('GET', `/v1/vms/${encodeURIComponent(positionals[0])}`)
      io.out(g.json
        ? JSON.stringify(vm, null, 2)
        : [
            line`name     ${vm.name}`, line`id       ${vm.id}`, line`owner    ${vm.owner}`,
            line`status   ${vm.status}${vm.reason === undefined ? '' : ` (${vm.reason})`}, desired ${vm.desired}`,
            line`host     ${vm.hostName ?? '-'} ${vm.host ?? ''}`,
            line`size     ${vm.vcpus} vCPU, ${vm.memMiB} MiB, ${vm.diskGiB} GiB disk, ${vm.arch}, image ${vm.image}`,
            line`nics     ${vm.nics.map(n => n.net + (n.ip === undefined ? '' : `:${n.ip}`)).join(' ') || '-'}`,
            line`address  ${(vm.addresses ?? []).map(a => `${a.address} (${a.net})`).join(' ') || '-'}`,
            line`created  ${vm.created} (${ago(vm.created)})`,
            line`labels   ${Object.entries(vm.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '-'}`,
            line`ha       ${vm.ha === 'restart' ? 'restart (on another host if its host is lost; from its image, no disk replica)' : 'none (stays down while its host is lost)'}`,
            'history:',
            ...vm.history.map(r => line`  ${r.created}  ${r.kind.padEnd(13)} ${r.status.padEnd(9)} ${r.id.slice(0, 12)}`)
          ].join('\n'))
    }
  },
  {
    name: 'vm history',
    summary: 'the requests that shaped a VM, who asked and what became of them',
    usage: 'picocloud vm history NAME|ID',
    positionals: [1, 1],
    run: async ({ positionals, g, io, api }) => {
      const vm = await api.call<{ history: RequestView[] }>('GET', `/v1/vms/${encodeURIComponent(positionals[0])}`)
      io.out(g.json ? JSON.stringify(vm.history, null, 2) : table(['CREATED', 'KIND', 'ISSUER', 'STATUS', 'REQUEST'], vm.history.map(r => [r.created, r.kind, short(r.issuer), r.status, r.id.slice(0, 16)])))
    }
  },
  {
    name: 'vm stop',
    summary: 'stop a VM and wait until it is stopped (owner; or --operator for a VM on this host)',
    usage: 'picocloud vm stop NAME|ID [--force] [--operator [--reason TEXT]] [--key FPR] [--passphrase-file F] [--no-wait] [--timeout S]',
    description: 'The guest is asked to power off (ACPI) and gets 30 s before its host ends it; --force cuts the power at once. The VM stays stopped until its owner starts it. With --operator, this host\'s operator stops a VM that runs here, without a signed request; only this host\'s operator can lift that (`vm start --operator`).',
    positionals: [1, 1],
    options: { ...signOpts, ...waitOpts, force: { type: 'boolean' }, operator: { type: 'boolean' }, reason: { type: 'string' } },
    optionHelp: { ...signHelp, ...waitHelp, force: 'cut the power at once (no ACPI power-off first)', operator: 'as this host\'s operator, without a signed request (only VMs on this host)', reason: 'why (with --operator)' },
    run: async (args) => {
      const { positionals, values, g, io, api } = args
      if (values.operator === true) {
        if (values.force === true) throw new PicocloudError(ErrorCode.Usage, '--force is for the owner\'s stop; an operator stop ends the VM as the host decides')
        const vm = await api.call<VmView>('POST', `/v1/vms/${encodeURIComponent(positionals[0])}/operator-stop`, { reason: values.reason ?? '' })
        io.out(g.json ? JSON.stringify(vm, null, 2) : `stopped ${vm.name} on this host (${vm.status}); \`picocloud vm start --operator ${vm.name}\` lifts it`)
        return
      }
      if (values.reason !== undefined) throw new PicocloudError(ErrorCode.Usage, '--reason goes with --operator')
      await request(args, 'vm.stop', { vm: positionals[0], force: values.force === true }, STOPPED)
    }
  },
  {
    name: 'vm start',
    summary: 'start a stopped VM and wait until it runs (owner; or --operator to lift this host\'s own stop)',
    usage: 'picocloud vm start NAME|ID [--operator] [--key FPR] [--passphrase-file F] [--no-wait] [--timeout S]',
    description: 'A VM its host\'s operator stopped (`vm stop --operator`) stays stopped whatever its owner asks, until that operator runs `vm start --operator` on that host.',
    positionals: [1, 1],
    options: { ...signOpts, ...waitOpts, operator: { type: 'boolean' } },
    optionHelp: { ...signHelp, ...waitHelp, operator: 'as this host\'s operator: lift the stop this host\'s operator put on a VM here' },
    run: async (args) => {
      const { positionals, values, g, io, api } = args
      if (values.operator === true) {
        const vm = await api.call<VmView>('POST', `/v1/vms/${encodeURIComponent(positionals[0])}/operator-start`, {})
        io.out(g.json ? JSON.stringify(vm, null, 2) : `lifted this host's stop of ${vm.name}; it runs again if its owner wants it running (desired: ${vm.desired})`)
        return
      }
      await request(args, 'vm.start', { vm: positionals[0] }, RUNNING)
    }
  },
  {
    name: 'vm restart',
    summary: 'stop a VM, wait until it is stopped, start it again and wait until it runs (owner only)',
    usage: 'picocloud vm restart NAME|ID [--force] [--key FPR] [--passphrase-file F] [--timeout S]',
    description: 'Two signed requests, vm.stop then vm.start. A NIC added while the VM ran is attached from this start on.',
    positionals: [1, 1],
    options: { ...signOpts, timeout: { type: 'string' }, force: { type: 'boolean' } },
    optionHelp: { ...signHelp, timeout: 'seconds to wait for each step (default 60)', force: 'cut the power at once (no ACPI power-off first)' },
    run: async (args) => {
      const { positionals, values } = args
      await request(args, 'vm.stop', { vm: positionals[0], force: values.force === true }, STOPPED)
      await request(args, 'vm.start', { vm: positionals[0] }, RUNNING)
    }
  },
  {
    name: 'vm move',
    summary: 'move a VM to another host with its disk: powered off here, started there (owner only)',
    usage: 'picocloud vm move NAME|ID (--to HOST | --on KEY=VALUE...) [--key FPR] [--passphrase-file F] [--no-wait] [--timeout S]',
    description: 'A cold move. The VM\'s pin becomes --to HOST (that host only) or --on labels (hosts with all of them); it stays pinned so. Its host powers it off (ACPI, up to 30 s), then hands its disk to the new host over the mesh (encrypted, sha256-checked), which starts it from that disk. While the old host is down the move waits; if the mesh loses that host (a majority declares it), the VM starts from its image. Refused, with nothing changed, when no other host that is up may take it.',
    positionals: [1, 1],
    options: { ...signOpts, ...waitOpts, to: { type: 'string' }, on: { type: 'string', multiple: true } },
    optionHelp: { ...signHelp, 'no-wait': 'return once the request is accepted by this host', timeout: 'seconds to wait until it runs on its new host (default 300)', to: 'the host to move it to (name or peer id)', on: 'move it to a host with this label (repeatable)' },
    run: async (args) => {
      const { positionals, values, g, io, api } = args
      if ((values.to === undefined) === (values.on === undefined)) throw new PicocloudError(ErrorCode.Usage, 'say where to: --to HOST or --on KEY=VALUE (not both)')
      const pin = values.to !== undefined ? { host: await resolveHost(api, values.to) } : { labels: kv(values.on, '--on') }
      const check = await api.call<MoveCheck>('POST', `/v1/vms/${encodeURIComponent(positionals[0])}/move-check`, { pin })
      const vm = await api.call<VmView>('GET', `/v1/vms/${encodeURIComponent(positionals[0])}`)
      const fromName = check.fromName ?? check.from
      if (check.stays) throw new PicocloudError(ErrorCode.Usage, `VM ${vm.name} already runs on ${fromName}, which ${pin.host === undefined ? 'has those labels' : 'is that host'}: nothing to move`)
      if (check.to.length === 0) {
        const why = check.reasons.map(r => `  ${r.hostName ?? r.host}: ${r.reason}${r.detail === '' ? '' : ` — ${r.detail}`}`)
        throw new PicocloudError('NO_HOST', [`no other host that is up may take ${vm.name}; nothing changed`, ...why].join('\n'))
      }
      const body = { vm: vm.id, pin, from: check.from }
      const env = await buildSigned(api, 'vm.move', body, { key: values.key, passphraseFile: values['passphrase-file'] })
      let r = await api.call<RequestView>('POST', '/v1/requests', env)
      if (values['no-wait'] !== true) r = await waitForOutcome(api, r.id, 60_000)
      if (r.status === 'rejected' || values['no-wait'] === true) {
        io.out(g.json ? JSON.stringify(r, null, 2) : outcomeText(r))
        if (r.status === 'rejected') throw new PicocloudError('REQUEST_REJECTED', 'the request was rejected (reasons above)')
        return
      }
      if (!g.json) io.err(line`moving ${vm.name} from ${fromName} (first choice: ${check.to[0].name ?? check.to[0].peerId}); it is powered off first`)
      const deadline = Date.now() + (int(values.timeout, '--timeout') ?? 300) * 1000
      let now = vm
      for (;;) {
        now = await api.call<VmView>('GET', `/v1/vms/${vm.id}`)
        const there = now.host !== undefined && now.host !== null && now.host !== check.from
        if ((there && now.status === 'running') || now.status === 'failed' || Date.now() > deadline) break
        await new Promise(resolve => setTimeout(resolve, 250))
      }
      if (g.json) io.out(JSON.stringify({ ...r, vm: now.id, vmStatus: now.status, vmReason: now.reason, host: now.host, hostName: now.hostName }, null, 2))
      else io.out([outcomeText(r), line`VM ${now.name}: ${now.status} on ${now.hostName ?? now.host ?? '-'}${now.reason === undefined ? '' : ` (${now.reason})`}`].join('\n'))
      if (now.status === 'failed') throw new PicocloudError('VM_FAILED', `VM ${now.name} failed on ${now.hostName ?? '?'}: see \`picocloud vm show ${now.name}\``)
      if (now.status !== 'running' || now.host === check.from) throw new PicocloudError('TIMEOUT', `${now.name} is not running on its new host yet (${now.status}); follow it with \`picocloud vm show ${now.name}\``)
    }
  },
  {
    name: 'vm destroy',
    summary: 'destroy a VM and its disk (owner only)',
    usage: 'picocloud vm destroy NAME|ID [--key FPR] [--passphrase-file F] [--no-wait] [--timeout S]',
    positionals: [1, 1],
    options: { ...signOpts, ...waitOpts },
    optionHelp: { ...signHelp, ...waitHelp },
    run: async (args) => {
      await request(args, 'vm.destroy', { vm: args.positionals[0] })
    }
  },
  {
    name: 'vm nic add',
    summary: 'attach a VM to a network (owner only)',
    usage: 'picocloud vm nic add NAME|ID --net NET [--ip IP] [--key FPR] [--no-wait]',
    positionals: [1, 1],
    options: { net: { type: 'string' }, ip: { type: 'string' }, ...signOpts, ...waitOpts },
    optionHelp: { net: 'the network', ip: 'a static address in its subnet', ...signHelp, ...waitHelp },
    run: async (args) => {
      if (args.values.net === undefined) throw new PicocloudError(ErrorCode.Usage, 'vm nic add needs --net NET')
      await request(args, 'vm.nic.add', { vm: args.positionals[0], nic: args.values.ip === undefined ? { net: args.values.net } : { net: args.values.net, ip: args.values.ip } })
    }
  },
  {
    name: 'vm nic remove',
    summary: 'detach a VM from a network (owner only)',
    usage: 'picocloud vm nic remove NAME|ID --net NET [--key FPR] [--no-wait]',
    positionals: [1, 1],
    options: { net: { type: 'string' }, ...signOpts, ...waitOpts },
    optionHelp: { net: 'the network', ...signHelp, ...waitHelp },
    run: async (args) => {
      if (args.values.net === undefined) throw new PicocloudError(ErrorCode.Usage, 'vm nic remove needs --net NET')
      await request(args, 'vm.nic.remove', { vm: args.positionals[0], net: args.values.net })
    }
  },
  {
    name: 'vm logs',
    summary: 'the serial console output of a VM (on the host that runs it)',
    usage: 'picocloud vm logs NAME|ID [--bytes N]',
    positionals: [1, 1],
    options: { bytes: { type: 'string' } },
    optionHelp: { bytes: 'how much of the end of the log (default 65536)' },
    run: async ({ positionals, values, g, io, api }) => {
      const r = await api.call<{ vm: string, log: string }>('GET', `/v1/vms/${encodeURIComponent(positionals[0])}/logs?bytes=${int(values.bytes, '--bytes') ?? 65536}`)
      if (g.json) io.out(JSON.stringify(r))
      else process.stdout.write(r.log)
    }
  },
  {
    name: 'vm console',
    summary: 'attach to a VM\'s serial console (host operator, on the host that runs it); Ctrl-] detaches',
    usage: 'picocloud vm console NAME|ID',
    positionals: [1, 1],
    run: async ({ positionals, io, api }) => {
      const { request } = await import('node:http')
      await new Promise<void>((resolve, reject) => {
        const req = request({ socketPath: api.socketPath, path: `/v1/vms/${encodeURIComponent(positionals[0])}/console`, headers: { connection: 'Upgrade', upgrade: 'picocloud-console' } })
        req.on('response', res => {
          let text = ''
          res.on('data', d => { text += d })
          res.on('end', () => {
            try { reject(new PicocloudError(JSON.parse(text).error.code, JSON.parse(text).error.message)) } catch { reject(new PicocloudError(ErrorCode.Internal, `console refused (HTTP ${res.statusCode ?? '?'})`)) }
          })
        })
        req.on('upgrade', (_res, socket) => {
          io.err('connected to the serial console; Ctrl-] to detach')
          const stdin = process.stdin
          if (stdin.isTTY) stdin.setRawMode(true)
          stdin.on('data', (d: Buffer) => {
            if (d.includes(0x1d)) { socket.end(); return }
            socket.write(d)
          })
          socket.pipe(process.stdout)
          socket.on('close', () => { if (stdin.isTTY) stdin.setRawMode(false); stdin.pause(); resolve() })
        })
        req.on('error', reject)
        req.end()
      })
    }
  },
  // ——— images ———
  {
    name: 'image add',
    summary: 'add a disk image (raw or qcow2) to this host and announce it to the mesh (signed)',
    usage: 'picocloud image add FILE --name NAME [--format raw|qcow2] [--arch ARCH] [--key FPR] [--no-wait]',
    description: 'The file is stored on this host by its sha256; other hosts fetch it from here when they must run a VM made from it.',
    positionals: [1, 1],
    options: { name: { type: 'string' }, format: { type: 'string' }, arch: { type: 'string' }, ...signOpts, ...waitOpts },
    optionHelp: { name: 'the image\'s name in the mesh', format: 'raw or qcow2 (default: detected)', arch: 'x86_64 (default) or aarch64', ...signHelp, ...waitHelp },
    run: async (args) => {
      const { positionals, values, io, api } = args
      if (values.name === undefined) throw new PicocloudError(ErrorCode.Usage, 'image add needs --name NAME')
      if (values.format !== undefined && values.format !== 'raw' && values.format !== 'qcow2') throw new PicocloudError(ErrorCode.BadImage, `unknown image format ${JSON.stringify(values.format)}: use raw or qcow2`)
      const { stat } = await import('node:fs/promises')
      const { createReadStream } = await import('node:fs')
      const { request: httpRequest } = await import('node:http')
      const st = await stat(positionals[0]).catch((err: any) => { throw new PicocloudError(ErrorCode.BadImage, `cannot read image file ${positionals[0]}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`) })
      if (!st.isFile()) throw new PicocloudError(ErrorCode.BadImage, `${positionals[0]} is not a file`)
      const q = new URLSearchParams({ name: values.name })
      if (values.format !== undefined) q.set('format', values.format)
      const info = await new Promise<{ sha256: string, format: string, size: number }>((resolve, reject) => {
        const req = httpRequest({ socketPath: api.socketPath, method: 'PUT', path: `/v1/images/upload?${q.toString()}`, headers: { 'content-type': 'application/octet-stream', 'content-length': st.size } }, res => {
          let text = ''
          res.on('data', d => { text += d })
          res.on('end', () => {
            try {
              const v = JSON.parse(text)
              if ((res.statusCode ?? 500) >= 400) reject(new PicocloudError(v.error.code, v.error.message)); else resolve(v)
            } catch { reject(new PicocloudError(ErrorCode.Internal, `upload failed (HTTP ${res.statusCode ?? '?'})`)) }
          })
        })
        req.on('error', reject)
        let sent = 0
        const file = createReadStream(positionals[0])
        file.on('data', (d: string | Buffer) => {
          sent += d.length
          if (process.stderr.isTTY) process.stderr.write(`\ruploading ${Math.floor(100 * sent / Math.max(1, st.size))}%`)
        })
        file.on('end', () => { if (process.stderr.isTTY) process.stderr.write('\n') })
        file.pipe(req)
      })
      if (!args.g.json) io.err(`stored ${info.size} bytes as sha256:${info.sha256} (${info.format})`)
      await request(args, 'image.add', { name: values.name, sha256: info.sha256, format: info.format, sizeBytes: info.size, ...(values.arch !== undefined ? { arch: values.arch } : {}) })
    }
  },
  {
    name: 'image list',
    summary: 'images of the mesh and which hosts hold them',
    usage: 'picocloud image list',
    run: async ({ g, io, api }) => {
      const list = await api.call<Array<Record<string, any>>>('GET', '/v1/images')
      io.out(g.json ? JSON.stringify(list, null, 2) : list.length === 0 ? 'no images (add one with `picocloud image add FILE --name NAME`)' : table(['NAME', 'SHA256', 'SIZE', 'FORMAT', 'OWNER', 'HOSTS'], list.map(i => [i.name, i.sha256.slice(0, 16), `${(i.sizeBytes / 2 ** 20).toFixed(1)} MiB`, i.format, short(i.owner), i.holders.join(',') || '-'])))
    }
  },
  {
    name: 'image delete',
    summary: 'delete an image from the mesh\'s catalogue (owner only)',
    usage: 'picocloud image delete NAME [--key FPR] [--no-wait]',
    positionals: [1, 1],
    options: { ...signOpts, ...waitOpts },
    optionHelp: { ...signHelp, ...waitHelp },
    run: async (args) => { await request(args, 'image.delete', { image: args.positionals[0] }) }
  },
  // ——— networks ———
  {
    name: 'net create',
    summary: 'create a private L2 network (signed with your key)',
    usage: 'picocloud net create NAME (--subnet CIDR | --subnet6 CIDR | both) [--mode static|dhcp|slaac|dhcpv6] [--gateway host-nat|none|vm:NAME] [--label k=v]... [--key FPR] [--no-wait]',
    description: 'Modes: dhcp (IPv4 by DHCP, IPv6 by SLAAC), slaac (IPv6 by SLAAC only), dhcpv6 (IPv4 by DHCP, IPv6 by DHCPv6: addresses the mesh gives, shown by `vm show` and in names), static (only the addresses given with `vm create --nic net=NAME,ip=…`). On dhcp, slaac and dhcpv6 networks each host also answers the VMs\' names (`web.lan.<mesh>`).',
    positionals: [1, 1],
    options: { subnet: { type: 'string' }, subnet6: { type: 'string' }, mode: { type: 'string' }, gateway: { type: 'string' }, label: { type: 'string', multiple: true }, ...signOpts, ...waitOpts },
    optionHelp: { subnet: 'IPv4 subnet, e.g. 10.10.0.0/24', subnet6: 'IPv6 subnet, e.g. fd00:1::/64 (a /64 for slaac and dhcpv6)', mode: 'how VMs get addresses: dhcp (default), slaac, dhcpv6 or static', gateway: 'host-nat (default with an IPv4 subnet), none (default without), or vm:NAME', label: 'label k=v (repeatable)', ...signHelp, ...waitHelp },
    run: async (args) => {
      const { positionals, values } = args
      if (values.subnet === undefined && values.subnet6 === undefined) throw new PicocloudError(ErrorCode.Usage, 'net create needs --subnet CIDR (IPv4), --subnet6 CIDR (IPv6) or both')
      const gw = values.gateway === undefined ? undefined : String(values.gateway).startsWith('vm:') ? { vm: String(values.gateway).slice(3) } : values.gateway
      await request(args, 'net.create', {
        name: positionals[0],
        subnet: { ...(values.subnet !== undefined ? { ipv4: values.subnet } : {}), ...(values.subnet6 !== undefined ? { ipv6: values.subnet6 } : {}) },
        // The request format's own default is static (what older clients meant); ours is dhcp.
        mode: values.mode ?? 'dhcp',
        ...(gw !== undefined ? { gateway: gw } : {}),
        labels: kv(values.label, '--label')
      })
    }
  },
  {
    name: 'net list',
    summary: 'the networks of the mesh',
    usage: 'picocloud net list',
    run: async ({ g, io, api }) => {
      const nets = await api.call<Array<Record<string, any>>>('GET', '/v1/nets')
      io.out(g.json ? JSON.stringify(nets, null, 2) : nets.length === 0 ? 'no networks' : table(['NAME', 'SUBNET', 'MODE', 'OWNER', 'VMS', 'HOSTS'], nets.map(n => [n.name, [n.subnet.ipv4, n.subnet.ipv6].filter(Boolean).join(' '), n.mode, short(n.owner), String(n.vms.length), String(n.hosts.length)])))
    }
  },
  {
    name: 'net show',
    summary: 'one network: where it is present and its VMs',
    usage: 'picocloud net show NAME',
    positionals: [1, 1],
    run: async ({ positionals, g, io, api }) => {
      const n = await api.call<Record<string, any>>('GET', `/v1/nets/${encodeURIComponent(positionals[0])}`)
      io.out(g.json ? JSON.stringify(n, null, 2) : [line`name     ${n.name}`, line`owner    ${n.owner}`, line`subnet   ${[n.subnet.ipv4, n.subnet.ipv6].filter(Boolean).join(' ')}`, line`mode     ${n.mode}`, line`gateway  ${typeof n.gateway === 'string' ? n.gateway : `vm:${n.gateway.vm}`}`, line`vms      ${n.vms.join(' ') || '-'}`, line`hosts    ${n.hosts.join(' ') || '-'}`,
        ...(Array.isArray(n.presence) && n.presence.length > 0
          ? ['', table(['PRESENT ON', 'VNI', 'BRIDGE', 'VXLAN', 'MTU', 'FLOODS TO', 'TAPS', 'DNSMASQ'], n.presence.map((p: any) => [p.name, String(p.vni), p.bridge, p.vxlan, String(p.mtu), p.fdb.map((f: any) => f.name ?? f.address).join(',') || '-', String(p.taps.length), p.dnsmasq ? 'running' : '-']))]
          : ['', 'present on no host'])].join('\n'))
    }
  },
  {
    name: 'net delete',
    summary: 'delete a network (owner only; no VM may use it)',
    usage: 'picocloud net delete NAME [--key FPR] [--no-wait]',
    positionals: [1, 1],
    options: { ...signOpts, ...waitOpts },
    optionHelp: { ...signHelp, ...waitHelp },
    run: async (args) => { await request(args, 'net.delete', { net: args.positionals[0] }) }
  }
]

function parseSpec (text: string): { kind: RequestKind, body: unknown } {
  let v: any
  try { v = JSON.parse(text) } catch (err: any) { throw new PicocloudError(ErrorCode.BadJson, `request file is not JSON: ${err.message}`) }
  if (typeof v?.kind !== 'string' || typeof v.body !== 'object') throw new PicocloudError(ErrorCode.BadRequest, 'a request file is JSON {"kind": "vm.create", "body": {…}}')
  return { kind: v.kind, body: v.body }
}

export { signBytes }
