/**
 * Removing a volume: refused while it is mounted anywhere, snapshotted, or served to
 * other nodes; a volume held for healing only (here or elsewhere) is taken first, fencing
 * that resync. The record and its attachment go in one compare-and-swap, then the
 * replicas and the dirty maps.
 */
import type { Logger } from 'pino'
import { DirtyMap, dirtyDirOf } from '../replicas/dirty-map'
import { pxdError } from '../errors'
import { keys, type Kvdb, type KvEntry } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import type { Attachments } from './attachments'
import type { LocalAttachment, LocalVolumes } from './local-volumes'
import { parseVolumeRef } from './options'
import type { ReplicaPlacement } from './placement'
import type { VolumeSnapshots } from './snapshots'
import type { SharedVolumes } from '../shares/shared-volumes'
import type { VolumeRecord } from './types'

export interface VolumeRemovalOptions {
  dataDir: string
  kvdb: Kvdb
  locks: KeyedMutex
  attachments: Attachments
  attached: ReadonlyMap<string, LocalAttachment>
  local: Pick<LocalVolumes, 'detach'>
  shares: Pick<SharedVolumes, 'has' | 'checkUnmounted'>
  snapshots: () => Pick<VolumeSnapshots, 'refuseIfSnapshotted'>
  placement: Pick<ReplicaPlacement, 'drop'>
  requireRecord: (name: string) => Promise<KvEntry<VolumeRecord>>
  checkRunning: () => void
  log: Logger
}

export class VolumeRemoval {
  readonly #o: VolumeRemovalOptions

  constructor(o: VolumeRemovalOptions) {
    this.#o = o
  }

  async remove(requestedName: string): Promise<void> {
    const { name } = parseVolumeRef(requestedName)
    await this.#o.locks.run(name, async () => {
      this.#o.checkRunning()
      const entry = await this.#o.requireRecord(name)
      await this.#o.snapshots().refuseIfSnapshotted(entry.value)
      // A shared volume served here for others is refused for them, naming them.
      if (entry.value.spec.shared) await this.#o.shares.checkUnmounted(name)
      const held = this.#o.attached.get(name)
      if (held?.mountpoint === null) await this.#o.local.detach(name, held, false)
      if (this.#o.attached.has(name) || this.#o.shares.has(name)) throw pxdError('IN_USE', `volume ${name} is mounted on this node; unmount it first`)
      let attachment = await this.#o.attachments.get(name)
      // Held elsewhere for healing only: take it (fencing that resync), then remove.
      if (attachment?.value.nodeId && attachment.value.purpose === 'resync') {
        await this.#o.attachments.claim(name)
        attachment = await this.#o.attachments.get(name)
      } else if (attachment?.value.nodeId) throw pxdError('IN_USE', `volume ${name} is attached on node ${attachment.value.nodeId}`)
      const progress = (await this.#o.kvdb.list(keys.resyncs(name))).map((e) => e.key)
      const ok = await this.#o.kvdb.txn({
        compares: [
          { key: keys.volume(name), modRevision: entry.modRevision },
          { key: keys.attachment(name), modRevision: attachment?.modRevision ?? 0 },
        ],
        deletes: [keys.volume(name), keys.attachment(name), ...progress],
      })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed while it was being removed; retry`)
      await this.#o.placement.drop(entry.value)
      await DirtyMap.forgetVolume(dirtyDirOf(this.#o.dataDir), entry.value.id)
      this.#o.log.info({ volume: name, volumeId: entry.value.id }, 'volume removed')
    })
  }
}
