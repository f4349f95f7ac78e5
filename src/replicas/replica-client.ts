/**
 * A copy of a volume on another node, reached over that node's peer link. Each request
 * carries the volume id and this coordinator's epoch; the remote ReplicaHost refuses
 * stale epochs, which the engine turns into fencing.
 */
import { pxdError } from '../errors'
import type { RequestOptions } from '../replication'
import { decodeEpoch, replicaRequestError, requests, type PeerChannel } from './protocol'
import type { Replica, ReplicaAt } from './replica'

/**
 * How long a flush (and a close, which flushes) may take before it counts as failed: as
 * long as a write, plus the time to write out what was sent since the last flush at a slow
 * disk's pace, so that one large fdatasync never demotes a healthy replica while a stalled
 * disk after a few small writes is noticed as soon as for a write. At most FLUSH_TIMEOUT_MS.
 */
export const FLUSH_BASE_TIMEOUT_MS = 8_000
export const FLUSH_SLOW_DISK_BYTES_PER_SECOND = 20 * 1024 * 1024
export const FLUSH_TIMEOUT_MS = 120_000

/** The timeout of a flush after `unflushed` bytes were written. */
export function flushTimeoutMs(unflushed: number): number {
  return Math.min(FLUSH_TIMEOUT_MS, FLUSH_BASE_TIMEOUT_MS + Math.ceil((unflushed / FLUSH_SLOW_DISK_BYTES_PER_SECOND) * 1000))
}

/** A snapshot or restore closes, changes and reopens the replica: a few fsyncs, no data copied. */
const LAYER_TIMEOUT_MS = 60_000

export class ReplicaClient implements Replica {
  readonly nodeId: string
  readonly #link: PeerChannel
  /** Its size changes with grow. */
  readonly #at: { -readonly [K in keyof ReplicaAt]: ReplicaAt[K] }
  /** Bytes sent since the last flush that succeeded (a flush's timeout grows with them). */
  #unflushed = 0

  constructor(nodeId: string, link: PeerChannel, at: ReplicaAt) {
    this.nodeId = nodeId
    this.#link = link
    this.#at = { ...at }
  }

  /** Make an empty replica of a volume on the node (it must be listed there in the kvdb). */
  static async create(nodeId: string, link: PeerChannel, volumeId: string, size: number): Promise<void> {
    await call(nodeId, link, 'create', requests.create(volumeId, size))
  }

  /** Make the node's replica of a new volume as a clone of a snapshot it holds (it must be listed there in the kvdb). */
  static async clone(nodeId: string, link: PeerChannel, volumeId: string, size: number, snapId: string): Promise<void> {
    await call(nodeId, link, 'clone', requests.clone(volumeId, size, snapId), { timeoutMs: LAYER_TIMEOUT_MS })
  }

  /** Delete the node's replica of a volume that no longer lists it. */
  static async drop(nodeId: string, link: PeerChannel, volumeId: string): Promise<void> {
    await call(nodeId, link, 'drop', requests.drop(volumeId))
  }

  async open(): Promise<number> {
    return decodeEpoch(await this.#call('open', requests.open(this.#at.volumeId, this.#at.epoch, this.#at.size)))
  }

  async write(offset: number, data: Uint8Array, seq: number): Promise<void> {
    this.#unflushed += data.length
    await this.#call('write', requests.write(this.#at.volumeId, this.#at.epoch, seq, offset, data))
  }

  async discard(offset: number, length: number, seq: number): Promise<void> {
    await this.#call('discard', requests.discard(this.#at.volumeId, this.#at.epoch, seq, offset, length))
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    const data = await this.#call('read', requests.read(this.#at.volumeId, this.#at.epoch, offset, into.length))
    if (!data || data.length !== into.length) {
      throw pxdError('IO_ERROR', `node ${this.nodeId} answered a read of ${into.length} bytes with ${data?.length ?? 0}`)
    }
    into.set(data)
  }

  async digest(offset: number, length: number): Promise<Uint8Array> {
    return (await this.#call('digest', requests.digest(this.#at.volumeId, this.#at.epoch, offset, length))) ?? new Uint8Array(0)
  }

  async hashes(offset: number, length: number): Promise<Uint8Array> {
    return (await this.#call('hashes', requests.hashes(this.#at.volumeId, this.#at.epoch, offset, length))) ?? new Uint8Array(0)
  }

  async grow(size: number): Promise<void> {
    await this.#call('open', requests.open(this.#at.volumeId, this.#at.epoch, size))
    this.#at.size = size
  }

  async flush(): Promise<void> {
    const covered = this.#unflushed
    await this.#call('flush', requests.flush(this.#at.volumeId, this.#at.epoch), { timeoutMs: flushTimeoutMs(covered) })
    this.#unflushed = Math.max(0, this.#unflushed - covered)
  }

  async snapshot(snapId: string): Promise<void> {
    await this.#call('snapshot', requests.snapshot(this.#at.volumeId, this.#at.epoch, snapId), { timeoutMs: LAYER_TIMEOUT_MS })
  }

  async restore(snapId: string): Promise<void> {
    await this.#call('restore', requests.restore(this.#at.volumeId, this.#at.epoch, snapId), { timeoutMs: LAYER_TIMEOUT_MS })
  }

  async close(): Promise<void> {
    await this.#call('close', requests.close(this.#at.volumeId, this.#at.epoch), { timeoutMs: flushTimeoutMs(this.#unflushed) })
  }

  #call(what: string, req: Parameters<PeerChannel['request']>[0], opts?: RequestOptions): Promise<Uint8Array | undefined> {
    return call(this.nodeId, this.#link, what, req, opts)
  }
}

async function call(nodeId: string, link: PeerChannel, what: string, req: Parameters<PeerChannel['request']>[0], opts?: RequestOptions): Promise<Uint8Array | undefined> {
  try {
    return await link.request(req, opts)
  } catch (err) {
    throw replicaRequestError(nodeId, what, err)
  }
}
