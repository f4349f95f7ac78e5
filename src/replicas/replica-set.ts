/**
 * The membership of one attached volume: which replicas serve reads and get writes and
 * flushes. Members are matched by identity (the Replica object), never by node id, and a
 * node has at most one member at a time: `join` of a node that has one is refused. Every
 * change is one of these transitions, with the kvdb write it needs and what is durable first:
 *
 *   in-sync -> demoting      a request to it failed while another in-sync replica did it:
 *                            the kvdb write (`demote`) starts; demotions run one at a time.
 *                            Meanwhile it still gets writes and serves reads.
 *   demoting -> out-of-sync  the kvdb write succeeded. Its dirty map starts with every region
 *                            written to it since its last completed flush (its node may have
 *                            lost power, and those pages with it) plus the failed range, and
 *                            it leaves the set (closed) in the same step, so every later write
 *                            marks that map first. The failed request resolves once the map
 *                            is on disk.
 *   demoting -> unrecorded   the kvdb write failed: the request is not acknowledged and the
 *                            engine has `diverged` (its release keeps the volume unclean). The
 *                            replica stays in the set and gets writes and flushes but serves
 *                            no reads (it may lack the failed write), and its demotion is
 *                            tried again before any later request is acknowledged
 *                            (`recorded`): no write is acknowledged while the set is
 *                            unrecorded. Once it succeeds: out-of-sync as above, the map also
 *                            holding every range it failed. The last one left stays in sync.
 *   joining                  a resync reserved the node and opens the replica (no writes yet).
 *   joining -> learner       `learn`: it gets every write but no flush and serves no reads; its
 *                            failures are remembered (its map, marked before every write, has
 *                            the range). The resync copies only after the writes in flight
 *                            when it joined (which did not go to it) have landed.
 *   learner -> committing    every region copied and flushed, no failure remembered: the kvdb
 *                            write (`commit`) starts. It now gets every write and every flush
 *                            as an in-sync member does; its failures are remembered and the
 *                            requests it failed wait for the outcome. A commit whose outcome
 *                            is unknown is read back (resync.ts) before anything is decided.
 *   committing -> in-sync    the kvdb says so. It joins the set last (never the first to read
 *                            from). No failure in the window: its map is discarded. A failure:
 *                            it is demoted at once (as unrecorded, its map kept), and the
 *                            requests it failed wait on that demotion.
 *   committing -> out-of-sync the kvdb says not (or refused): the map stays, and the requests
 *                            it failed resolve (their ranges are in the map). An outcome still
 *                            unknown when the engine stops: they fail, and it has diverged.
 *   learner -> out-of-sync   a learner failure or a failed resync. Its map stays.
 *   in-sync -> retired       `retire`: the kvdb already no longer lists it (replaced, drained,
 *                            moved), so nothing depends on it; it leaves the set at once.
 *
 * Unflushed regions (dirty-map.ts): for every member that gets writes, the regions sent to it
 * since its last completed flush, stamped with the write's sequence number (a copy's with the
 * next one). A flush that succeeded clears those of the writes settled when it started; a
 * failed one clears nothing.
 *
 * The joining, learner and committing members, their failures and a commit's window are
 * kept by learners.ts; the set decides their transitions and keeps everything else.
 */
import { pxdError } from '../errors'
import { DirtyMaps, firstRegion, lastRegion, UnflushedRegions, type DirtyMap } from './dirty-map'
import { Learners } from './learners'
import type { Replica } from './replica'

export type ReplicaState = 'joining' | 'learner' | 'committing' | 'in-sync' | 'demoting' | 'unrecorded' | 'out-of-sync'

/** A replica that failed a request, as the `demote` kvdb write receives it. */
export interface ReplicaFailure {
  nodeId: string
  error: unknown
}

/** A member that failed a request. */
export interface MemberFailure {
  replica: Replica
  error: unknown
}

/** A write's [offset, length]. */
export type WriteRange = readonly [number, number]

