/**
 * cloud-init NoCloud seed for a VM, so that stock cloud images (Debian/Ubuntu genericcloud) come
 * up configured: hostname, the owner's SSH keys from the request, and the network (DHCP on every
 * NIC, or the static address the request gave, matched by MAC). An ISO 9660 volume labelled
 * `cidata`, written with genisoimage (or xorriso), rebuilt only when its content changes.
 */
import { mkdir, readFile, rm, writeFile, mkdtemp } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { realExec, check, type Exec } from '../../exec.ts'
import type { VmEntry } from '../../../crdt/world.ts'
import type { VmSpec } from './types.ts'

export interface SeedFiles { 'meta-data': string, 'user-data': string, 'network-config': string }

const yamlString = (s: string): string => JSON.stringify(s)

/** The three NoCloud files (pure). JSON strings are valid YAML scalars, so values are quoted that way. */
export function seedFiles (vm: Pick<VmEntry, 'id' | 'name' | 'nics'> & { spec: { sshKeys: string[] } }, spec: Pick<VmSpec, 'nics'>): SeedFiles {
  const meta = `instance-id: ${yamlString(vm.id)}\nlocal-hostname: ${yamlString(vm.name)}\n`
  const user = [
    '#cloud-config',
    `hostname: ${yamlString(vm.name)}`,
    'ssh_pwauth: false',
    ...(vm.spec.sshKeys.length > 0 ? ['ssh_authorized_keys:', ...vm.spec.sshKeys.map(k => `  - ${yamlString(k)}`)] : []),
    ''
  ].join('\n')
  const eth = spec.nics.map((nic, i) => {
    const ip = vm.nics[i]?.ip
    return [
      `  nic${i}:`,
      '    match:',
      `      macaddress: ${yamlString(nic.mac)}`,
      `    set-name: ${yamlString(`eth${i}`)}`,
      ...(ip === undefined ? ['    dhcp4: true', '    dhcp6: true'] : [`    addresses: [${yamlString(ip.includes('/') ? ip : ip + '/24')}]`])
    ].join('\n')
  })
  const network = ['version: 2', ...(eth.length > 0 ? ['ethernets:', ...eth] : []), ''].join('\n')
  return { 'meta-data': meta, 'user-data': user, 'network-config': network }
}

/** Writes `<state>/vms/<name>/seed.iso` when its content changed; returns its path. */
export async function writeSeed (stateDir: string, vm: VmEntry, spec: VmSpec, exec: Exec = realExec): Promise<string | undefined> {
  const files = seedFiles(vm, spec)
  const dir = join(stateDir, 'vms', spec.name)
  const iso = join(dir, 'seed.iso')
  const hash = createHash('sha256').update(JSON.stringify(files)).digest('hex')
  const stamp = join(dir, 'seed.sha256')
  await mkdir(dir, { recursive: true, mode: 0o700 })
  if ((await readFile(stamp, 'utf8').catch(() => '')) === hash) return iso
  const tmp = await mkdtemp(join(dir, '.seed-'))
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(tmp, name), text)
    const args = ['-output', iso, '-volid', 'cidata', '-joliet', '-rock', '-quiet', join(tmp, 'meta-data'), join(tmp, 'user-data'), join(tmp, 'network-config')]
    try {
      await check(exec, 'genisoimage', args)
    } catch (err: any) {
      if (err.code !== 'ENOENT') throw err
      await check(exec, 'xorriso', ['-as', 'mkisofs', ...args])
    }
    await writeFile(stamp, hash)
    return iso
  } finally {
    await rm(tmp, { recursive: true, force: true })
  }
}
