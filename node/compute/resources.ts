/**
 * What this host offers to VMs, published in its record so every host can compute placement:
 * architectures, vCPUs, memory and disk (from the config, else from the machine), and labels.
 */
import { cpus, totalmem } from 'node:os'
import { statfs } from 'node:fs/promises'
import type { DaemonConfig } from '../config.ts'
import type { HostResources } from '../../crdt/schema.ts'

/** Memory kept for the host itself when the config does not say. */
const RESERVED_MIB = 512

export function machineArch (): string {
  return process.arch === 'x64' ? 'x86_64' : process.arch === 'arm64' ? 'aarch64' : process.arch
}

export async function hostResources (config: DaemonConfig): Promise<HostResources> {
  let diskGiB = config.capacity.diskGiB
  if (diskGiB === undefined) {
    const st = await statfs(config.state)
    diskGiB = Math.floor((st.bavail * st.bsize) / 2 ** 30)
  }
  return {
    arch: config.arch ?? [machineArch()],
    vcpus: config.capacity.vcpus ?? cpus().length,
    memMiB: config.capacity.memMiB ?? Math.max(0, Math.floor(totalmem() / 2 ** 20) - RESERVED_MIB),
    diskGiB,
    labels: { ...config.labels },
    hypervisor: config.hypervisor
  }
}
