/**
 * The one loader of the C++ addon (native/), and its types. No policy and no
 * promises here: the store layer wraps these callbacks.
 *
 * Every store call runs on libuv's thread pool and calls back node-style.
 * Buffers passed to storeWrite/storeRead are used in place (zero copy) and
 * must not be changed or reused until the callback runs. Errors carry a
 * string `code`: an errno name ('ENOENT', 'ENOSPC', 'EIO', ...) or one of
 * ERANGE (outside the store), EINVAL (bad size, block size, alignment),
 * ECHECKSUM (with `block`), ECLOSED (the store was closed), EROFS (a write,
 * discard or merge on a store opened read-only).
 */
import { existsSync } from 'node:fs'
import path from 'node:path'
import { pxdError } from '../errors'
import type { ShareClientBinding } from './share-client-binding'
import type { ShareServerBinding } from './share-server-binding'

declare const storeHandleBrand: unique symbol

/** An open block store; opaque, only meaningful to the addon that made it. */
export type StoreHandle = { readonly [storeHandleBrand]: true }

/**
 * Every code the addon produces: errno names from its table in
 * native/block_store.cc (an errno not in it is reported as EIO), plus its own.
 */
export type NativeErrorCode =
  | 'EPERM' | 'ENOENT' | 'EINTR' | 'EIO' | 'ENXIO' | 'EBADF' | 'EAGAIN' | 'ENOMEM'
  | 'EACCES' | 'EFAULT' | 'EBUSY' | 'EEXIST' | 'ENODEV' | 'ENOTDIR' | 'EISDIR' | 'EINVAL'
  | 'ENFILE' | 'EMFILE' | 'ETXTBSY' | 'EFBIG' | 'ENOSPC' | 'ESPIPE' | 'EROFS' | 'ERANGE'
  | 'ENAMETOOLONG' | 'ENOSYS' | 'ELOOP' | 'EOVERFLOW' | 'EOPNOTSUPP' | 'EDQUOT' | 'ESTALE'
  | 'ECHECKSUM' | 'ECLOSED' | 'ENOTSUP'

export type NativeError = Error & {
  code: NativeErrorCode
  /** The OS errno (positive), when a system call failed. */
  errno?: number
  /** The system call that failed. */
  syscall?: string
  /** The file involved, when one is. */
  path?: string
  /** For ECHECKSUM: index of the first block that did not match. */
  block?: number
}

export type Callback = (err: NativeError | null) => void

export interface StoreRecovery {
  /** Regions (1 MiB) an earlier run left marked in the intent map, all checked. */
  regions: number
  /** Blocks among them whose crc did not match their data and was rebuilt from it. */
  blocks: number
}
export type ResultCallback<T> = (err: NativeError | null, result?: T) => void

export interface NativeBinding {
  /** CRC-32C of `buf`, continuing from `init` (a previous result; 0 to start). */
  crc32c(buf: Uint8Array, init?: number): number
  /** The SSE4.2 path; throws (code ENOTSUP) where the CPU lacks it. */
  crc32cHardware(buf: Uint8Array, init?: number): number
  crc32cSoftware(buf: Uint8Array, init?: number): number
  hasHardwareCrc32c(): boolean
  /**
   * AES-256-XTS (aes-xts-plain64) of `src` into `dst` (may be the same buffer): 512-byte
   * units, unit n of the buffer tweaked with firstUnit + n. Decrypting an all-zero unit
   * gives zeros. Synchronous; throws (code EINVAL) on a bad key or a length not a multiple of 512.
   */
  xtsCrypt(key: Uint8Array, src: Uint8Array, dst: Uint8Array, firstUnit: number, encrypt: boolean): void

