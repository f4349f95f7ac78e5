/** This node's copy of a volume, for a coordinator on this node: the ReplicaHost's store, at the coordinator's epoch. */
import { isPxdError } from '../errors'
import type { Replica, ReplicaAt } from './replica'
import type { ReplicaHost } from './replica-host'

export class LocalReplica implements Replica {
  readonly nodeId: string
  readonly #host: ReplicaHost
  /** Its size changes with grow. */
  readonly #at: { -readonly [K in keyof ReplicaAt]: ReplicaAt[K] }

  constructor(nodeId: string, host: ReplicaHost, at: ReplicaAt) {
    this.nodeId = nodeId
    this.#host = host
    this.#at = { ...at }
  }

  async grow(size: number): Promise<void> {
    await this.#host.open(this.#at.volumeId, size, this.#at.epoch)
    this.#at.size = size
  }

  open(): Promise<number> {
    return this.#host.open(this.#at.volumeId, this.#at.size, this.#at.epoch)
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#host.write(this.#at.volumeId, this.#at.epoch, offset, data)
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#host.discard(this.#at.volumeId, this.#at.epoch, offset, length)
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    try {
      return this.#host.storeFor(this.#at.volumeId, this.#at.epoch).read(offset, into)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  flush(): Promise<void> {
    try {
      return this.#host.storeFor(this.#at.volumeId, this.#at.epoch).flush()
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async digest(offset: number, length: number): Promise<Uint8Array> {
    return this.#host.storeFor(this.#at.volumeId, this.#at.epoch).readChecksums(offset, length)
  }

  async hashes(offset: number, length: number): Promise<Uint8Array> {
    return this.#host.storeFor(this.#at.volumeId, this.#at.epoch).readHashes(offset, length)
  }

  async readHashed(offset: number, into: Uint8Array): Promise<Uint8Array> {
    return this.#host.storeFor(this.#at.volumeId, this.#at.epoch).readWithHashes(offset, into)
  }

  snapshot(snapId: string): Promise<void> {
    return this.#host.layers.snapshot(this.#at.volumeId, this.#at.epoch, snapId)
  }

  restore(snapId: string): Promise<void> {
    return this.#host.layers.restore(this.#at.volumeId, this.#at.epoch, snapId)
  }

  async close(): Promise<void> {
    await this.#host.release(this.#at.volumeId, this.#at.epoch).catch((err: unknown) => {
      // A newer coordinator owns the replica now; nothing of ours is left to flush.
      if (!isPxdError(err, 'STALE_EPOCH') && !isPxdError(err, 'UNKNOWN_VOLUME')) throw err
    })
  }
}
