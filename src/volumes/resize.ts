/**
 * Growing a volume (`pxctl volume update --size N VOL`). The record is the truth: its size
 * changes first (once every replica's node was seen to have the room), and each replica
 * grows to it when it is next opened (ReplicaHost.open, ReplicaStore.grow, crash-safe).
 * A volume mounted on this node grows at once, online: its engine opens its replicas again at
 * the new size, then the device file, the loop device and the file system follow
 * (LocalVolumes.grow, Frontend.grew). Shrinking is refused.
 *
 * A volume mounted on another node is refused here, naming the node: only the node that has
 * it mounted can grow its file system.
 */
import type { Logger } from 'pino'
import type { NodeInfo } from '../cluster/membership'
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import { formatSize } from '../util/size'
import { buildSpec, parseVolumeRef } from './options'
import type { VolumeInfo, VolumeRecord } from './types'

export interface VolumeResizeOptions {
  nodeId: string
  kvdb: Kvdb
  membership: { nodes(): Promise<NodeInfo[]> }
  locks: KeyedMutex
  attachedOn: (name: string) => Promise<string | null>
  /** Grow a volume attached on this node to its record's new size. */
  growAttached: (name: string, record: VolumeRecord) => Promise<void>
  info: (record: VolumeRecord) => Promise<VolumeInfo>
  checkRunning: () => void
  log: Logger
}

export class VolumeResize {
  readonly #o: VolumeResizeOptions

  constructor(o: VolumeResizeOptions) {
    this.#o = o
  }

  /** Grow a volume to `sizeText` (the `size` option's syntax), mounted or not. */
  async resize(requestedName: string, sizeText: string): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(requestedName)
    const size = buildSpec({ size: sizeText }).size
    return this.#o.locks.run(name, async () => {
      this.#o.checkRunning()
      const entry = await this.#o.kvdb.get<VolumeRecord>(keys.volume(name))
      if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
      const record = entry.value
      if (record.snapshotOf) throw pxdError('READ_ONLY', `${name} is a snapshot; its size is its volume's when it was taken`)
      const from = record.spec.size
      if (size === from) return this.#o.info(record)
      if (size < from) throw pxdError('INVALID_ARGUMENT', `volume ${name} is ${formatSize(from)}; shrinking it to ${formatSize(size)} is refused`)
      if ((record.retiring ?? []).length > 0) throw pxdError('CONFLICT', `volume ${name} is moving replicas; resize it once that is done`)
      const holder = await this.#o.attachedOn(name)
      if (holder !== null && holder !== this.#o.nodeId) {
        throw pxdError('CONFLICT', `volume ${name} is attached on node ${holder}: resize it there (only that node can grow its file system)`)
      }
      await this.#checkRoom(record, size - from)
      const next: VolumeRecord = { ...record, spec: { ...record.spec, size } }
      const ok = await this.#o.kvdb.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: next }] })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed during the resize; retry`)
      this.#o.log.info({ volume: name, volumeId: record.id, from, to: size }, 'volume resized')
      if (holder === this.#o.nodeId) {
        try {
          await this.#o.growAttached(name, next)
        } catch (err) {
          this.#o.log.error({ err, volume: name, volumeId: record.id }, 'growing the attached volume failed')
          throw pxdError('IO_ERROR', `volume ${name} is now ${formatSize(size)}, but growing it where it is attached failed (${(err as Error).message}); it takes the new size at its next mount`, err)
        }
      }
      return this.#o.info(next)
    })
  }

  /** Every replica's node online, with `more` bytes free; else a clear error and nothing changed. */
  async #checkRoom(record: VolumeRecord, more: number): Promise<void> {
    const nodes = new Map((await this.#o.membership.nodes()).map((n) => [n.nodeId, n]))
    for (const { nodeId } of record.replicas) {
      const node = nodes.get(nodeId)
      if (!node?.online || !node.capacity) {
        throw pxdError('UNSATISFIABLE', `node ${nodeId} holds a replica of ${record.name} and is offline: its room for ${formatSize(more)} more cannot be checked`)
      }
      if (node.capacity.free < more) {
        throw pxdError('NO_SPACE', `node ${nodeId} has ${formatSize(node.capacity.free)} free; growing ${record.name} by ${formatSize(more)} needs that much on every replica's node`)
      }
    }
  }
}
