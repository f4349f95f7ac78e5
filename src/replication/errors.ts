/**
 * Errors of the peer transport: the daemon's one error type (PxdError) with the codes a
 * link or the peer server raises on this node. Callers match on `code` only. A peer's
 * refusal of a request (`ack ok: false`) is a PxdError too, with the peer's code.
 */
import { isErrorCode, isPxdError, pxdError, PxdError, type ErrorCode } from '../errors'

const REPLICATION_CODES = [
  'PEER_UNAVAILABLE', 'PEER_TIMEOUT', 'PEER_MISMATCH', 'AUTH_FAILED', 'AUTH_REQUIRED', 'HANDSHAKE_TIMEOUT',
  'BAD_FRAME', 'UNSUPPORTED_VERSION', 'FRAME_TOO_LARGE', 'LINK_CLOSED', 'ABORTED', 'SHUTTING_DOWN', 'INTERNAL',
] as const satisfies readonly ErrorCode[]

export type ReplicationCode = (typeof REPLICATION_CODES)[number]

const TRANSPORT_CODES: ReadonlySet<string> = new Set(REPLICATION_CODES)

/** A failure of the transport itself, raised on this node. */
export function replicationError(code: ReplicationCode, message: string, cause?: unknown): PxdError {
  return pxdError(code, message, cause)
}

/** Whether `err` is a PxdError with a transport code (that code, when given). */
export function isReplicationError(err: unknown, code?: ReplicationCode): err is PxdError & { readonly code: ReplicationCode } {
  return isPxdError(err) && (code === undefined ? TRANSPORT_CODES.has(err.code) : err.code === code)
}

/** A request the peer answered with `ack ok: false`: its code if it is one of ours, and the block it names. */
export function refusalError(peer: string, ack: { code: string; message: string; block?: number }): PxdError {
  const code = isErrorCode(ack.code) ? ack.code : 'INTERNAL'
  return new PxdError(code, ack.message, ack.block === undefined ? { peer } : { peer, block: ack.block })
}
