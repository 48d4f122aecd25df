/**
 * One data-plane reconciliation round: plan → read actual → diff → apply. Devices, dnsmasq
 * instances (restarted only when their configuration hash changed) and the nftables table are all
 * reconciled the same way; a network that is gone takes its dnsmasq, files and rules with it.
 *
 * @example
 * const steps = await reconcileNetwork(driver, input) // [] when everything was already right
 */
import type { NetworkDriver } from './drivers/types.ts'
import type { Logger } from '../log.ts'
import { silentLogger } from '../log.ts'
import { planHost, diff } from './plan.ts'
import type { PlanInput, Step } from './plan.ts'

export async function reconcileNetwork (driver: NetworkDriver, input: PlanInput, log: Logger = silentLogger): Promise<Step[]> {
  const desired = planHost(input)
  const actual = await driver.readState({ wgIfname: desired.wireguard.ifname, ...(input.runtimeDir !== undefined ? { runtimeDir: input.runtimeDir } : {}) })
  const steps = diff(desired, actual)
  for (const s of steps) log.info(s.description, { step: s.type })
  await driver.apply(steps)
  return steps
}
