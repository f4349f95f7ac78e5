/**
 * Error codes of the peer transport. Until the daemon's catalogue (src/errors.ts) carries
 * them, the transport throws its own error type with the same shape: a string `code`,
 * a message for people, a `cause`. Callers match on `code` only.
 */
export const ReplicationCodes = {
  PEER_UNAVAILABLE: 'the link to the peer is down, could not be set up, or was lost with the request pending',
  PEER_TIMEOUT: 'the peer did not acknowledge the request in time',
  PEER_MISMATCH: 'the address answered as another node than the one expected',
  AUTH_FAILED: 'a side of the link failed the cluster-secret handshake (wrong secret, wrong cluster, bad proof)',
  AUTH_REQUIRED: 'a frame other than the expected handshake frame arrived before the handshake completed',
  HANDSHAKE_TIMEOUT: 'the handshake did not complete in time',
  BAD_FRAME: 'a frame that does not decode or validate, or that the protocol does not allow at that point',
  UNSUPPORTED_VERSION: 'the peer speaks another protocol version',
  FRAME_TOO_LARGE: 'a frame or its data exceeds the size limit',
  LINK_CLOSED: 'the link pool or server was closed by this node',
  ABORTED: 'the caller aborted the request',
  SHUTTING_DOWN: 'the peer is shutting down',
  INTERNAL: 'a request handler failed without a code',
} as const

export type ReplicationCode = keyof typeof ReplicationCodes

/** A failure of the transport itself, raised on this node. */
export class ReplicationError extends Error {
  readonly code: ReplicationCode

  constructor(code: ReplicationCode, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'ReplicationError'
    this.code = code
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
