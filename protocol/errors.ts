/**
 * Errors that cross a boundary (socket, wire, CLI) carry a stable `code` that scripts and tests
 * match on, and a message a person can act on. One class per family; the code names the condition.
 *
 * @example
 * throw new PicocloudError('BAD_PEER_KEY', 'not a peer key: "xyz" (expected the output of `picocloud id`)')
 */
export class PicocloudError extends Error {
  override name = 'PicocloudError'
  readonly code: string
  /** HTTP status used when this error answers a local API call. */
  readonly status: number

  constructor (code: string, message: string, status = 400, options?: ErrorOptions) {
    super(message, options)
    this.code = code
    this.status = status
  }

  toJSON (): ErrorBody {
    return { error: { code: this.code, message: this.message } }
  }
}

/** The JSON body of every failed local API call. */
export interface ErrorBody {
  error: { code: string, message: string }
}

export function isErrorBody (value: unknown): value is ErrorBody {
  if (typeof value !== 'object' || value === null) return false
  const e = (value as { error?: unknown }).error
  return typeof e === 'object' && e !== null &&
    typeof (e as { code?: unknown }).code === 'string' &&
    typeof (e as { message?: unknown }).message === 'string'
}

/** Stable error codes. Scripts may rely on these strings. */
export const ErrorCode = {
  BadRequest: 'BAD_REQUEST',
  BadJson: 'BAD_JSON',
  BodyTooLarge: 'BODY_TOO_LARGE',
  RequestTimeout: 'REQUEST_TIMEOUT',
  NotFound: 'NOT_FOUND',
  MethodNotAllowed: 'METHOD_NOT_ALLOWED',
  BadPeerKey: 'BAD_PEER_KEY',
  BadAddress: 'BAD_ADDRESS',
  NotInMesh: 'NOT_IN_MESH',
  AlreadyInMesh: 'ALREADY_IN_MESH',
  NotAllowed: 'NOT_ALLOWED',
  NotMember: 'NOT_MEMBER',
  JoinFailed: 'JOIN_FAILED',
  DaemonUnreachable: 'DAEMON_UNREACHABLE',
  Internal: 'INTERNAL',
  Config: 'BAD_CONFIG',
  Usage: 'USAGE',
  // Data plane: addressing, network plan and network drivers (node/network, node/network/drivers)
  BadNetworkPlan: 'BAD_NETWORK_PLAN',
  NetworkDriver: 'NETWORK_DRIVER_ERROR',
  WireguardUnavailable: 'WIREGUARD_UNAVAILABLE',
  // Canonical JSON and signed request envelopes (protocol/canonical-json.ts, protocol/envelope.ts)
  NotCanonicalizable: 'NOT_CANONICALIZABLE',
  NotCanonical: 'NOT_CANONICAL',
  BadEnvelope: 'BAD_ENVELOPE',
  UnknownIssuer: 'UNKNOWN_ISSUER',
  BadSignature: 'BAD_SIGNATURE',
  WrongMesh: 'WRONG_MESH',
  CreatedInFuture: 'CREATED_IN_FUTURE',
  RequestExpired: 'REQUEST_EXPIRED',
  LifetimeTooLong: 'LIFETIME_TOO_LONG',
  Replay: 'REPLAYED_REQUEST',
  BadBody: 'BAD_BODY',
  // OpenPGP keyring and trust policy (keys/keyring.ts, keys/trust-policy.ts)
  BadKey: 'BAD_KEY',
  KeyNotFound: 'KEY_NOT_FOUND',
  NoSecretKey: 'NO_SECRET_KEY',
  PassphraseRequired: 'PASSPHRASE_REQUIRED',
  BadPassphrase: 'BAD_PASSPHRASE',
  Keyring: 'KEYRING_ERROR',
  BadFingerprint: 'BAD_FINGERPRINT',
  BadPolicy: 'BAD_POLICY',
  // The signing key was not valid at a time a request is judged at (keys/verify.ts)
  KeyRevoked: 'KEY_REVOKED',
  KeyExpired: 'KEY_EXPIRED',
  KeyNotValid: 'KEY_NOT_VALID',
  // Hypervisor drivers and the image store (node/compute/hypervisor, node/compute/images)
  BadVmSpec: 'BAD_VM_SPEC',
  VmNotFound: 'VM_NOT_FOUND',
  VmStartFailed: 'VM_START_FAILED',
  Hypervisor: 'HYPERVISOR_ERROR',
  BadImage: 'BAD_IMAGE',
  ImageHashMismatch: 'IMAGE_HASH_MISMATCH',
  ImageNotFound: 'IMAGE_NOT_FOUND'
} as const
