/**
 * What a node finds on its disk that the kvdb does not list. At start: replicas are put
 * aside (quarantine, never deleted: a wrong --cluster-id, an empty or restored etcd or a
 * lost embedded store must not wipe the node). At start and then now and again: snapshot
 * layers of listed replicas whose snapshot the kvdb does not list (deleted while the node
 * was away, or left by a snapshot that failed or whose coordinator died part way) are
 * deleted, which gives their space back and leaves the volume's contents as they are. A
 * layer younger than `graceMs` is left alone: its snapshot's record may be on its way.
 */
import type { Logger } from 'pino'
import type { ReplicaHost } from '../replicas/replica-host'
import type { VolumeRecord } from './types'

export interface LeftoverOptions {
  /** Quarantine replicas the kvdb does not list (only at start: a replica may be on its way). */
  replicas: boolean
  graceMs: number
}

/** Snapshot layers no record lists are deleted once this old (a record is written within a second of its layer). */
export const LAYER_GRACE_MS = 60_000

/**
 * Every LAYER_GRACE_MS: leftover snapshot layers (above), then the hidden layers whose
 * replica nobody holds (ReplicaLayers.collectLayers). Stop it with clearInterval.
 */
export function sweepLeftovers(nodeId: string, host: ReplicaHost, records: () => Promise<VolumeRecord[]>, log: Logger): NodeJS.Timeout {
  const timer = setInterval(() => {
    void records().then((all) => cleanUpLeftovers(nodeId, host, all, log, { replicas: false, graceMs: LAYER_GRACE_MS }))
      .then(() => host.layers.collectLayers())
      .catch((err) => log.debug({ err }, 'sweep for leftover snapshot layers skipped'))
  }, LAYER_GRACE_MS)
  timer.unref()
  return timer
}

export async function cleanUpLeftovers(nodeId: string, host: ReplicaHost, records: readonly VolumeRecord[], log: Logger, o: LeftoverOptions): Promise<void> {
  const here = (r: VolumeRecord) => r.replicas.some((p) => p.nodeId === nodeId)
  const mine = new Set(records.filter((r) => here(r) && !r.snapshotOf).map((r) => r.id))
  const snapshots = new Set(records.filter((r) => r.snapshotOf && here(r)).map((r) => r.id))
  for (const id of await host.list()) {
    if (!mine.has(id)) {
      if (o.replicas) await host.quarantine(id, 'the metadata store lists no volume with a replica of this id on this node')
      continue
    }
    for (const snap of await host.layers.snapshotsOf(id)) {
      if (snapshots.has(snap.id) || Date.now() - Date.parse(snap.createdAt) < o.graceMs) continue
      log.warn({ volumeId: id, snapId: snap.id }, 'deleting a snapshot layer the metadata store does not list')
      await host.drop(snap.id).catch((err) => log.error({ err, volumeId: id, snapId: snap.id }, 'deleting a snapshot layer failed'))
    }
  }
}
