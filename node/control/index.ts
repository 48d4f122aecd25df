/**
 * The control plane subsystem: signed requests, the world they make, placement, trust, and the
 * views the API shows. The rest of the daemon uses it only through this file.
 */
export { Control, type ControlInit, type NetView, type DrainOutcome, type MoveCheck } from './control.ts'
export { findVm, vmStatus, type VmView, type RequestView, type VmFilter } from './views.ts'
export type { TrustView, TrustAddInput } from './trust.ts'
export type { EvictOutcome } from './scheduler.ts'
