/**
 * One operation on several replicas at once, as the engine sends every write, flush, open,
 * grow or snapshot: all calls start together and the result waits for every one of them.
 */
import { isPxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import type { MemberFailure, ReplicaSet, WriteRange } from '../replicas/replica-set'

export const NONE: readonly Replica[] = []

/**
 * Run `op` on every replica of `replicas` (the in-sync ones) and of `others` (learners) in
 * parallel, and settle once every call has settled. All succeeded: done (once any failure
 * still waiting to be recorded is). Some failed: `members` settles them (an in-sync one is
 * demoted, durably, and the rest carry on). A STALE_EPOCH goes to `fail` (the engine is
 * fenced). Every in-sync one failed, or a demotion could not be recorded: it fails.
 */
export async function fanOut(members: ReplicaSet, replicas: readonly Replica[], others: readonly Replica[], op: (r: Replica) => Promise<void>, fail: (err: unknown) => never, range?: WriteRange): Promise<void> {
  const calls: Array<Promise<void>> = []
  for (const r of replicas) calls.push(start(op, r))
  for (const r of others) calls.push(start(op, r))
  const results = await Promise.allSettled(calls)
  let failed: MemberFailure[] | undefined
  for (let i = 0; i < results.length; i++) {
    const r = results[i]!
    if (r.status === 'fulfilled') continue
    if (isPxdError(r.reason, 'STALE_EPOCH')) return fail(r.reason)
    ;(failed ??= []).push({ replica: i < replicas.length ? replicas[i]! : others[i - replicas.length]!, error: r.reason })
  }
  if (failed) return members.settle(failed, replicas, range)
  return members.recorded()
}

/** Start one replica call; one that throws at once is a rejected call like any other. */
function start(op: (r: Replica) => Promise<void>, r: Replica): Promise<void> {
  try {
    return op(r)
  } catch (err) {
    return Promise.reject(err)
  }
}
