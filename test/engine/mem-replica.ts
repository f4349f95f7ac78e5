import { createHash } from 'node:crypto'
import { BLOCK_SIZE, CHECKSUM_BYTES, HASH_BYTES } from '../../src/constants'
import { PxdError, type ErrorDetails } from '../../src/errors'
import { native } from '../../src/native/binding'
import type { Replica } from '../../src/replicas/replica'

/** How a checksum failure names its block: as a peer's error does, as the local store's does, or only in the text. */
export type BlockNaming = 'field' | 'cause' | 'text'

/**
 * A replica in memory that keeps a crc32c per block the way the store does (0 for a block
 * of zeros), verifies reads against it and serves digests of it and hashes of its blocks. `corrupt` rots a block
 * behind the crc's back; `beforeWrite` and `beforeFlush` can delay or fail a write or flush.
 */
export class MemReplica implements Replica {
  bytes: Buffer
  #crcs: Uint32Array
  /** The sizes grow was asked for, in order. */
  readonly grows: number[] = []
  /** [offset, length] of every write applied, in order. */
  readonly writes: Array<[number, number]> = []
  beforeWrite: ((offset: number, data: Uint8Array) => Promise<void> | void) | undefined
  beforeFlush: (() => Promise<void> | void) | undefined
  flushes = 0
  naming: BlockNaming = 'field'
  /** What open() resolves to: the epoch the copy was at before. */
  epochBefore = 0
  opened = 0
  closed = 0

  constructor(readonly nodeId: string, size: number) {
    this.bytes = Buffer.alloc(size)
    this.#crcs = new Uint32Array(size / BLOCK_SIZE)
  }

  /** Set bytes directly (not counted as a write), keeping the crcs right. */
  fill(offset: number, length: number, byte: number): this {
    this.bytes.fill(byte, offset, offset + length)
    this.#updateCrcs(offset, length)
    return this
  }

  /** Take these bytes as the replica's (not counted as a write), keeping the crcs right. */
  load(from: Uint8Array): this {
    this.bytes.set(from)
    this.#updateCrcs(0, this.bytes.length)
    return this
  }

  /** Change a block's bytes but not its crc: bit rot (or, on a block of zeros, a torn write). */
  corrupt(block: number): void {
    this.bytes[block * BLOCK_SIZE] = this.bytes[block * BLOCK_SIZE]! ^ 0xff
  }

  open(): Promise<number> {
    this.opened++
    return Promise.resolve(this.epochBefore)
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const copy = Buffer.from(data)
    await this.beforeWrite?.(offset, data)
    copy.copy(this.bytes, offset)
    this.#updateCrcs(offset, copy.length)
    this.writes.push([offset, copy.length])
  }

  /** [offset, length] of every discard applied, in order. */
  readonly discards: Array<[number, number]> = []
  beforeDiscard: ((offset: number, length: number) => Promise<void> | void) | undefined

