/**
 * The network driver: reads the actual data-plane state of one host (or one network namespace)
 * and applies the steps computed by `diff` (node/network/plan.ts). Two implementations: `linux.ts`
 * (ip, bridge, wg, wireguard-go) and `fake.ts` (in memory, records steps).
 *
 * @example
 * const driver = linuxNetworkDriver({ exec: inNetns(realExec, 'pct-1-a') })
 * const steps = await reconcileNetwork(driver, input)
 */
import type { ActualState, Step } from '../plan.ts'

export interface ReadStateOptions {
  /** The WireGuard interface whose configuration (`wg show … dump`) is read. */
  wgIfname: string
  /** Where per-network service files live (`<runtimeDir>/<network>/dnsmasq.*`); dnsmasq is read when given. */
  runtimeDir?: string
}

export interface NetworkDriver {
  /**
   * Links (all of them: taps are needed too), the WireGuard interface, `pc-vx` flooding entries,
   * dnsmasq instances under the runtime dir, the `inet pc-net` nftables table and IPv4 forwarding.
   */
  readState: (options: ReadStateOptions) => Promise<ActualState>
  /** Applies steps in order; stops at the first failure with a NETWORK_DRIVER_ERROR. */
  apply: (steps: readonly Step[]) => Promise<void>
}
