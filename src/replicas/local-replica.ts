/** This node's copy of a volume, for a coordinator on this node: the ReplicaHost's store, at the coordinator's epoch. */
import { isPxdError } from '../errors'
import type { Replica } from './replica'
import type { ReplicaHost } from './replica-host'

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
    return this.#host.write(this.#volumeId, this.#epoch, offset, data)
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
    await this.flush().catch((err: unknown) => {
      // A newer coordinator owns the replica now; nothing of ours is left to flush.
      if (!isPxdError(err, 'STALE_EPOCH') && !isPxdError(err, 'UNKNOWN_VOLUME')) throw err
    })
  }
}