  /**
   * create=true makes the three files (EEXIST if any exists) sized for `size`;
   * create=false opens them and checks their sizes (EINVAL on mismatch).
   * blockSize: a power of two in [512, 65536]; size: a positive multiple of it.
   *
   * `intentPath` is the write-intent map: the 1 MiB regions written since their last
   * flush. When an earlier run crashed, the open rebuilds the crc of every block in a
   * marked region whose data no longer matches it (a write cut between its data and its
   * crc), so such a block reads back as its old or its new contents; storeRecovery tells
   * how many. A missing intent file (a replica made before it existed) is created empty.
   */
  storeOpen(
    dataPath: string,
    crcPath: string,
    intentPath: string,
    size: number,
    blockSize: number,
    create: boolean,
    cb: ResultCallback<StoreHandle>,
  ): void
  /**
   * storeOpen over snapshot layers (native/block_layers.cc). `bases` is a flat list
   * [data0, crc0, data1, crc1, ...] of frozen layers' files, nearest first; each may be
   * smaller than the store (its blocks past its end are absent in it), never larger
   * (EINVAL). A block whose live crc entry is 0 reads from the first base that has it
   * (crc entry not 0), checked against that base's crc; only the last base keeps crc 0 as
   * zeros. Writes and discards go to the live files only. readOnly opens the files
   * O_RDONLY without an intent map (intentPath is ignored): writes and discards fail
   * EROFS, a flush does nothing. readOnly with create is EINVAL.
   */
  storeOpenLayered(
    dataPath: string,
    crcPath: string,
    intentPath: string,
    size: number,
    blockSize: number,
    create: boolean,
    readOnly: boolean,
    bases: string[],
    cb: ResultCallback<StoreHandle>,
  ): void
  /**
   * Copies every block the nearest base has and the live layer lacks into the live layer
   * (like a write: a racing write is never overwritten), then syncs its data and crc
   * files: the view is unchanged and no longer needs that base. EINVAL without bases,
   * EROFS when read-only.
   */
  storeMergeBase(handle: StoreHandle, cb: Callback): void
  /**
   * The same for two frozen layers' files: every block `from` has and `into` lacks is
   * copied into `into` (data, fdatasync, then crc entries, fdatasync), so a crash midway
   * leaves `into` over `from` reading as before. `from` is the layer right below `into`,
   * which must have at least as many blocks (EINVAL). ECHECKSUM (with `block`) if a block
   * of `from` does not match its crc.
   */
  layerMerge(fromData: string, fromCrc: string, intoData: string, intoCrc: string, blockSize: number, cb: Callback): void
  /**
   * Like layerMerge, but every block `from` has is copied, over what `into` has: a collapse,
   * where `from` (closed live files, or a frozen layer) is copied down into `into`, the layer
   * right below it, which then takes its place. A crash leaves blocks of `into` torn only
   * where `from` has them (and is read first): do it again from the start.
   */
  layerOverlay(fromData: string, fromCrc: string, intoData: string, intoCrc: string, blockSize: number, cb: Callback): void
  /** What the open found of a crash: regions the intent map had marked, blocks whose crc it rebuilt. */
  storeRecovery(handle: StoreHandle): StoreRecovery
  /** Any range inside the store; partial blocks are read, verified and merged. */
  storeWrite(handle: StoreHandle, offset: number, buf: Uint8Array, cb: Callback): void
  /** Fills `buf` with verified bytes; its contents are unspecified on error. */
  storeRead(handle: StoreHandle, offset: number, buf: Uint8Array, cb: Callback): void
  /**
   * XXH3-64 of each block from `offset` (block-aligned), 8 little-endian bytes per block
   * into `out` (its length picks how many blocks), of the blocks as they read (through the
   * store's layers); 0 for a block that reads as zeros. Replicas compare these: the stored crc32c is the same for any two blocks that end in
   * their own crc32c (see native/block_hashes.cc). With `data` (as long as the range), the
   * range's bytes go there too, checked as storeRead checks them: one pass over the disk.
   */
  storeHashes(handle: StoreHandle, offset: number, out: Uint8Array, cb: Callback, data?: Uint8Array): void
  /**
   * The range reads back as zeros: whole blocks get crc 0 (over layers: the crc of zeros,
   * so they do not read through) and are punched out of the data file (the host gets their
   * space back), the parts of blocks at either end are written
   * with zeros. Marked in the intent map and made durable by a flush, like a write.
   */
  storeDiscard(handle: StoreHandle, offset: number, length: number, cb: Callback): void
  /**
   * fdatasync of the data and crc files. Once one failed, every later flush of this
   * handle fails too (EIO): Linux reports a lost write-back once, and the next fdatasync
   * would succeed without the lost pages. Only a reopen (after a resync) clears it.
   */
  storeFlush(handle: StoreHandle, cb: Callback): void
  /**
   * Waits for in-flight calls, flushes what is unflushed, clears the intent map and
   * closes the files; later calls fail ECLOSED. Idempotent.
   */
  storeClose(handle: StoreHandle, cb: Callback): void
  /** For tests: closes the files as a crash would, leaving the intent map's marks. Then like storeClose. */
  storeAbandon(handle: StoreHandle, cb: Callback): void
  /** How long a flushed region stays marked after its last write (default 5000 ms). */
  storeSetIntentIdle(handle: StoreHandle, ms: number): void
  /**
   * Detaches `buf` and frees its memory now rather than at a later GC. Every view of it
   * reads as empty afterwards: only for memory nothing else uses any more.
   */
  releaseArrayBuffer(buf: ArrayBuffer): void
  /**
   * Opens (creating, mode 0600) `path` and takes an exclusive flock on it without waiting.
   * Returns the descriptor: the lock lasts until it is closed or the process ends. Throws
   * code EAGAIN when another process holds the lock.
   */
  lockFile(path: string): number
  /**
   * Sends `state` ("READY=1", "STOPPING=1", "STATUS=...") to the service manager's
   * $NOTIFY_SOCKET (sd_notify(3)). False when there is none; throws when sending fails.
   */
  serviceNotify(state: string, fds?: number[]): boolean
  /** One unix datagram to the socket at `path` ("@name": abstract), with descriptors attached (SCM_RIGHTS). */
  sendDatagram(path: string, payload: string, fds?: number[]): void
  /** A datagram socket bound at a new absolute path (mode 0600); its descriptor. */
  bindDatagram(path: string): number
  /** The next datagram on a bound socket, waited for on a worker thread; rejects with ETIMEDOUT after `timeoutMs`. */
  receiveDatagram(fd: number, timeoutMs: number): Promise<{ payload: string; fds: number[] }>
  /** The first byte waiting on a stream socket, not taken from it; -1 when none yet, -2 when the peer closed. */
  peekByte(fd: number): number
  /** An anonymous file in memory (memfd_create), never on a disk; its descriptor. */
  memfdCreate(name: string): number
  /** Closes a descriptor this process got from a datagram or from its parent (never 0-2). */
  closeDescriptor(fd: number): void
}

