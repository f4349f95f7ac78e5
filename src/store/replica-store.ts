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
import { pxdError } from '../errors'
import { native, type StoreHandle, type StoreRecovery } from '../native/binding'
import { mkdirDurably, renameDurably, syncDir, writeFileDurably } from '../util/durable'
import { basesFrom, beginPending, cloneLayers, collectHidden, finishPending, layerFiles, removeLayer, type LayerIo, type LayerState } from './layers'
import { closeNative, mergeBase, openNative, storeError, type StorePaths } from './native-store'

const SUPERBLOCK_VERSION = 1

export interface Superblock extends LayerState {
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

const files = (dir: string): StorePaths & { superblock: string } => ({
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
  /** A snapshot's layer, opened to be read: writes are refused (READ_ONLY), its epoch is kept in memory only. */
  readonly readOnly: boolean
  readonly #paths: StorePaths
  #handle: StoreHandle
  #superblock: Superblock
  #closing: Promise<void> | undefined
  #flushFailed = false

  private constructor(dir: string, handle: StoreHandle, superblock: Superblock, paths: StorePaths, readOnly = false) {
    this.dir = dir
    this.#handle = handle
    this.#superblock = superblock
    this.#paths = paths
    this.readOnly = readOnly
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
    const handle = await openNative(f, size, { create: true, readOnly: false, bases: [] })
    const superblock: Superblock = {
      version: SUPERBLOCK_VERSION, volumeId, size, blockSize: BLOCK_SIZE, epoch: 0, createdAt: new Date().toISOString(),
    }
    await writeSuperblock(dir, superblock)
    return new ReplicaStore(dir, handle, superblock, f)
  }

  static async open(dir: string): Promise<ReplicaStore> {
    const f = files(dir)
    let superblock = await readSuperblock(dir)
    if (superblock.pending) superblock = await finishPending(dir, superblock, layerIo(dir))
    if (superblock.growingTo !== undefined) superblock = await finishGrow(dir, superblock, superblock.growingTo)
    const handle = await openNative(f, superblock.size, { create: false, readOnly: false, bases: basesFrom(dir, superblock, superblock.parent) })
    return new ReplicaStore(dir, handle, superblock, f)
  }

  /** Snapshot `layer` of the replica in `dir`, to be read (a mounted snapshot, a copy off it). */
  static async openView(dir: string, layer: string): Promise<ReplicaStore> {
    const superblock = await readSuperblock(dir)
    const record = superblock.layers?.[layer]
    if (!record || record.hidden || superblock.pending?.layer === layer) throw pxdError('UNKNOWN_VOLUME', `replica ${dir} has no snapshot ${layer}`)
    const lf = layerFiles(dir, layer)
    const paths = { data: lf.data, crc: lf.crc, intent: '' }
    const handle = await openNative(paths, record.size, { create: false, readOnly: true, bases: basesFrom(dir, superblock, record.parent) })
    const view: Superblock = { version: SUPERBLOCK_VERSION, volumeId: layer, size: record.size, blockSize: BLOCK_SIZE, epoch: 0, createdAt: record.createdAt }
    return new ReplicaStore(lf.dir, handle, view, paths, true)
  }

  /**
   * Freeze a closed replica's live files as snapshot layer `layer` and give it new, empty
   * ones on top (layers.ts); no data is copied. Crash-safe: the next open finishes it.
   */
  static async snapshot(dir: string, layer: string): Promise<void> {
    await beginPending(dir, await ReplicaStore.settle(dir), 'snapshot', layer, layerIo(dir))
  }

  /** A closed replica's contents become snapshot `layer`'s: new, empty live files on it. Crash-safe like a snapshot. */
  static async restore(dir: string, layer: string): Promise<void> {
    await beginPending(dir, await ReplicaStore.settle(dir), 'restore', layer, layerIo(dir))
  }

  /**
   * Delete snapshot layer `layer` of the replica in `dir`; `open` is the replica's store
   * while one is open (its live files take the layer's blocks through it, writes going on).
   */
  static async removeSnapshot(dir: string, layer: string, open: ReplicaStore | undefined): Promise<void> {
    // A closed replica is settled first, so its live files are whole before they are copied anywhere.
    const superblock = open ? await readSuperblock(dir) : await ReplicaStore.settle(dir)
    if (superblock.pending) throw pxdError('CONFLICT', `replica ${dir} has a snapshot or restore under way`)
    const next = await removeLayer(dir, superblock, layer, { ...layerIo(dir), storeOpen: open !== undefined }, ReplicaStore.#intoLive(dir, open))
    // The open store keeps its superblock in memory: the layer fields follow the file.
    if (open) open.#superblock = { ...open.#superblock, parent: next.parent, layers: next.layers } as Superblock
    if (open && next.parent === undefined) delete open.#superblock.parent
  }

  /** Delete the hidden layers of a closed replica that can go now (see layers.ts); whether any went. */
  static async collectHidden(dir: string): Promise<boolean> {
    const superblock = await ReplicaStore.settle(dir)
    const next = await collectHidden(dir, superblock, layerIo(dir), ReplicaStore.#intoLive(dir, undefined))
    return next !== superblock
  }

  /** How a layer's blocks are merged up into the live files: through the open store, or one opened for it. */
  static #intoLive(dir: string, open: ReplicaStore | undefined): () => Promise<void> {
    return async () => {
      if (open) return open.#mergeBase()
      const store = await ReplicaStore.open(dir)
      try {
        await store.#mergeBase()
      } finally {
        await store.close()
      }
    }
  }

  /**
   * Open and close a closed replica: its crash recovery runs, anything pending is finished and
   * every intent mark cleared, so its files may be changed. Returns its superblock then.
   */
  static async settle(dir: string): Promise<Superblock> {
    const store = await ReplicaStore.open(dir)
    await store.close()
    return store.#superblock
  }

  /** A replica's superblock as it is on disk; undefined when there is none to read. */
  static peekSuperblock(dir: string): Promise<Superblock | undefined> {
    return readSuperblock(dir).catch(() => undefined)
  }

  #mergeBase(): Promise<void> {
    return mergeBase(this.#handle, this.dir)
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

  /**
   * A new replica `volumeId` in `dir` that reads as snapshot `layer` of the replica in
   * `sourceDir`: its layers are hard links to the source's (no data copied), under new, empty
   * live files. Made aside and renamed into place, so it exists whole or not at all.
   */
  static async clone(sourceDir: string, layer: string, dir: string, volumeId: string): Promise<ReplicaStore> {
    const aside = `${dir}.clone`
    await fs.rm(aside, { recursive: true, force: true })
    await mkdirDurably(aside)
    const state = await cloneLayers(sourceDir, await readSuperblock(sourceDir), layer, aside)
    const superblock: Superblock = { version: SUPERBLOCK_VERSION, volumeId, blockSize: BLOCK_SIZE, epoch: 0, createdAt: new Date().toISOString(), ...state }
    const handle = await openNative(files(aside), superblock.size, { create: true, readOnly: false, bases: basesFrom(aside, superblock, superblock.parent) })
    await closeNative(handle, aside)
    await writeSuperblock(aside, superblock)
    await renameDurably(aside, dir)
    return ReplicaStore.open(dir)
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
    return this.#hashes('hash', offset, length)
  }

  /** Reads `into.length` bytes at `offset` as read does and resolves to their block hashes (readHashes): one pass over the disk. */
  readWithHashes(offset: number, into: Uint8Array): Promise<Buffer> {
    return this.#hashes('read', offset, into.length, into)
  }

  #hashes(op: 'hash' | 'read', offset: number, length: number, into?: Uint8Array): Promise<Buffer> {
    if (offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0 || offset < 0 || offset + length > this.size) {
      return Promise.reject(pxdError('INVALID_ARGUMENT', `${op} range ${offset}+${length} is not block-aligned inside ${this.size} bytes`))
    }
    const out = Buffer.alloc((length / BLOCK_SIZE) * HASH_BYTES)
    return new Promise((resolve, reject) => {
      native.storeHashes(this.#handle, offset, out, (err) => (err ? reject(storeError(err, op, this.dir)) : resolve(out)), into)
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
    const handle = await fs.open(this.#paths.crc, 'r')
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
    if (this.readOnly) {
      this.#superblock = { ...this.#superblock, epoch }
      return
    }
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
        await closeNative(this.#handle, this.dir)
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

function layerIo(dir: string): LayerIo<Superblock> {
  return { live: files(dir), writeState: (superblock) => writeSuperblock(dir, superblock) }
}
