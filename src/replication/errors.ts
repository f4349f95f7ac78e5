/**
 * Errors of the peer transport: the daemon's one error type (PxdError), restricted to the
 * codes a link or the peer server raises on this node. Callers match on `code` only.
 */
import { PxdError, type ErrorCode } from '../errors'

export type ReplicationCode = Extract<ErrorCode,
  | 'PEER_UNAVAILABLE' | 'PEER_TIMEOUT' | 'PEER_MISMATCH' | 'AUTH_FAILED' | 'AUTH_REQUIRED' | 'HANDSHAKE_TIMEOUT'
  | 'BAD_FRAME' | 'UNSUPPORTED_VERSION' | 'FRAME_TOO_LARGE' | 'LINK_CLOSED' | 'ABORTED' | 'SHUTTING_DOWN' | 'INTERNAL'>

/** A failure of the transport itself, raised on this node. */
export class ReplicationError extends PxdError {
  declare readonly code: ReplicationCode

  constructor(code: ReplicationCode, message: string, cause?: unknown) {
    super(code, message, cause === undefined ? undefined : { cause })
    this.name = 'ReplicationError'
  }
}

/**
 * A request the peer answered with `ack ok: false`: the code is the peer's, whatever
 * catalogue it comes from (STALE_EPOCH, UNKNOWN_VOLUME, IO_ERROR, ...).
 */
export class PeerRequestError extends Error {
  readonly code: string
  readonly peer: string

  constructor(peer: string, code: string, message: string) {
    super(message)
    this.name = 'PeerRequestError'
    this.code = code
    this.peer = peer
  }
}

export function replicationError(code: ReplicationCode, message: string, cause?: unknown): ReplicationError {
  return new ReplicationError(code, message, cause)
}

export function isReplicationError(err: unknown, code?: ReplicationCode): err is ReplicationError {
  return err instanceof ReplicationError && (code === undefined || err.code === code)
}

/** The code of any thrown value, if it carries one. */
export function codeOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null) {
    const code = (err as { code?: unknown }).code
    if (typeof code === 'string') return code
  }
  return undefined
}
