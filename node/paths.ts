/**
 * Default locations, kept apart from node/config.ts so the CLI can find the socket without loading
 * the daemon's dependencies (the CLI must start fast).
 */
export const DEFAULT_CONFIG = '/etc/picocloud/config.toml'
export const DEFAULT_STATE = '/var/lib/picocloud'
export const DEFAULT_SOCKET = '/run/picocloud/picocloud.sock'

/** The socket the CLI talks to: --socket, then PICOCLOUD_SOCKET, then the default. */
export function cliSocket (flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? env.PICOCLOUD_SOCKET ?? DEFAULT_SOCKET
}
