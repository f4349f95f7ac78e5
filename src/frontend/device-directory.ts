/**
 * The node's device directory: one FUSE mount (<run-dir>/dev) that shows every attached
 * volume as a regular file of the volume's size, named by volume id; a loop device sits on
 * each file. Two servers can provide it (`--fuse-server`):
 *
 * - `addon` (default): the C++ addon speaks the FUSE protocol on /dev/fuse itself and asks
 *   the kernel for asynchronous direct I/O and 1 MiB requests, so a loop device keeps many
 *   requests in flight (see native/fuse_server.h).
 * - `fuse-native`: libfuse 2 through fuse-native. libfuse 2 never negotiates asynchronous
 *   direct I/O, so the kernel sends one request at a time, of at most 128 KiB.
 *
 * Either way the server only hands each request's buffer to the volume's BlockDevice and
 * answers when it settles; the buffer is the server's own memory, valid until the answer,
 * so no copy is made. Nothing in this process may touch files under the mount synchronously
 * (or through the libuv pool): the request would wait for the very thread that must answer it.
 */
import type { Logger } from 'pino'
import { constants } from 'node:os'
import { isPxdError, pxdError, type PxdError } from '../errors'

export interface BlockDevice {
  readonly size: number
  read(offset: number, into: Uint8Array): Promise<void>
  write(offset: number, data: Uint8Array): Promise<void>
  flush(): Promise<void>
  /** The range reads back as zeros (fstrim, discard); absent where the volume does not discard. */
  readonly discard?: (offset: number, length: number) => Promise<void>
}

/** The same device without discard: its discards are refused as not supported. Its size follows the device's (a volume grows). */
export function withoutDiscard(device: BlockDevice): BlockDevice {
  return {
    get size() { return device.size },
    read: (offset, into) => device.read(offset, into),
    write: (offset, data) => device.write(offset, data),
    flush: () => device.flush(),
  }
}

/** Refused as not supported (EOPNOTSUPP): what a device without discard answers a discard with. */
export function notSupported(): PxdError {
  return pxdError('NOT_SUPPORTED', 'discard is off for this volume (nodiscard=true)')
}

export interface DeviceDirectory {
  readonly mountpoint: string
  mount(): Promise<void>
  /** `lazy` when shutting down: detach even if a loop device still holds a file. */
  unmount(lazy?: boolean): Promise<void>
  /** The path of a device file; valid once `add` has run. */
  pathOf(name: string): string
  add(name: string, device: BlockDevice): void
  remove(name: string): void
  /** The device file shows the device's new size (it grew); the kernel sees it within ATTR_CACHE_MS. */
  resized(name: string): void
}

/** How long the kernel may keep a device file's old attributes (its size) after they changed. */
export const ATTR_CACHE_MS = 1000

export const FUSE_SERVERS = ['addon', 'fuse-native'] as const
export type FuseServerKind = (typeof FUSE_SERVERS)[number]

/** The errno a failed block request answers with; the cause is logged here, once (a refused discard is no failure). */
export function errnoOf(log: Logger, op: string, err: unknown): number {
  if (isPxdError(err, 'NOT_SUPPORTED')) return constants.errno.EOPNOTSUPP
  if (isPxdError(err, 'READ_ONLY')) return constants.errno.EROFS
  log.error({ err, op }, 'block I/O failed')
  return isPxdError(err, 'INVALID_ARGUMENT') ? constants.errno.EINVAL : constants.errno.EIO
}
