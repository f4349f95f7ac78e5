/**
 * One replica of a volume on this node's disk: a directory holding
 *   data      the volume's bytes (sparse)
 *   crc       one crc32c per block (BLOCK_SIZE), kept and verified by the native addon
 *   intent    the addon's write-intent map: regions written since their last flush, so
 *             that blocks a crash tore between data and crc get their crc rebuilt
 *   super.json the superblock: volume id, size, block size, attach epoch
 * Block I/O and checksums run in the addon's worker threads; this class adds the
 * superblock, error codes and the promise API the engine uses.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { BLOCK_SIZE, CHECKSUM_BYTES, HASH_BYTES } from '../constants'
import { pxdError, PxdError, type ErrorCode } from '../errors'
import { native, type NativeError, type StoreHandle, type StoreRecovery } from '../native/binding'
import { mkdirDurably, syncDir, writeFileDurably } from '../util/durable'

const SUPERBLOCK_VERSION = 1

export interface Superblock {
  version: number
  volumeId: string
  size: number
  blockSize: number
  /** Highest attach epoch this replica has accepted; frames from older epochs are refused. */
  epoch: number
  createdAt: string
  /** A grow to this size is under way (see ReplicaStore.grow): the next open finishes it. */
  growingTo?: number
}

const files = (dir: string) => ({
  data: path.join(dir, 'data'),
  crc: path.join(dir, 'crc'),
  intent: path.join(dir, 'intent'),
  superblock: path.join(dir, 'super.json'),
})

export class ReplicaStore {
  readonly dir: string
  /**
   * What the open found of a crash: `regions` the intent map had marked (all checked),
   * `blocks` among them torn by the crash whose checksum was rebuilt from their data.
   * Zeros after a clean shutdown, and for a new replica.
   */
  readonly recovery: Readonly<StoreRecovery>
  #handle: StoreHandle
  #superblock: Superblock
  #closing: Promise<void> | undefined
  #flushFailed = false

  private constructor(dir: string, handle: StoreHandle, superblock: Superblock) {
    this.dir = dir
    this.#handle = handle
    this.#superblock = superblock
    this.recovery = native.storeRecovery(handle)
  }

  static async create(dir: string, volumeId: string, size: number): Promise<ReplicaStore> {
    if (size <= 0 || size % BLOCK_SIZE !== 0) {
      throw pxdError('INVALID_ARGUMENT', `replica size ${size} must be a positive multiple of ${BLOCK_SIZE}`)
    }
    // The directory's name and the data and crc files' names are durable once the
    // superblock is: writing it syncs the replica's directory, mkdirDurably its parents.
    await mkdirDurably(dir)
    const f = files(dir)
    const handle = await openNative(f, size, true)
    const superblock: Superblock = {
      version: SUPERBLOCK_VERSION, volumeId, size, blockSize: BLOCK_SIZE, epoch: 0, createdAt: new Date().toISOString(),
    }
    await writeSuperblock(dir, superblock)
    return new ReplicaStore(dir, handle, superblock)
  }

  static async open(dir: string): Promise<ReplicaStore> {
    const f = files(dir)
    let superblock = await readSuperblock(dir)
    if (superblock.growingTo !== undefined) superblock = await finishGrow(dir, superblock, superblock.growingTo)
    const handle = await openNative(f, superblock.size, false)
    return new ReplicaStore(dir, handle, superblock)
  }

  /**
   * Grow a closed replica to `size` bytes (its volume was resized); the new space reads as
   * zeros, unwritten. Crash-safe: the replica is first opened and closed, so its crash
   * recovery runs at the old size and no intent mark is left; then the superblock records
   * the size it grows to, durably, before the files are extended, and the open after a
   * crash finishes the grow. The intent file goes (it is sized for the old regions; with no
   * mark in it nothing is lost) and the next open makes it anew.
   */
  static async grow(dir: string, size: number): Promise<void> {
    if (size % BLOCK_SIZE !== 0) throw pxdError('INVALID_ARGUMENT', `replica size ${size} must be a multiple of ${BLOCK_SIZE}`)
    const store = await ReplicaStore.open(dir)
    const superblock = store.superblock
    await store.close()
    if (size < superblock.size) throw pxdError('INVALID_ARGUMENT', `replica ${dir} is ${superblock.size} bytes; it cannot shrink to ${size}`)
    if (size === superblock.size) return
    const growing = { ...superblock, growingTo: size }
    await writeSuperblock(dir, growing)
    await finishGrow(dir, growing, size)
  }

  /** Remove a replica's files. The store must be closed. */
  static async destroy(dir: string): Promise<void> {
    await fs.rm(dir, { recursive: true, force: true })
  }

  get superblock(): Readonly<Superblock> {
    return this.#superblock
  }

