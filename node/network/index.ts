/**
 * The network subsystem: private L2 networks over WireGuard and VXLAN, planned from the world and
 * built by this host's reconciler. The rest of the daemon uses it only through this file.
 */
export { DataPlane, type DataPlaneInit, type NetPresence } from './data-plane.ts'
export { parseNetworkConfig, NETWORK_KEYS, type NetworkConfig } from './config.ts'
export { assignVnis, bridgeName } from './addressing.ts'
export { vmAddresses, type VmAddress } from './vm-addresses.ts'
