/**
 * Serves this node's replicas to remote coordinators: the handler behind the peer server.
 * The transport has already authenticated the peer and validated the frame's shape; here
 * each request is checked against what this node holds and applied to the replica.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import type { RequestFrame, RequestHandler } from '../replication'
import { encodeEpoch } from './protocol'
import type { ReplicaHost } from './replica-host'

/** What the kvdb says of a volume, as far as a replica needs to know. */
export interface VolumeLookup {
  (volumeId: string): Promise<{ size: number; replicas: string[] } | undefined>
}

export class ReplicaService implements RequestHandler {
  readonly #nodeId: string
  readonly #host: ReplicaHost
  readonly #lookup: VolumeLookup
  readonly #log: Logger

  constructor(nodeId: string, host: ReplicaHost, lookup: VolumeLookup, log: Logger) {
    this.#nodeId = nodeId
    this.#host = host
    this.#lookup = lookup
    this.#log = log
  }

  async handle(peer: string, req: RequestFrame): Promise<Uint8Array | void> {
    switch (req.t) {
      case 'write':
        return this.#host.write(req.vol, req.epoch, req.offset, req.data)
      case 'discard':
        return this.#host.discard(req.vol, req.epoch, req.offset, req.length)
      case 'read': {
        const into = Buffer.allocUnsafe(req.length)
        await this.#host.storeFor(req.vol, req.epoch).read(req.offset, into)
        return into
      }
      case 'digest':
        return this.#host.storeFor(req.vol, req.epoch).readChecksums(req.offset, req.length)
      case 'hashes':
        return this.#host.storeFor(req.vol, req.epoch).readHashes(req.offset, req.length)
      case 'flush':
        return this.#host.storeFor(req.vol, req.epoch).flush()
      case 'close':
        // The coordinator lets go; the replica stays open for the next one.
        return this.#host.release(req.vol, req.epoch)
      case 'snapshot':
        await this.#requirePlacedHere(req.vol)
        return this.#host.layers.snapshot(req.vol, req.epoch, req.snap)
      case 'restore':
        await this.#requirePlacedHere(req.vol)
        return this.#host.layers.restore(req.vol, req.epoch, req.snap)
      case 'open': {
        const volume = await this.#requirePlacedHere(req.vol)
        // A replica grows when opened at a larger size: only ever to the size the metadata store has.
        if (volume.size !== req.size) throw pxdError('CONFLICT', `volume ${req.vol} is ${volume.size} bytes in the metadata store, not ${req.size}`)
        this.#log.info({ volumeId: req.vol, epoch: req.epoch, peer }, 'replica opened by a coordinator')
        return encodeEpoch(await this.#host.open(req.vol, req.size, req.epoch))
      }
      case 'clone': {
        const volume = await this.#requirePlacedHere(req.vol)
        if (volume.size !== req.size) throw pxdError('CONFLICT', `volume ${req.vol} is ${volume.size} bytes in the metadata store, not ${req.size}`)
        return this.#host.layers.clone(req.vol, req.snap, req.size)
      }
      case 'create': {
        const volume = await this.#requirePlacedHere(req.vol)
        if (volume.size !== req.size) throw pxdError('CONFLICT', `volume ${req.vol} is ${volume.size} bytes in the metadata store, not ${req.size}`)
        return this.#host.create(req.vol, req.size)
      }
      case 'drop': {
        const volume = await this.#lookup(req.vol)
        if (volume?.replicas.includes(this.#nodeId)) {
          throw pxdError('CONFLICT', `volume ${req.vol} still lists this node as a replica; refusing to drop it`)
        }
        this.#log.info({ volumeId: req.vol, peer }, 'dropping a replica at a peer\'s request')
        return this.#host.drop(req.vol)
      }
      default:
        throw pxdError('INVALID_ARGUMENT', `${req.t} is not a replica request`)
    }
  }

  async #requirePlacedHere(volumeId: string) {
    const volume = await this.#lookup(volumeId)
    if (!volume || !volume.replicas.includes(this.#nodeId)) {
      throw pxdError('UNKNOWN_VOLUME', `volume ${volumeId} has no replica on node ${this.#nodeId}`)
    }
    return volume
  }
}
