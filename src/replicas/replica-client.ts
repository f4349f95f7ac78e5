/**
 * A copy of a volume on another node, reached over that node's peer link. Each request
 * carries the volume id and this coordinator's epoch; the remote ReplicaHost refuses
 * stale epochs, which the engine turns into fencing.
 */
import { pxdError } from '../errors'
import type { RequestOptions } from '../replication'
import { decodeEpoch, replicaRequestError, requests, type PeerChannel } from './protocol'
import type { Replica } from './replica'

/**
 * How long a flush (and a close, which flushes) may take before it counts as failed: one
 * fdatasync of a large replica can outlast the link's default request timeout, and a
 * healthy replica must not be demoted for it. Writes keep the link's default.
 */
export const FLUSH_TIMEOUT_MS = 120_000
const FLUSH: RequestOptions = { timeoutMs: FLUSH_TIMEOUT_MS }

export class ReplicaClient implements Replica {
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

  /** Make an empty replica of a volume on the node (it must be listed there in the kvdb). */
  static async create(nodeId: string, link: PeerChannel, volumeId: string, size: number): Promise<void> {
    await call(nodeId, link, 'create', requests.create(volumeId, size))
  }

  /** Delete the node's replica of a volume that no longer lists it. */
  static async drop(nodeId: string, link: PeerChannel, volumeId: string): Promise<void> {
    await call(nodeId, link, 'drop', requests.drop(volumeId))
  }

  async open(): Promise<number> {
    return decodeEpoch(await this.#call('open', requests.open(this.#vol, this.#epoch, this.#size)))
  }

  async write(offset: number, data: Uint8Array, seq: number): Promise<void> {
    await this.#call('write', requests.write(this.#vol, this.#epoch, seq, offset, data))
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    const data = await this.#call('read', requests.read(this.#vol, this.#epoch, offset, into.length))
    if (!data || data.length !== into.length) {
      throw pxdError('IO_ERROR', `node ${this.nodeId} answered a read of ${into.length} bytes with ${data?.length ?? 0}`)
    }
    into.set(data)
  }

  async digest(offset: number, length: number): Promise<Uint8Array> {
    return (await this.#call('digest', requests.digest(this.#vol, this.#epoch, offset, length))) ?? new Uint8Array(0)
  }

  async flush(): Promise<void> {
    await this.#call('flush', requests.flush(this.#vol, this.#epoch), FLUSH)
  }

  async close(): Promise<void> {
    await this.#call('close', requests.close(this.#vol, this.#epoch), FLUSH)
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