/** How a commit ended: in sync as the kvdb says (`promoted` undefined: the kvdb could not tell). */
export type CommitOutcome = { promoted: true } | { promoted: false | undefined; error: unknown }

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
  readonly #demote: ReplicaSetOptions['demote']
  /** Replaced, never changed in place: a request in flight keeps the members it started with. */
  #inSync: readonly Replica[]
  /** In-sync but not unrecorded ones (all of them should every one be unrecorded). */
  #readable: readonly Replica[]
  readonly #resyncs = new Learners()
  readonly #demoting = new Set<Replica>()
  readonly #unrecorded = new Map<Replica, { error: unknown; ranges: WriteRange[] }>()
  readonly #outOfSync: Set<string>
  /** Write-intent maps of replicas out of sync under this node's coordination, by node. */
  readonly #dirty: DirtyMaps
  readonly #unflushed = new UnflushedRegions<Replica>()
  #demotions: Promise<void> = Promise.resolve()
  #retrying: Promise<void> | undefined
  #diverged = false

  constructor(options: ReplicaSetOptions) {
    this.#volumeId = options.volumeId
    this.#demote = options.demote
    this.#dirty = new DirtyMaps(options.dirtyDir, options.volumeId, options.epoch)
    this.#inSync = options.replicas
    this.#readable = this.#inSync
    this.#outOfSync = new Set(options.outOfSync)
    for (const r of this.#inSync) this.#unflushed.track(r)
  }

  /** In-sync (with demoting and unrecorded) replicas, in read order: they get every write and flush. */
  get inSync(): readonly Replica[] {
    return this.#inSync
  }

  /** The in-sync replicas that may serve reads (and be copied from), in read order. */
  get readable(): readonly Replica[] {
    return this.#readable
  }

  /** Learners whose commit is under way: they get every flush besides the in-sync ones. */
  get committing(): readonly Replica[] {
    return this.#resyncs.committing
  }

  /** Learners and committing members: they get every write besides the in-sync ones. */
  get learners(): readonly Replica[] {
    return this.#resyncs.learners
  }

  /** Nodes being resynced (joining, learner or committing). */
  get resyncing(): string[] {
    return this.#resyncs.resyncing
  }

  /** Whether a failure is waiting for its demotion to be recorded (the write path then takes the slow road). */
  get unrecorded(): boolean {
    return this.#unrecorded.size > 0
  }

  /** A write failed on some in-sync replicas and was not acknowledged without being recorded: they may differ. */
  get diverged(): boolean {
    return this.#diverged
  }

  stateOf(nodeId: string): ReplicaState | undefined {
    for (const r of this.#inSync) {
      if (r.nodeId === nodeId) return this.#demoting.has(r) ? 'demoting' : this.#unrecorded.has(r) ? 'unrecorded' : 'in-sync'
    }
    return this.#resyncs.stateOf(nodeId) ?? (this.#outOfSync.has(nodeId) ? 'out-of-sync' : undefined)
  }

  dirtyMapOf(nodeId: string): DirtyMap | undefined {
    return this.#dirty.get(nodeId)
  }

  /** Regions written to a member since its last completed flush. */
  unflushedOf(replica: Replica): number[] {
    return this.#unflushed.of(replica)
  }

  /** Pick up the dirty maps an earlier attach of this node left for the out-of-sync replicas. */
  resume(): Promise<void> {
    return this.#dirty.resume(this.#outOfSync)
  }

  /** Record a write in every dirty map before it is sent; resolves once durable, undefined when nothing to wait for. */
  mark(offset: number, length: number): Promise<void> | undefined {
    return this.#dirty.mark(offset, length)
  }

  /** A write numbered `seq` is being sent: it is unflushed on every member that gets writes. */
  wrote(offset: number, length: number, seq: number): void {
    this.#unflushed.wrote(offset, length, seq)
  }

  /** A flush of `replica` succeeded that started once every write up to `upTo` had settled. */
  flushed(replica: Replica, upTo: number): void {
    this.#unflushed.flushed(replica, upTo)
  }

  /**
   * Some members failed a request that went to `among` (the in-sync members then) and to the
   * learners; resolves once the request may be acknowledged. Learners' failures are
   * remembered, committing members' wait for the commit's outcome, in-sync ones are demoted.
   * Rejects when every in-sync member failed, when a demotion is impossible or could not be
   * recorded. `range` is a failed write's, for the dirty maps.
   */
  async settle(failures: readonly MemberFailure[], among: readonly Replica[], range?: WriteRange): Promise<void> {
    let demote: MemberFailure[] | undefined
    let waits: Array<Promise<void>> | undefined
    let first: MemberFailure | undefined
    let failedInSync = 0
    for (const f of failures) {
      const taken = this.#resyncs.failed(f.replica, f.error, range)
      if (typeof taken === 'object') (waits ??= []).push(taken)
      // No longer a member (a learner whose resync ended): every write marked its map first.
      else if (!taken && (this.#inSync.includes(f.replica) || among.includes(f.replica))) {
        ;(demote ??= []).push(f)
        if (among.includes(f.replica)) {
          failedInSync++
          first ??= f
        }
      }
    }
    if (demote) {
      if (failedInSync === among.length || !this.#demote) {
        if (range && (among.length > 1 || this.#resyncs.committing.length > 0)) this.#diverged = true
        throw (first ?? demote[0]!).error
      }
      await this.#queueDemotion(demote, range ? [range] : [])
    }
    if (waits) await Promise.all(waits)
    await this.recorded()
  }

  /** Demotions that could not be recorded are tried again; resolves once none is left (undefined: none is). */
  recorded(): Promise<void> | undefined {
    if (this.#unrecorded.size === 0) return undefined
    return (this.#retrying ??= this.#retryDemotions().finally(() => { this.#retrying = undefined }))
  }

  /** joining: reserve the node for a resync. Refused when the node has a member. */
  join(learner: Replica): void {
    const state = this.stateOf(learner.nodeId)
    if (state !== undefined && state !== 'out-of-sync') {
      throw pxdError('CONFLICT', `volume ${this.#volumeId}: the replica on node ${learner.nodeId} is ${state} already`)
    }
    this.#resyncs.join(learner)
  }

  /** joining -> learner: it gets every write from now on. */
  learn(learner: Replica): void {
    this.#resyncs.learn(learner)
    this.#unflushed.track(learner)
  }

  /** Throws the failure remembered for a learner, if any. */
  checkLearner(learner: Replica): void {
    const err = this.#resyncs.errorOf(learner)
    if (err !== undefined) throw err
  }

  /**
   * learner -> committing -> in-sync when `commit` (the kvdb write, read back when its outcome
   * was unknown) says so; rejects when it is not in sync at the end. It still has to `leave`.
   */
  async promote(learner: Replica, commit: () => Promise<CommitOutcome>): Promise<void> {
    this.checkLearner(learner)
    const window = this.#resyncs.commit(learner)
    this.#derive()
    const outcome = await commit().catch((error: unknown): CommitOutcome => ({ promoted: undefined, error }))
    this.#resyncs.committed(learner)
    this.#derive()
    if (!outcome.promoted) {
      // Unknown to the end: the kvdb may say in sync. Nothing it may lack is acknowledged.
      if (outcome.promoted === undefined) this.#diverged = true
      window.wait?.settle(outcome.promoted === undefined ? Promise.reject(outcome.error) : undefined)
      throw outcome.error
    }
    this.#resyncs.promoted(learner)
    this.#inSync = [...this.#inSync, learner]
    this.#outOfSync.delete(learner.nodeId)
    const failure = this.#resyncs.errorOf(learner)
    if (failure === undefined) {
      this.#derive()
      await this.#dirty.discard(learner.nodeId)
      return
    }
    // It failed in the window: in sync as the kvdb says, demoted at once; no reads meanwhile.
    this.#unrecorded.set(learner, { error: failure, ranges: [...window.ranges] })
    this.#derive()
    const demotion = this.#queueDemotion([{ replica: learner, error: failure }], window.ranges)
    window.wait?.settle(demotion)
    await demotion
    throw failure
  }

  /**
   * in-sync or out-of-sync -> retired (see above). Returns the member to close, if it was one.
   * Refused for the last in-sync member and for one whose demotion is in progress.
   */
  retire(nodeId: string): Replica | undefined {
    this.#outOfSync.delete(nodeId)
    void this.#dirty.discard(nodeId)
    const member = this.#inSync.find((r) => r.nodeId === nodeId)
    if (!member) return undefined
    if (this.#demoting.has(member) || this.#unrecorded.has(member)) throw pxdError('CONFLICT', `volume ${this.#volumeId}: the replica on node ${nodeId} is being demoted; retire it later`)
    if (this.#inSync.length === 1) throw pxdError('UNSATISFIABLE', `volume ${this.#volumeId}: the replica on node ${nodeId} is its last in-sync one`)
    this.#inSync = this.#inSync.filter((r) => r !== member)
    this.#unflushed.drop(member)
    this.#derive()
    return member
  }

  /** The resync is over: no longer joining or a learner; out of sync unless promoted. */
  leave(learner: Replica): void {
    this.#resyncs.leave(learner)
    if (!this.#inSync.includes(learner)) {
      this.#unflushed.drop(learner)
      this.#outOfSync.add(learner.nodeId)
    }
    this.#derive()
  }

  #derive(): void {
    const readable = this.#unrecorded.size === 0 ? this.#inSync : this.#inSync.filter((r) => !this.#unrecorded.has(r))
    this.#readable = readable.length > 0 ? readable : this.#inSync
  }

  #queueDemotion(failures: readonly MemberFailure[], ranges: readonly WriteRange[]): Promise<void> {
    const run = this.#demotions.then(() => this.#demoteNow(failures, ranges))
    this.#demotions = run.catch(noop)
    return run
  }

  async #demoteNow(failures: readonly MemberFailure[], ranges: readonly WriteRange[]): Promise<void> {
    const still = failures.filter((f) => this.#inSync.includes(f.replica))
    // A failed write to a replica demoted meanwhile: its map must still hold the range.
    for (const f of failures) {
      const map = still.includes(f) ? undefined : this.#dirty.get(f.replica.nodeId)
      if (map) for (const [offset, length] of ranges) await map.mark(offset, length)
    }
    if (still.length === 0) return
    for (const f of still) this.#demoting.add(f.replica)
    try {
      await this.#demote!(still.map((f) => ({ nodeId: f.replica.nodeId, error: f.error })))
    } catch (err) {
      for (const f of still) this.#unrecord(f, ranges)
      throw err
    } finally {
      for (const f of still) this.#demoting.delete(f.replica)
    }
    await this.#leaveInSync(still, ranges)
  }

  /** demoting -> out-of-sync, in one step: its map (unflushed regions and failed ranges) is in place before it leaves. */
  async #leaveInSync(demoted: readonly MemberFailure[], ranges: readonly WriteRange[]): Promise<void> {
    const saves: Array<Promise<void>> = []
    const gone = new Set<Replica>()
    for (const { replica } of demoted) {
      const regions = new Set(this.#unflushed.of(replica))
      for (const [offset, length] of [...ranges, ...(this.#unrecorded.get(replica)?.ranges ?? [])]) {
        for (let r = firstRegion(offset); r <= lastRegion(offset, length); r++) regions.add(r)
      }
      saves.push(this.#dirty.add(replica.nodeId, regions))
      this.#unrecorded.delete(replica)
      this.#unflushed.drop(replica)
      this.#outOfSync.add(replica.nodeId)
      gone.add(replica)
    }
    this.#inSync = this.#inSync.filter((r) => !gone.has(r))
    this.#derive()
    for (const r of gone) void r.close().catch(noop)
    await Promise.all(saves)
  }

  #unrecord(f: MemberFailure, ranges: readonly WriteRange[]): void {
    const known = this.#unrecorded.get(f.replica)
    if (known) known.ranges.push(...ranges)
    else this.#unrecorded.set(f.replica, { error: f.error, ranges: [...ranges] })
    this.#diverged = true
    this.#derive()
  }

  async #retryDemotions(): Promise<void> {
    while (this.#unrecorded.size > 0) {
      const failures: MemberFailure[] = []
      for (const [replica, u] of this.#unrecorded) {
        if (this.#inSync.includes(replica)) failures.push({ replica, error: u.error })
        else this.#unrecorded.delete(replica)
      }
      // Never the last ones: they stay in sync, and the engine stays diverged.
      if (failures.length >= this.#inSync.length) this.#unrecorded.clear()
      else if (failures.length > 0) await this.#queueDemotion(failures, [])
      this.#derive()
    }
  }
}

function noop(): void {}