declare const fuseHandleBrand: unique symbol

/** A mounted FUSE server of the addon; opaque. */
export type FuseHandle = { readonly [fuseHandleBrand]: true }

/** What a FUSE request asks; the numbers of FuseKind in native/fuse_server.h. */
export const enum FuseKind {
  /** The server stopped on its own (unmounted from outside, or failed): `length` is the errno, 0 if none. */
  Stopped = 0,
  Read = 1,
  Write = 2,
  /** FLUSH (a handle closed) or FSYNC. */
  Flush = 3,
  /** FALLOCATE punching a hole or zeroing a range (a loop device's discard or write-zeroes). */
  Discard = 4,
  /** The kernel's INIT was answered (once per mount): `length` is the request timeout in force, in seconds (0: none). */
  Init = 5,
}

/**
 * Called on the JS thread for each request that needs the volume: read `length` bytes at
 * `offset` into the slot's data area, write the `length` bytes found there, or flush.
 * Answer with fuseReply(handle, slot, bytes or -errno), exactly once.
 */
export type FuseRequestHandler = (kind: FuseKind, slot: number, key: number, offset: number, length: number) => void

export interface FuseLayout {
  /** Every slot; slot i's data area starts at i * slotBytes + dataOffset (page-aligned). */
  memory: ArrayBuffer
  slots: number
  slotBytes: number
  dataOffset: number
  maxRequestBytes: number
}

