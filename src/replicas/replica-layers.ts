/**
 * Snapshots, restores and clones of the replicas a ReplicaHost holds, and the upkeep of
 * their layers (src/store/layers.ts has the files). Each change runs under the volume's
 * lock of the host, with the host's open stores: a snapshot or restore closes the open
 * store, changes the replica and opens it again at the same epoch; a snapshot id opens as
 * a read-only view of the layer of the replica that holds it.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { hasCollectable, snapshotsOf } from '../store/layers'
import { ReplicaStore, type Superblock } from '../store/replica-store'
import type { KeyedMutex } from '../util/mutex'

/** What of its host the layers work on (the host's own maps and helpers). */
export interface LayerHost {
  open: Map<string, ReplicaStore>
  released: Set<string>
  locks: KeyedMutex
  log: Logger
  dirOf(volumeId: string): string
  exists(volumeId: string): Promise<boolean>
  list(): Promise<string[]>
  storeFor(volumeId: string, epoch: number): ReplicaStore
  /** Waits for the writes in flight to the replica. */
  drained(volumeId: string): Promise<void>
  /** Closes the replica's store, if open, and forgets it. */
  takeOut(volumeId: string): Promise<void>
}

export class ReplicaLayers {
  readonly #h: LayerHost

  constructor(host: LayerHost) {
    this.#h = host
  }

  /**
   * Snapshot `snapId` of the open replica at `epoch`: its live files are frozen as a layer
   * and it goes on with new, empty ones (no data copied). The coordinator holds its writes
   * and flushes first, so the snapshot is one point in the write order on every replica.
   */
  snapshot(volumeId: string, epoch: number, snapId: string): Promise<void> {
    return this.#reopened(volumeId, epoch, (dir) => ReplicaStore.snapshot(dir, snapId), { snapId }, 'snapshot taken')
  }

  /** The open replica's contents become snapshot `snapId`'s (what was written since is gone). */
  restore(volumeId: string, epoch: number, snapId: string): Promise<void> {
    return this.#reopened(volumeId, epoch, (dir) => ReplicaStore.restore(dir, snapId), { snapId }, 'replica restored to a snapshot')
  }

  /**
   * Make this node's replica of new volume `volumeId` as a clone of snapshot `snapId` (a
   * layer of one of this node's replicas): it shares the snapshot's blocks, and writes to
   * either never reach the other. Nothing happens when the replica exists.
   */
  async clone(volumeId: string, snapId: string, size: number): Promise<void> {
    await this.#h.locks.run(volumeId, async () => {
      if (this.#h.open.has(volumeId) || (await this.#h.exists(volumeId))) return
      const owner = await this.ownerOf(snapId)
      if (!owner) throw pxdError('UNKNOWN_VOLUME', `this node holds no snapshot ${snapId} to clone`)
      const store = await this.#h.locks.run(owner, () => ReplicaStore.clone(this.#h.dirOf(owner), snapId, this.#h.dirOf(volumeId), volumeId))
      if (store.size !== size) {
        await store.close()
        await ReplicaStore.destroy(this.#h.dirOf(volumeId))
        throw pxdError('CONFLICT', `snapshot ${snapId} is ${store.size} bytes here, the clone is to be ${size}`)
      }
      this.#h.open.set(volumeId, store)
      this.#h.log.info({ volumeId, snapId, of: owner }, 'replica cloned from a snapshot')
    })
  }

