/**
 * Serves this node's replicas to remote coordinators: the handler behind the peer server.
 * The transport has already authenticated the peer and validated the frame's shape; here
 * each request is checked against what this node holds and applied to the replica. A
 * create, clone or drop is served only for the peer the kvdb grants it to (grants.ts);
 * refusals are NOT_COORDINATOR, logged once per peer and interval with a count.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { RefusalLog, type RequestFrame, type RequestHandler } from '../replication'
import { grantRefusal, type GrantedOp, type ReplicaGrant } from './grants'
import { encodeEpoch } from './protocol'
import type { ReplicaHost } from './replica-host'

/** What the kvdb says of a volume, as far as a replica needs to know. */
export interface VolumeLookup {
  (volumeId: string): Promise<{ size: number; replicas: string[] } | undefined>
}

export interface ReplicaServiceOptions {
  nodeId: string
  host: ReplicaHost
  lookup: VolumeLookup
  /** The grant for a create or drop of this node's replica of a volume (ReplicaDirectory.grantHere). */
  grant: (volumeId: string) => Promise<ReplicaGrant | undefined>
  log: Logger
  refusalLogIntervalMs?: number
}

export class ReplicaService implements RequestHandler {
  readonly #o: ReplicaServiceOptions
  readonly #refusals: RefusalLog

  constructor(o: ReplicaServiceOptions) {
    this.#o = o
    this.#refusals = new RefusalLog(o.log, o.refusalLogIntervalMs, { message: 'replica request refused', noun: 'replica requests' })
  }

  async handle(peer: string, req: RequestFrame): Promise<Uint8Array | void> {
    switch (req.t) {
      case 'write':
        return this.#o.host.write(req.vol, req.epoch, req.offset, req.data)
      case 'discard':
        return this.#o.host.discard(req.vol, req.epoch, req.offset, req.length)
      case 'read': {
        const into = Buffer.allocUnsafe(req.length)
        await this.#o.host.storeFor(req.vol, req.epoch).read(req.offset, into)
        return into
      }
      case 'digest':
        return this.#o.host.storeFor(req.vol, req.epoch).readChecksums(req.offset, req.length)
      case 'hashes':
        return this.#o.host.storeFor(req.vol, req.epoch).readHashes(req.offset, req.length)
      case 'flush':
        return this.#o.host.storeFor(req.vol, req.epoch).flush()
      case 'close':
        // The coordinator lets go; the replica stays open for the next one.
        return this.#o.host.release(req.vol, req.epoch)
      case 'snapshot':
        await this.#requirePlacedHere(req.vol)
        return this.#o.host.layers.snapshot(req.vol, req.epoch, req.snap)
      case 'restore':
        await this.#requirePlacedHere(req.vol)
        return this.#o.host.layers.restore(req.vol, req.epoch, req.snap)
      case 'open': {
        const volume = await this.#requirePlacedHere(req.vol)
        // A replica grows when opened at a larger size: only ever to the size the metadata store has.
        if (volume.size !== req.size) throw pxdError('CONFLICT', `volume ${req.vol} is ${volume.size} bytes in the metadata store, not ${req.size}`)
        this.#o.log.info({ volumeId: req.vol, epoch: req.epoch, peer }, 'replica opened by a coordinator')
        return encodeEpoch(await this.#o.host.open(req.vol, req.size, req.epoch))
      }
      case 'clone': {
        await this.#requireGrant(peer, 'create', req.vol)
        const volume = await this.#requirePlacedHere(req.vol)
        if (volume.size !== req.size) throw pxdError('CONFLICT', `volume ${req.vol} is ${volume.size} bytes in the metadata store, not ${req.size}`)
        return this.#o.host.layers.clone(req.vol, req.snap, req.size)
      }
      case 'create': {
        await this.#requireGrant(peer, 'create', req.vol)
        const volume = await this.#requirePlacedHere(req.vol)
        if (volume.size !== req.size) throw pxdError('CONFLICT', `volume ${req.vol} is ${volume.size} bytes in the metadata store, not ${req.size}`)
        return this.#o.host.create(req.vol, req.size)
      }
      case 'drop': {
        await this.#requireGrant(peer, 'drop', req.vol)
        const volume = await this.#o.lookup(req.vol)
        if (volume?.replicas.includes(this.#o.nodeId)) {
          throw pxdError('CONFLICT', `volume ${req.vol} still lists this node as a replica; refusing to drop it`)
        }
        this.#o.log.info({ volumeId: req.vol, peer }, 'dropping a replica at a peer\'s request')
        return this.#o.host.drop(req.vol)
      }
      default:
        throw pxdError('INVALID_ARGUMENT', `${req.t} is not a replica request`)
    }
  }

  async #requireGrant(peer: string, op: GrantedOp, volumeId: string): Promise<void> {
    const why = grantRefusal(await this.#o.grant(volumeId), peer, op, Date.now())
    if (why === undefined) return
    this.#refusals.refused('not-coordinator', peer, { volumeId, op, why })
    throw pxdError('NOT_COORDINATOR', `node ${this.#o.nodeId} refuses to ${op} its replica of ${volumeId} for node ${peer}: ${why}`)
  }

  async #requirePlacedHere(volumeId: string) {
    const volume = await this.#o.lookup(volumeId)
    if (!volume || !volume.replicas.includes(this.#o.nodeId)) {
      throw pxdError('UNKNOWN_VOLUME', `volume ${volumeId} has no replica on node ${this.#o.nodeId}`)
    }
    return volume
  }
}