  get size(): number {
    return this.#superblock.size
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      native.storeWrite(this.#handle, offset, data, (err) => (err ? reject(storeError(err, 'write', this.dir)) : resolve()))
    })
  }

  /** The range reads back as zeros; the host gets the space of its whole blocks back. */
  discard(offset: number, length: number): Promise<void> {
    return new Promise((resolve, reject) => {
      native.storeDiscard(this.#handle, offset, length, (err) => (err ? reject(storeError(err, 'discard', this.dir)) : resolve()))
    })
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      native.storeRead(this.#handle, offset, into, (err) => (err ? reject(storeError(err, 'read', this.dir)) : resolve()))
    })
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => {
      native.storeFlush(this.#handle, (err) => {
        if (!err) return resolve()
        this.#flushFailed = true
        reject(storeError(err, 'flush', this.dir))
      })
    })
  }

  /**
   * A flush failed: writes since the last good one may be lost (Linux reports a write-back
   * error once), and every later flush of this store fails. Only a reopen, which a resync
   * does, clears it.
   */
  get flushFailed(): boolean {
    return this.#flushFailed
  }

  /**
   * A hash (HASH_BYTES, XXH3-64 of its data) of each block in [offset, offset+length): what
   * resync compares between replicas to find the blocks that differ. A block whose crc is
   * 0 (never written, or zeros) is 0, unread.
   */
  readHashes(offset: number, length: number): Promise<Buffer> {
    if (offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0 || offset < 0 || offset + length > this.size) {
      return Promise.reject(pxdError('INVALID_ARGUMENT', `hash range ${offset}+${length} is not block-aligned inside ${this.size} bytes`))
    }
    const out = Buffer.alloc((length / BLOCK_SIZE) * HASH_BYTES)
    return new Promise((resolve, reject) => {
      native.storeHashes(this.#handle, offset, out, (err) => (err ? reject(storeError(err, 'hash', this.dir)) : resolve(out)))
    })
  }

  /**
   * The stored crc32c (4 bytes, little-endian) of each block in [offset, offset+length):
   * what scrub counts written blocks by (never what replicas compare: readHashes). An
   * unwritten block reads as 0.
   */
  async readChecksums(offset: number, length: number): Promise<Buffer> {
    if (offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0 || offset + length > this.size) {
      throw pxdError('INVALID_ARGUMENT', `checksum range ${offset}+${length} is not block-aligned inside ${this.size} bytes`)
    }
    const out = Buffer.alloc((length / BLOCK_SIZE) * CHECKSUM_BYTES)
    const handle = await fs.open(files(this.dir).crc, 'r')
    try {
      await handle.read(out, 0, out.length, (offset / BLOCK_SIZE) * CHECKSUM_BYTES)
    } finally {
      await handle.close()
    }
    return out
  }

  /** Record a newer attach epoch durably before any frame of it is accepted. */
  async setEpoch(epoch: number): Promise<void> {
    if (epoch < this.#superblock.epoch) {
      throw pxdError('CONFLICT', `replica ${this.dir} is at epoch ${this.#superblock.epoch}; refusing older epoch ${epoch}`)
    }
    if (epoch === this.#superblock.epoch) return
    // On disk first: an epoch this replica acts on is one it still knows after a power cut.
    const next = { ...this.#superblock, epoch }
    await writeSuperblock(this.dir, next)
    this.#superblock = next
  }

  /** Flush and close; waits for in-flight I/O. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      try {
        await this.flush()
      } catch (err) {
        if (!(err instanceof Error && (err as { code?: string }).code === 'STORE_CLOSED')) throw err
      } finally {
        await new Promise<void>((resolve, reject) => {
          native.storeClose(this.#handle, (err) => (err ? reject(storeError(err, 'close', this.dir)) : resolve()))
        })
      }
    })()
    return this.#closing
  }
}

async function readSuperblock(dir: string): Promise<Superblock> {
  let superblock: Superblock
  try {
    superblock = JSON.parse(await fs.readFile(files(dir).superblock, 'utf8')) as Superblock
  } catch (err) {
    throw pxdError('IO_ERROR', `cannot read the superblock of replica ${dir}`, err)
  }
  if (superblock.version !== SUPERBLOCK_VERSION) throw pxdError('IO_ERROR', `replica ${dir} has unknown superblock version ${superblock.version}`)
  return superblock
}

/** The files extended to `size` (again, after a crash: each step may be done twice) and the grow recorded done. */
async function finishGrow(dir: string, superblock: Superblock, size: number): Promise<Superblock> {
  const f = files(dir)
  for (const [file, bytes] of [[f.data, size], [f.crc, (size / BLOCK_SIZE) * CHECKSUM_BYTES]] as const) {
    const h = await fs.open(file, 'r+')
    try {
      if ((await h.stat()).size < bytes) await h.truncate(bytes)
      await h.datasync()
    } finally {
      await h.close()
    }
  }
  await fs.rm(f.intent, { force: true })
  await syncDir(dir)
  const { growingTo: _done, ...rest } = superblock
  const grown: Superblock = { ...rest, size }
  await writeSuperblock(dir, grown)
  return grown
}

/** The superblock in place, durably (its directory synced after the rename). */
function writeSuperblock(dir: string, superblock: Superblock): Promise<void> {
  return writeFileDurably(files(dir).superblock, JSON.stringify(superblock))
}

function openNative(f: ReturnType<typeof files>, size: number, create: boolean): Promise<StoreHandle> {
  return new Promise((resolve, reject) => {
    native.storeOpen(f.data, f.crc, f.intent, size, BLOCK_SIZE, create, (err, handle) => {
      if (err || !handle) return reject(storeError(err ?? pxdError('INTERNAL', 'the addon gave no store handle'), create ? 'create' : 'open', path.dirname(f.data)))
      resolve(handle)
    })
  })
}

const CODE_MAP: Record<string, ErrorCode> = {
  ECHECKSUM: 'CHECKSUM_MISMATCH',
  ECLOSED: 'STORE_CLOSED',
  ERANGE: 'INVALID_ARGUMENT',
  EINVAL: 'INVALID_ARGUMENT',
  ENOSPC: 'NO_SPACE',
  EEXIST: 'ALREADY_EXISTS',
  ENOENT: 'NOT_FOUND',
}

/** The addon's error as ours; a checksum failure keeps the block it names. */
function storeError(err: NativeError | Error, op: string, dir: string): PxdError {
  const nativeCode = (err as NativeError).code
  const code = (nativeCode && CODE_MAP[nativeCode]) ?? 'IO_ERROR'
  const block = (err as NativeError).block
  return new PxdError(code, `replica ${dir}: ${op} failed: ${err.message}`, block === undefined ? { cause: err } : { cause: err, block })
}
