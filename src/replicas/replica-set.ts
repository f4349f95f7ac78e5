/**
 * The membership of one attached volume: which replicas serve reads and get writes. A
 * replica is in one of four states; every change is one of these transitions, each with
 * the kvdb write it requires and what must be durable first:
 *
 *   in-sync -> demoting      a request to it failed while another in-sync replica did it.
 *                            The kvdb write (`demote`: out of the volume's in-sync set)
 *                            starts; demotions run one at a time. Meanwhile the replica
 *                            still gets writes and serves reads.
 *   demoting -> out-of-sync  the kvdb write succeeded and its dirty map exists, holding the
 *                            failed write's range durably. Only then does the failed request
 *                            resolve: a write is acknowledged only once every replica that
 *                            missed it has the region in its map. It leaves the set and is
 *                            closed; later writes mark its map before they are acknowledged.
 *   demoting -> in-sync      the kvdb write (or the map) failed: the request that caused it
 *                            is not acknowledged, and the replica stays.
 *   out-of-sync -> learner   a resync starts (no kvdb write). From now on it gets every
 *                            write, but never serves reads, and its failures are remembered
 *                            instead of demoting it. The caller copies only after the writes
 *                            in flight when it joined (which did not go to it) have landed.
 *   learner -> in-sync       every region copied and flushed, no failure remembered, then the
 *                            kvdb write (`commit`: back into the in-sync set) succeeded. It
 *                            joins the set last (it never is the first to read from); its
 *                            dirty map is discarded.
 *   learner -> out-of-sync   a learner failure, a failed resync or a failed commit. Its dirty
 *                            map stays for the next resync.
 *
 * Known weaknesses, kept as they are: a failure is matched to a member by node id, and a
 * learner's failures are checked only before the commit starts.
 */
import { DirtyMap } from './dirty-map'
import type { Replica } from './replica'

export type ReplicaState = 'in-sync' | 'learner' | 'demoting' | 'out-of-sync'

/** A replica that failed a request, as the `demote` kvdb write receives it. */
export interface ReplicaFailure {
  nodeId: string
  error: unknown
}

export interface ReplicaSetOptions {
  volumeId: string
  /** In-sync replicas, local first. */
  replicas: Replica[]
  /** The attach epoch (dirty maps record it). */
  epoch: number
  /** The kvdb write of a demotion: resolves once the failed replicas are out of the in-sync set. */
  demote?: (failed: ReplicaFailure[]) => Promise<void>
  /** Where dirty maps are kept (none: no maps, resync always scans). */
  dirtyDir?: string | undefined
  /** Replicas already out of sync at attach. */
  outOfSync?: string[] | undefined
}

export class ReplicaSet {
  readonly #volumeId: string
  readonly #epoch: number
  readonly #demote: ReplicaSetOptions['demote']
  readonly #dirtyDir: string | undefined
  /** Replaced, never changed in place: a request in flight keeps the members it started with. */
  #inSync: readonly Replica[]
  #learners: readonly Replica[] = []
  readonly #learnerErrors = new Map<Replica, unknown>()
  readonly #demoting = new Set<string>()
  readonly #outOfSync: Set<string>
  /** Write-intent maps of replicas that fell out of sync under this node's coordination. */
  readonly #dirty = new Map<string, DirtyMap>()
  #demotions: Promise<void> = Promise.resolve()

  constructor(options: ReplicaSetOptions) {
    this.#volumeId = options.volumeId
    this.#epoch = options.epoch
    this.#demote = options.demote
    this.#dirtyDir = options.dirtyDir
    this.#inSync = options.replicas
    this.#outOfSync = new Set(options.outOfSync)
  }

  /** In-sync (and demoting) replicas, in read order. */
  get inSync(): readonly Replica[] {
    return this.#inSync
  }

  get learners(): readonly Replica[] {
    return this.#learners
  }