  /** The snapshots this node holds layers of for a volume, with when each was taken; none when it holds no replica. */
  async snapshotsOf(volumeId: string): Promise<Array<{ id: string; createdAt: string }>> {
    let superblock = await this.readSuperblock(volumeId)
    if (superblock?.pending && !this.#h.open.has(volumeId)) {
      // A snapshot a crash cut short: the open finishes it, so that its layer is seen.
      await this.#h.locks.run(volumeId, async () => {
        if (!this.#h.open.has(volumeId)) await ReplicaStore.settle(this.#h.dirOf(volumeId))
      })
      superblock = await this.readSuperblock(volumeId)
    }
    return superblock ? snapshotsOf(superblock).map((id) => ({ id, createdAt: superblock.layers![id]!.createdAt })) : []
  }

  /** Close the open store, change the closed replica, open it again at the same epoch. */
  #reopened(volumeId: string, epoch: number, change: (dir: string) => Promise<void>, fields: object, done: string): Promise<void> {
    return this.#h.locks.run(volumeId, async () => {
      const store = this.#h.storeFor(volumeId, epoch)
      if (store.readOnly) throw pxdError('READ_ONLY', `${volumeId} is a snapshot`)
      await this.#h.drained(volumeId)
      this.#h.open.delete(volumeId)
      await store.close()
      try {
        await change(this.#h.dirOf(volumeId))
      } finally {
        // Open again whatever happened: a change that failed half way is finished by the open.
        this.#h.open.set(volumeId, await ReplicaStore.open(this.#h.dirOf(volumeId)))
      }
      this.#h.log.info({ volumeId, epoch, ...fields }, done)
    })
  }

  /** Open a snapshot to be read: the layer of one of this node's replicas. */
  async openView(snapId: string, size: number, epoch: number): Promise<number> {
    const owner = await this.ownerOf(snapId)
    if (!owner) throw pxdError('UNKNOWN_VOLUME', `this node holds no replica of volume ${snapId}`)
    const store = await ReplicaStore.openView(this.#h.dirOf(owner), snapId)
    if (store.size !== size) {
      await store.close()
      throw pxdError('CONFLICT', `snapshot ${snapId} is ${store.size} bytes here, the coordinator says ${size}`)
    }
    this.#h.open.set(snapId, store)
    await store.setEpoch(epoch)
    return 0
  }

  /** The replica whose layer snapshot `snapId` is, on this node (never a clone that links it). */
  async ownerOf(snapId: string): Promise<string | undefined> {
    for (const id of await this.#h.list()) {
      // A clone's copy of the layer (hidden there: a link) is not the snapshot's.
      const layer = (await this.readSuperblock(id))?.layers?.[snapId]
      if (layer && !layer.hidden) return id
    }
    return undefined
  }

  readSuperblock(volumeId: string): Promise<Superblock | undefined> {
    return ReplicaStore.peekSuperblock(this.#h.dirOf(volumeId))
  }

  /**
   * Snapshot layers left hidden (deleted while their volume was mounted, the files above
   * them smaller) go once nobody holds their replica: it is closed for that (an open waits).
   */
  async collectLayers(): Promise<void> {
    for (const id of await this.#h.list()) {
      const superblock = await this.readSuperblock(id)
      if (!superblock || !(await hasCollectable(this.#h.dirOf(id), superblock)) || (this.#h.open.has(id) && !this.#h.released.has(id))) continue
      await this.#h.locks.run(id, async () => {
        if (this.#h.open.has(id) && !this.#h.released.has(id)) return
        await this.#h.takeOut(id)
        if (await ReplicaStore.collectHidden(this.#h.dirOf(id))) this.#h.log.info({ volumeId: id }, 'hidden snapshot layers deleted')
      }).catch((err) => this.#h.log.warn({ err, volumeId: id }, 'deleting hidden snapshot layers failed'))
    }
  }

  /** Delete this node's layer of snapshot `snapId` (its space goes back; the volume reads the same). */
  async dropSnapshot(snapId: string): Promise<void> {
    const owner = await this.ownerOf(snapId)
    if (!owner) return
    await this.#h.locks.run(snapId, () => this.#h.takeOut(snapId))
    await this.#h.locks.run(owner, async () => {
      await this.#h.drained(owner)
      // Nobody holds the replica: closed, its live files may be copied down into the layer
      // (the cheaper way when they are the smaller); the next open opens it again.
      if (this.#h.released.has(owner)) await this.#h.takeOut(owner)
      await ReplicaStore.removeSnapshot(this.#h.dirOf(owner), snapId, this.#h.open.get(owner))
      this.#h.log.info({ volumeId: owner, snapId }, 'snapshot layer deleted')
    })
  }
}
