/**
 * The compute subsystem: images (store and transfer between hosts), the hypervisor drivers and
 * the VM reconciler. The rest of the daemon uses it only through this file.
 */
export { Compute, type ComputeInit } from './compute.ts'
export { hostResources, machineArch } from './resources.ts'
export type { FetchProgress } from './images/transfer.ts'
export type { ImageInfo } from './images/store.ts'