  async discard(offset: number, length: number): Promise<void> {
    await this.beforeDiscard?.(offset, length)
    this.bytes.fill(0, offset, offset + length)
    this.#updateCrcs(offset, length)
    this.discards.push([offset, length])
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    for (let b = Math.floor(offset / BLOCK_SIZE); b * BLOCK_SIZE < offset + into.length; b++) {
      if (crcOf(this.#block(b)) !== this.#crcs[b]) throw this.#mismatch(b)
    }
    into.set(this.bytes.subarray(offset, offset + into.length))
  }

  async flush(): Promise<void> {
    this.flushes++
    await this.beforeFlush?.()
  }

  async digest(offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.alloc((length / BLOCK_SIZE) * CHECKSUM_BYTES)
    for (let i = 0; i < length / BLOCK_SIZE; i++) out.writeUInt32LE(this.#crcs[offset / BLOCK_SIZE + i]!, i * CHECKSUM_BYTES)
    return out
  }

  /** As the store's: a hash of each block's data (sha256's first 8 bytes here), 0 where the crc is 0. */
  async hashes(offset: number, length: number): Promise<Uint8Array> {
    this.hashed.push([offset, length])
    return this.#hashesOf(offset, length)
  }

  #hashesOf(offset: number, length: number): Uint8Array {
    const out = Buffer.alloc((length / BLOCK_SIZE) * HASH_BYTES)
    for (let i = 0; i < length / BLOCK_SIZE; i++) {
      const b = offset / BLOCK_SIZE + i
      if (this.#crcs[b] !== 0) createHash('sha256').update(this.#block(b)).digest().copy(out, i * HASH_BYTES, 0, HASH_BYTES)
    }
    return out
  }

  /** Set by onePass(): as a local store's, the range's data and hashes in one read. */
  readHashed?: (offset: number, into: Uint8Array) => Promise<Uint8Array>
  /** Calls of hashes() and of readHashed(), in order: [offset, length]. */
  readonly hashed: Array<[number, number]> = []
  readonly readsHashed: Array<[number, number]> = []

  /** Serve readHashed too, as a replica on the coordinator's node does. */
  onePass(): this {
    this.readHashed = async (offset, into) => {
      this.readsHashed.push([offset, into.length])
      await this.read(offset, into)
      return this.#hashesOf(offset, into.length)
    }
    return this
  }

  async grow(size: number): Promise<void> {
    this.grows.push(size)
    const bytes = Buffer.alloc(size)
    this.bytes.copy(bytes)
    const crcs = new Uint32Array(size / BLOCK_SIZE)
    crcs.set(this.#crcs)
    this.bytes = bytes
    this.#crcs = crcs
  }

  /** Snapshots taken, by id: the bytes at that point, and how many flushes came before it. */
  readonly snapshots = new Map<string, { bytes: Buffer; flushes: number }>()
  beforeSnapshot: ((snapId: string) => Promise<void> | void) | undefined

  async snapshot(snapId: string): Promise<void> {
    await this.beforeSnapshot?.(snapId)
    this.snapshots.set(snapId, { bytes: Buffer.from(this.bytes), flushes: this.flushes })
  }

  async restore(snapId: string): Promise<void> {
    const snap = this.snapshots.get(snapId)
    if (!snap) throw new PxdError('NOT_FOUND', `no snapshot ${snapId}`)
    this.bytes.fill(0)
    snap.bytes.copy(this.bytes)
    this.#updateCrcs(0, this.bytes.length)
  }

  close(): Promise<void> {
    this.closed++
    return Promise.resolve()
  }

  #block(b: number): Buffer {
    return this.bytes.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)
  }

  #updateCrcs(offset: number, length: number): void {
    for (let b = Math.floor(offset / BLOCK_SIZE); b * BLOCK_SIZE < offset + length; b++) this.#crcs[b] = crcOf(this.#block(b))
  }

  #mismatch(block: number): PxdError {
    const message = `checksum mismatch in block ${block} of ${this.nodeId}`
    const details: ErrorDetails = this.naming === 'field' ? { block, peer: this.nodeId }
      : this.naming === 'cause' ? { cause: Object.assign(new Error(message), { code: 'ECHECKSUM', block }) }
        : {}
    return new PxdError('CHECKSUM_MISMATCH', message, details)
  }
}

/**
 * A MemReplica whose writes stay in its node's page cache until a flush completes:
 * `afterPowerLoss` is the replica as its disk has it once the node lost power.
 */
export class CachedReplica extends MemReplica {
  readonly #disk: Buffer

  constructor(nodeId: string, size: number) {
    super(nodeId, size)
    this.#disk = Buffer.alloc(size)
  }

  override async flush(): Promise<void> {
    const now = Buffer.from(this.bytes)
    await super.flush()
    now.copy(this.#disk)
  }

  afterPowerLoss(): MemReplica {
    return new MemReplica(this.nodeId, this.bytes.length).load(this.#disk)
  }
}

function crcOf(block: Uint8Array): number {
  return block.every((b) => b === 0) ? 0 : native.crc32c(block)
}

/** A promise with its resolve and reject in hand. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

/** Let pending callbacks run. */
export function tick(ms = 5): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
