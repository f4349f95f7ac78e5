/**
 * What needs the volume at one point in the write order: grow, snapshot, restore. Each runs
 * with new requests held and none in flight (the engine's RequestGate), on every in-sync
 * replica, and is refused while a copy (resync, reconcile, scrub) runs: a copy works on the
 * replicas as they are.
 */
import { pxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import type { ReplicaSet, WriteRange } from '../replicas/replica-set'
import { NONE } from './fan-out'

/** What of the engine these take: its members, its size, its hold, flush and fan-out. */
export interface PointInTime {
  readonly volumeId: string
  readonly members: ReplicaSet
  size: number
  /** Runs `work` with requests held; throws ENGINE_CLOSED, FENCED or CONFLICT when it cannot now. */
  hold(what: string, work: () => Promise<void>): Promise<void>
  flush(): Promise<void>
  fanOut(replicas: readonly Replica[], others: readonly Replica[], op: (r: Replica) => Promise<void>, range?: WriteRange): Promise<void>
}

/**
 * The volume grew to `size` bytes: every in-sync replica (and any learner) is opened again at
 * the new size, growing first (one that cannot is demoted like one that failed a write, and
 * grows at its resync); then requests go on at the new size.
 */
export async function grow(e: PointInTime, size: number): Promise<void> {
  if (!Number.isSafeInteger(size) || size <= e.size) throw pxdError('INVALID_ARGUMENT', `volume ${e.volumeId} is ${e.size} bytes; ${size} is not larger`)
  await e.hold('grow', async () => {
    await e.fanOut(e.members.inSync, e.members.learners, (r) => r.grow(size))
    e.size = size
  })
}

/**
 * Snapshot `snapId` on every in-sync replica: the requests in flight land and are flushed,
 * then each replica freezes its contents (one that fails is demoted like one that failed a
 * write). Returns the replicas that took it.
 */
export async function snapshot(e: PointInTime, snapId: string): Promise<string[]> {
  let took: string[] = []
  await e.hold('snapshot', async () => {
    await e.flush()
    await e.fanOut(e.members.inSync, NONE, (r) => r.snapshot(snapId))
    took = e.members.inSync.map((r) => r.nodeId)
  })
  return took
}

/**
 * Every in-sync replica's contents become snapshot `snapId`'s. One that fails is demoted with
 * the whole volume dirty (its resync copies every block), so none is left in sync with
 * contents of its own.
 */
export async function restore(e: PointInTime, snapId: string): Promise<void> {
  await e.hold('restore', () => e.fanOut(e.members.inSync, NONE, (r) => r.restore(snapId), [0, e.size]))
}
