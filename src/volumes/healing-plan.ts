/**
 * What a volume needs to heal, decided from its record and the cluster's view alone (no I/O,
 * so that every rule has a unit test):
 *   - a replica is due for replacement when its node is draining, or has been offline longer
 *     than --replace-after (0: never); one already retiring is not due again;
 *   - a retiring replica may go once the replicas that stay hold `repl` in-sync copies;
 *   - a replica needs a resync when it is out of the in-sync set, its node online, and it is
 *     not retiring;
 *   - a volume that is not attached is healed by the first node of its in-sync set (in record
 *     order) that is online, so that nodes do not race for it.
 */
import type { VolumeRecord } from './types'

export interface ClusterView {
  online: ReadonlySet<string>
  /** When each node was first seen offline (ms since the epoch). */
  offlineSince: ReadonlyMap<string, number>
  draining: ReadonlySet<string>
  /** 0: replicas of lost nodes are never replaced. */
  replaceAfterMs: number
  now: number
}

type Rec = Pick<VolumeRecord, 'replicas' | 'inSync' | 'retiring' | 'spec'>

/** When the replica on `nodeId` is (or was) due for replacement; undefined: not at all. */
export function replacementDueAt(nodeId: string, view: ClusterView): number | undefined {
  if (view.draining.has(nodeId)) return view.now
  if (view.online.has(nodeId) || view.replaceAfterMs <= 0) return undefined
  const since = view.offlineSince.get(nodeId)
  return since === undefined ? undefined : since + view.replaceAfterMs
}

/** Replicas to replace now. */
export function dueForReplacement(record: Rec, view: ClusterView): string[] {
  const retiring = new Set(record.retiring ?? [])
  return record.replicas.map((r) => r.nodeId).filter((n) => {
    if (retiring.has(n)) return false
    const due = replacementDueAt(n, view)
    return due !== undefined && due <= view.now
  })
}

/** Retiring replicas that may be dropped now. */
export function readyToRetire(record: Rec): string[] {
  const retiring = record.retiring ?? []
  if (retiring.length === 0) return []
  const staying = record.inSync.filter((n) => !retiring.includes(n) && record.replicas.some((r) => r.nodeId === n))
  return staying.length >= record.spec.repl ? [...retiring] : []
}

/** Replicas a coordinator should resync now. */
export function needingResync(record: Rec, online: ReadonlySet<string>): string[] {
  const retiring = new Set(record.retiring ?? [])
  return record.replicas.map((r) => r.nodeId).filter((n) => !record.inSync.includes(n) && online.has(n) && !retiring.has(n))
}

/** Whether a holder (or a node about to take the volume for healing) has anything to do. */
export function needsHealing(record: Rec, view: ClusterView): boolean {
  return needingResync(record, view.online).length > 0 || dueForReplacement(record, view).length > 0 || readyToRetire(record).length > 0
}

/** The node that heals a volume nobody has attached. */
export function healerOf(record: Pick<VolumeRecord, 'inSync'>, online: ReadonlySet<string>): string | undefined {
  return record.inSync.find((n) => online.has(n))
}

/** The record once `added` replace `replaced` (which stay, retiring, until the new ones are in sync). */
export function withReplacements(record: VolumeRecord, added: readonly string[], replaced: readonly string[], now: number): VolumeRecord {
  return {
    ...record,
    replicas: [...record.replicas, ...added.map((nodeId) => ({ nodeId }))],
    retiring: [...new Set([...(record.retiring ?? []), ...replaced])],
    degradedSince: record.degradedSince ?? new Date(now).toISOString(),
  }
}

/** The record without the `gone` replicas. */
export function withoutReplicas(record: VolumeRecord, gone: readonly string[]): VolumeRecord {
  const next: VolumeRecord = {
    ...record,
    replicas: record.replicas.filter((r) => !gone.includes(r.nodeId)),
    inSync: record.inSync.filter((n) => !gone.includes(n)),
  }
  const retiring = (record.retiring ?? []).filter((n) => !gone.includes(n))
  if (retiring.length > 0) next.retiring = retiring
  else delete next.retiring
  if (next.inSync.length >= next.spec.repl) delete next.degradedSince
  return next
}
