/**
 * One error type for the whole daemon. Every failure a caller may act on has a
 * string `code` from this catalogue; callers match on the code, never on text.
 * The message is written for the person who reads it (an operator, a Docker user).
 */
export const ErrorCodes = {
  INVALID_ARGUMENT: 'bad input: a malformed value, an unknown option, a bad name',
  KEY_REQUIRED: 'a secure volume was mounted without the key its data key is wrapped with (passphrase, secret, cluster secret)',
  BAD_KEY: 'the key given for a secure volume does not unwrap its data key',
  NOT_FOUND: 'the named volume (or object) does not exist',
  ALREADY_EXISTS: 'a volume of that name exists with a different spec',
  IN_USE: 'the volume is mounted and cannot be removed',
  NO_SPACE: 'not enough free space for the requested size',
  UNSATISFIABLE: 'the cluster cannot satisfy the request (e.g. repl greater than the online nodes)',
  CHECKSUM_MISMATCH: 'a block read back does not match its crc32c',
  IO_ERROR: 'a system call on a replica file failed',
  STORE_CLOSED: 'the block store was closed',
  ENGINE_CLOSED: 'the volume engine was closed',
  DAEMON_STOPPING: 'the daemon is shutting down',
  COMMAND_FAILED: 'an external command (losetup, mkfs, mount) failed',
  BODY_TOO_LARGE: 'a request body exceeded the size cap',
  MALFORMED_REQUEST: 'a request body is not valid JSON of the expected shape',
  KVDB_UNAVAILABLE: 'the metadata store cannot be reached',
  KVDB_DENIED: 'etcd refused pxd: a wrong user or password, or a role without access to the cluster prefix',
  CONFLICT: 'a compare-and-swap lost against a concurrent change',
  PRECONDITION: 'the environment lacks something pxd needs (root, /dev/fuse, a tool)',
  DIR_LOCKED: 'another pxd process holds this data dir or run dir',
  UNAUTHORIZED: 'a changing API call came without the API token',
  UNKNOWN_VOLUME: 'a peer named a volume this node holds no replica of',
  NOT_COORDINATOR: 'a peer asked to create or drop a replica the metadata store does not let it change (no grant names it)',
  STALE_EPOCH: 'a frame carried an older attach epoch than the replica has accepted',
  FENCED: 'this node no longer coordinates the volume: another node attached it with a newer epoch',
  PEER_UNAVAILABLE: 'the link to a peer node is down',
  PEER_TIMEOUT: 'a peer did not answer a request in time',
  AUTH_FAILED: 'a peer failed the cluster-secret handshake',
  BAD_FRAME: 'a peer sent a frame that does not decode or validate',
  PEER_MISMATCH: 'the node answering at a peer address is not the node expected there',
  AUTH_REQUIRED: 'a peer sent a request before completing the handshake',
  HANDSHAKE_TIMEOUT: 'a peer did not complete the handshake in time',
  UNSUPPORTED_VERSION: 'a peer speaks another protocol version',
  FRAME_TOO_LARGE: 'a peer frame exceeded the size cap',
  LINK_CLOSED: 'the peer link was closed by this node',
  ABORTED: 'the caller gave up on the request',
  SHUTTING_DOWN: 'the peer is shutting down',
  INTERNAL: 'a peer failed without saying why (a bug): see its log',
  NOT_SERVING: 'a file operation reached a node that does not serve that shared volume (any more)',
  NOT_A_CLIENT: 'a node sent file operations for a shared volume it has not mounted',
  NOT_SUPPORTED: 'the volume does not do what was asked (a discard with nodiscard=true)',
  READ_ONLY: 'the volume is a snapshot: it is read-only',
  IN_GRACE: 'a shared volume\'s new server takes only reclaims of locks for a moment after a takeover',
  SERVER_RESTARTED: 'a shared volume\'s server restarted in place: its client takes its locks again before anything else',
  SERVER_RECOVERED: 'a shared volume\'s server came back after a crash, without its reply cache: its client takes its locks again and fails what must not run twice and got no answer',
  HANDOFF_FAILED: 'a live restart could not take over the running pxd\'s FUSE session',
} as const

export type ErrorCode = keyof typeof ErrorCodes

/** Facts an error carries as data, so that no caller reads them out of the message. */
export interface ErrorDetails {
  cause?: unknown
  /** CHECKSUM_MISMATCH: the first block (4 KiB, counted from the start of the volume) that failed. */
  block?: number
  /** The node that raised it, when it came from a peer. */
  peer?: string
}

export class PxdError extends Error {
  readonly code: ErrorCode
  // Declared, not defined: an error without a block has no `block` property at all.
  declare readonly block?: number
  declare readonly peer?: string

  constructor(code: ErrorCode, message: string, details?: ErrorDetails) {
    super(message, details?.cause === undefined ? undefined : { cause: details.cause })
    this.name = 'PxdError'
    this.code = code
    if (details?.block !== undefined) Object.defineProperty(this, 'block', { value: details.block, enumerable: true })
    if (details?.peer !== undefined) Object.defineProperty(this, 'peer', { value: details.peer, enumerable: true })
  }
}

export function pxdError(code: ErrorCode, message: string, cause?: unknown): PxdError {
  return cause === undefined ? new PxdError(code, message) : new PxdError(code, message, { cause })
}

export function isPxdError(err: unknown, code?: ErrorCode): err is PxdError {
  return err instanceof PxdError && (code === undefined || err.code === code)
}

/** Whether a string (from a peer, from JSON) is a code of this catalogue. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(ErrorCodes, code)
}

/** The code of any thrown value, if it carries a string one (ours, an errno name, ...). */
export function codeOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null) {
    const code = (err as { code?: unknown }).code
    if (typeof code === 'string') return code
  }
  return undefined
}

/**
 * The block a checksum failure names, if it names one: its own `block` (a PxdError's, also
 * one that came from a peer), else its cause's (the addon's error, for the local store).
 */
export function blockOf(err: unknown): number | undefined {
  const e = err as { block?: unknown; cause?: { block?: unknown } } | null | undefined
  if (isBlockNumber(e?.block)) return e.block
  const inCause = e?.cause?.block
  return isBlockNumber(inCause) ? inCause : undefined
}

const isBlockNumber = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0

/** The message of any thrown value, for logs and protocol replies. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