export interface FuseBinding {
  /**
   * Opens /dev/fuse, mounts it at `mountpoint` (an existing directory) and serves it on a
   * thread of the addon. Throws an Error with code (EBUSY, ENOENT, EPERM, EIO, EINVAL).
   * maxRequestBytes: a multiple of 4096 in [32 KiB, 1 MiB]; slots: requests in flight, [2, 1024].
   * requestTimeoutSeconds (0 or absent: none, at most 65535): asked of the kernel at INIT, where it
   * offers it (FUSE_REQUEST_TIMEOUT): once a request waited that long, it aborts the connection.
   */
  fuseMount(mountpoint: string, maxRequestBytes: number, slots: number, onRequest: FuseRequestHandler, requestTimeoutSeconds?: number): FuseHandle
  fuseLayout(handle: FuseHandle): FuseLayout
  /** Answers a request: bytes read or written (0 for a flush), or -errno. */
  fuseReply(handle: FuseHandle, slot: number, result: number): void
  /**
   * A regular file of `size` bytes in the root directory; its requests carry `key`. A name
   * added again (after fuseRemoveFile, or over a file present) is a new file: whatever still
   * holds the earlier one open (a lazily detached loop device) never reaches this one.
   */
  fuseAddFile(handle: FuseHandle, name: string, size: number, key: number): void
  /** Lookups no longer find it; requests on its open handles fail (EIO; a flush succeeds). */
  fuseRemoveFile(handle: FuseHandle, name: string): void
  /** A file's new size (its volume grew); the kernel sees it once its cached attributes expire (1 s). Throws ENOENT. */
  fuseSetFileSize(handle: FuseHandle, name: string, size: number): void
  /** Without lazy, throws code EBUSY while the mount is in use (and keeps serving). Idempotent. */
  fuseUnmount(handle: FuseHandle, lazy?: boolean): void
  /**
   * Takes over a session another process mounted (a live restart): `session.fd` is its
   * /dev/fuse descriptor, owned from now on. Serves nothing until fuseServe; bind the files first.
   */
  fuseAdopt(mountpoint: string, maxRequestBytes: number, slots: number, onRequest: FuseRequestHandler, session: AdoptedFuseSession): FuseHandle
  /** An adopted file's requests carry `key` (> 0) from now on; false when the session has no such file. */
  fuseBindFile(handle: FuseHandle, name: string, key: number): boolean
  /** Starts reading an adopted session; unbound files are removed first. `resend`: the kernel sends again what a dead predecessor read and never answered (false when it cannot). */
  fuseServe(handle: FuseHandle, resend: boolean): boolean
  /** What a successor adopts: the files by nodeid, and the counters. */
  fuseSession(handle: FuseHandle): FuseSessionTable
  /** Stops reading requests (the kernel queues them); returns the requests still with JS. */
  fuseStopReading(handle: FuseHandle): number
  fuseInFlight(handle: FuseHandle): number
  /** Gives the session's descriptor away (now the caller's) without an unmount; the handle is done. */
  fuseExport(handle: FuseHandle): number
  /** Whether the kernel aborted the FUSE connection on `fd` (a request outlived its timeout): such a session cannot be served. */
  fuseSessionAborted(fd: number): boolean
}

export interface FuseSessionTable {
  files: Array<{ name: string; nodeid: number; size: number }>
  nextNodeid: number
  mountedAt: number
  maxRequestBytes: number
  /** The connection's descriptor, still the handle's (for the service manager's fd store). */
  fd: number
  /** Not the addon's: the request timeout (s) the kernel enforces, as the device directory learnt it at INIT. */
  requestTimeout?: number
}

export interface AdoptedFuseSession {
  fd: number
  files: Array<{ name: string; nodeid: number; size: number }>
  nextNodeid: number
  mountedAt: number
}

/** The folder holding package.json, found by walking up from this file. */
function packageRoot(): string {
  let dir = __dirname
  for (;;) {
    if (existsSync(path.join(dir, 'package.json'))) return dir
    const parent = path.dirname(dir)
    if (parent === dir) throw pxdError('PRECONDITION', `no package.json above ${__dirname}`)
    dir = parent
  }
}

function load(): NativeBinding & FuseBinding & ShareServerBinding & ShareClientBinding {
  const file = path.join(packageRoot(), 'build', 'Release', 'pxd_native.node')
  if (!existsSync(file)) {
    throw pxdError('PRECONDITION', `the native addon ${file} is missing: run \`npm run build\``)
  }
  try {
    return require(file) as NativeBinding & FuseBinding & ShareServerBinding & ShareClientBinding
  } catch (err) {
    throw pxdError('PRECONDITION', `cannot load the native addon ${file} (run \`npm run build\`): ${String(err)}`, err)
  }
}

export const native: NativeBinding & FuseBinding & ShareServerBinding & ShareClientBinding = load()
