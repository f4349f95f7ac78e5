/**
 * Types of the addon's shared-volume executor (native/share_server.h): it serves the file
 * operations of native/share_wire.h, sent by other nodes, on a volume's mounted ext4, in
 * worker threads of its own. JavaScript only moves the request and reply bytes.
 */

declare const shareServerBrand: unique symbol

/** An open share server; opaque, only meaningful to the addon that made it. */
export type ShareServerHandle = { readonly [shareServerBrand]: true }

export interface ShareServerStats {
  /** Requests executed (errors included). */
  requests: number
  /** Bytes READ requests returned. */
  bytesRead: number
  /** Bytes WRITE requests wrote. */
  bytesWritten: number
  /** Descriptors the server holds: the root, cached handles, open files and lock descriptors. */
  openFds: number
}

export interface ShareServerBinding {
  /**
   * Serves the file system mounted at `rootPath`, which must be the root of a mount of a
   * file system with file handles (ext4). `tag`: the volume's 64-bit tag as 16 hex digits
   * (the volume id); handles carry it and a request with another tag is refused (ESTALE).
   * `threads`: worker threads, 1..16. Needs root (CAP_DAC_READ_SEARCH, CAP_SETUID, ...).
   * Throws an Error with `code` (ENOENT, ENOTDIR, EOPNOTSUPP, EINVAL, EPERM, ...).
   */
  shareServerOpen(rootPath: string, tag: string, threads: number): ShareServerHandle
  /**
   * Executes one wire request (share_wire.h) for client number `client`, a small
   * non-negative integer the JS layer gives each peer node: open files and locks are
   * counted per client. The request's bytes are used in place and must stay untouched until
   * `cb`. `cb` gets the wire reply, a Buffer over memory of its own: a failure is its
   * WireReply.error (-errno), never a throw. A SETLKW that would wait is answered -EAGAIN
   * with the kReplyWouldBlock flag: ask again later. After shareServerClose: -ENOTCONN.
   */
  shareServerExec(handle: ShareServerHandle, client: number, request: Uint8Array, cb: (reply: Buffer) => void): void
  /** Releases everything the client holds: its locks and its open files. Synchronous. */
  shareServerDropClient(handle: ShareServerHandle, client: number): void
  /**
   * Waits for the requests in flight (their callbacks run first), stops the threads, closes
   * every descriptor (the root's too), then calls `cb`. Idempotent: a later close calls back
   * too. Handles stay valid for a new server on the same file system.
   */
  shareServerClose(handle: ShareServerHandle, cb: () => void): void
  shareServerStats(handle: ShareServerHandle): ShareServerStats
}
