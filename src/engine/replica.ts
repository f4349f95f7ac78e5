import type { ReplicaHost } from './replica-host'

/**
 * What the engine needs of one copy of a volume, wherever it lives. The local copy goes
 * through this node's ReplicaHost; remote copies go over a peer link. Both carry the
 * coordinator's epoch, so a fenced coordinator's requests are refused the same way.
 */
export interface Replica {
  /** The node that holds this copy. */
  readonly nodeId: string
  /** Open the copy at the coordinator's epoch (fences older coordinators); resolves to the epoch it was at before. */
  open(): Promise<number>
  write(offset: number, data: Uint8Array, seq: number): Promise<void>
  read(offset: number, into: Uint8Array): Promise<void>
  flush(): Promise<void>
  /** Stored crc32c of each 4 KiB block in the range (resync compares them). */
  digest(offset: number, length: number): Promise<Uint8Array>
  /** Flush and let go; the copy itself stays on its node. */
  close(): Promise<void>
}

export class LocalReplica implements Replica {
  readonly nodeId: string
  readonly #host: ReplicaHost
  readonly #volumeId: string
  readonly #size: number
  readonly #epoch: number

  constructor(nodeId: string, host: ReplicaHost, volumeId: string, size: number, epoch: number) {
    this.nodeId = nodeId
    this.#host = host
    this.#volumeId = volumeId
    this.#size = size
    this.#epoch = epoch
  }

  open(): Promise<number> {
    return this.#host.open(this.#volumeId, this.#size, this.#epoch)
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    try {
      return this.#host.storeFor(this.#volumeId, this.#epoch).write(offset, data)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    try {
      return this.#host.storeFor(this.#volumeId, this.#epoch).read(offset, into)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  flush(): Promise<void> {
    try {
      return this.#host.storeFor(this.#volumeId, this.#epoch).flush()
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async digest(offset: number, length: number): Promise<Uint8Array> {
    return this.#host.storeFor(this.#volumeId, this.#epoch).readChecksums(offset, length)
  }

  async close(): Promise<void> {
    await this.flush().catch((err: { code?: string }) => {
      // A newer coordinator owns the replica now; nothing of ours is left to flush.
      if (err.code !== 'STALE_EPOCH' && err.code !== 'UNKNOWN_VOLUME') throw err
    })
  }
}
