/**
 * A copy of a volume on another node, reached over that node's peer link. Each request
 * carries the volume id and this coordinator's epoch; the remote ReplicaHost refuses
 * stale epochs, which the engine turns into fencing.
 */
import { PxdError, type ErrorCode, ErrorCodes } from '../errors'
import type { Replica } from './replica'
import { decodeEpoch } from './replica-service'

/** The part of a peer link the engine uses: one request, one acknowledgement. */
export interface PeerChannel {
  request(req: { t: string; [field: string]: unknown }, opts?: { timeoutMs?: number }): Promise<Uint8Array | undefined>
}

export class RemoteReplica implements Replica {
  readonly nodeId: string
  readonly #link: PeerChannel
  readonly #vol: string
  readonly #size: number
  readonly #epoch: number

  constructor(nodeId: string, link: PeerChannel, volumeId: string, size: number, epoch: number) {
    this.nodeId = nodeId
    this.#link = link
    this.#vol = volumeId
    this.#size = size
    this.#epoch = epoch
  }

  async open(): Promise<number> {
    return decodeEpoch(await this.#call({ t: 'open', vol: this.#vol, epoch: this.#epoch, size: this.#size }))
  }

  async write(offset: number, data: Uint8Array, seq: number): Promise<void> {
    await this.#call({ t: 'write', vol: this.#vol, epoch: this.#epoch, seq, offset, data })
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    const data = await this.#call({ t: 'read', vol: this.#vol, epoch: this.#epoch, offset, length: into.length })
    if (!data || data.length !== into.length) {
      throw new PxdError('IO_ERROR', `node ${this.nodeId} answered a read of ${into.length} bytes with ${data?.length ?? 0}`)
    }
    into.set(data)
  }

  async digest(offset: number, length: number): Promise<Uint8Array> {
    return (await this.#call({ t: 'digest', vol: this.#vol, epoch: this.#epoch, offset, length })) ?? new Uint8Array(0)
  }

  async flush(): Promise<void> {
    await this.#call({ t: 'flush', vol: this.#vol, epoch: this.#epoch })
  }

  async close(): Promise<void> {
    await this.#call({ t: 'close', vol: this.#vol, epoch: this.#epoch })
  }

  /** Remote failures keep their code when it is one of ours (STALE_EPOCH must stay STALE_EPOCH). */
  async #call(req: { t: string; [field: string]: unknown }): Promise<Uint8Array | undefined> {
    try {
      return await this.#link.request(req)
    } catch (err) {
      const code = (err as { code?: string }).code
      const known: ErrorCode = code && code in ErrorCodes ? (code as ErrorCode) : 'PEER_UNAVAILABLE'
      throw new PxdError(known, `replica on node ${this.nodeId}: ${req.t} failed: ${(err as Error).message}`, { cause: err })
    }
  }
}