  stateOf(nodeId: string): ReplicaState | undefined {
    if (this.#demoting.has(nodeId)) return 'demoting'
    if (this.#inSync.some((r) => r.nodeId === nodeId)) return 'in-sync'
    if (this.#learners.some((r) => r.nodeId === nodeId)) return 'learner'
    return this.#outOfSync.has(nodeId) ? 'out-of-sync' : undefined
  }

  dirtyMapOf(nodeId: string): DirtyMap | undefined {
    return this.#dirty.get(nodeId)
  }

  /** Pick up the dirty maps an earlier attach of this node left for the out-of-sync replicas. */
  async resume(): Promise<void> {
    if (!this.#dirtyDir) return
    for (const nodeId of this.#outOfSync) {
      const map = await DirtyMap.resume(this.#dirtyDir, this.#volumeId, nodeId, this.#epoch)
      if (map) this.#dirty.set(nodeId, map)
    }
  }

  /** Record a write in every dirty map; resolves once durable, undefined when nothing to wait for. */
  mark(offset: number, length: number): Promise<void> | undefined {
    if (this.#dirty.size === 0) return undefined
    let marks: Array<Promise<void>> | undefined
    for (const map of this.#dirty.values()) {
      const m = map.mark(offset, length)
      if (m) (marks ??= []).push(m)
    }
    if (!marks) return undefined
    return marks.length === 1 ? marks[0] : Promise.all(marks).then(noop)
  }

  /**
   * Some of `among` (the members a request went to) failed it: demote them, after which the
   * request may resolve. Rejects when none is left, when demotion is impossible, or when it
   * could not be recorded. `range` is a failed write's, for the dirty maps.
   */
  async demote(failed: ReplicaFailure[], among: readonly Replica[], range?: [number, number]): Promise<void> {
    if (failed.length === among.length || !this.#demote) throw failed[0]!.error
    const run = this.#demotions.then(() => this.#demoteNow(this.#demote!, failed, range))
    this.#demotions = run.catch(noop)
    return run
  }

  async #demoteNow(demote: NonNullable<ReplicaSetOptions['demote']>, failed: ReplicaFailure[], range: [number, number] | undefined): Promise<void> {
    const still = failed.filter((f) => this.#inSync.some((r) => r.nodeId === f.nodeId))
    // A failed write to a replica demoted meanwhile: its map must still hold the range.
    if (range) {
      for (const f of failed) {
        if (!still.includes(f)) await this.#dirty.get(f.nodeId)?.mark(range[0], range[1])
      }
    }
    if (still.length === 0) return
    for (const f of still) this.#demoting.add(f.nodeId)
    try {
      await demote(still)
      if (this.#dirtyDir) {
        for (const f of still) {
          const map = await DirtyMap.create(this.#dirtyDir, this.#volumeId, f.nodeId, this.#epoch)
          if (range) await map.mark(range[0], range[1])
          this.#dirty.set(f.nodeId, map)
        }
      }
    } finally {
      for (const f of still) this.#demoting.delete(f.nodeId)
    }
    const gone = new Set(still.map((f) => f.nodeId))
    const removed = this.#inSync.filter((r) => gone.has(r.nodeId))
    this.#inSync = this.#inSync.filter((r) => !gone.has(r.nodeId))
    for (const nodeId of gone) this.#outOfSync.add(nodeId)
    for (const r of removed) void r.close().catch(noop)
  }

  /** out-of-sync -> learner: it gets every write from now on. */
  join(learner: Replica): void {
    this.#learners = [...this.#learners, learner]
  }

  /** A write to a learner failed: remembered (the first one) until it leaves. */
  learnerFailed(learner: Replica, err: unknown): void {
    if (!this.#learnerErrors.has(learner)) this.#learnerErrors.set(learner, err)
  }

  /** Throws the failure remembered for a learner, if any. */
  checkLearner(learner: Replica): void {
    const err = this.#learnerErrors.get(learner)
    if (err !== undefined) throw err
  }

  /** learner -> in-sync, once `commit` (the kvdb write) has succeeded. The learner still has to `leave`. */
  async promote(learner: Replica, commit: () => Promise<void>): Promise<void> {
    this.checkLearner(learner)
    await commit()
    this.#inSync = [...this.#inSync, learner]
    this.#outOfSync.delete(learner.nodeId)
    const map = this.#dirty.get(learner.nodeId)
    if (map) {
      this.#dirty.delete(learner.nodeId)
      await map.discard()
    }
  }

  /** The resync is over: no longer a learner; out of sync unless promoted. */
  leave(learner: Replica): void {
    this.#learners = this.#learners.filter((l) => l !== learner)
    this.#learnerErrors.delete(learner)
    if (!this.#inSync.includes(learner)) this.#outOfSync.add(learner.nodeId)
  }
}

function noop(): void {}
