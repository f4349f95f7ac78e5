/**
 * One attached volume. The engine numbers every write, sends it to all in-sync replicas
 * at once and resolves only when every one of them has it, or when the ones that failed
 * have been taken out of the in-sync set (in the kvdb, by the `demote` callback) first:
 * a write the file system sees acknowledged is on every replica that may serve later.
 * Reads come from the first in-sync replica (the local one when there is one) and fall
 * back to the next. Flush is a flush on every in-sync replica.
 *
 * A replica that refuses a request with STALE_EPOCH means another node attached the
 * volume: this engine is fenced, and every request fails from then on.
 *
 * Who is in sync, learning or demoted is the ReplicaSet's (src/replicas/replica-set.ts);
 * resync and reconcile are in resync.ts, scrub in scrub.ts, repair in repair.ts, and the
 * ordering of writes in flight against each other and against copies in inflight.ts.
 *
 * The data path allocates little: with one replica the call goes straight through, and
 * the write payload is the caller's buffer, never copied.
 */
import { isPxdError, pxdError, PxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import { ReplicaSet, type ReplicaFailure } from '../replicas/replica-set'
import type { EngineCore, EngineEvents, RepairListener } from './core'
import { InflightWrites } from './inflight'
import { badBlockOf, repair } from './repair'
import { reconcile, resync, type ResyncProgress } from './resync'
import { scrub, type ScrubOptions, type ScrubResult } from './scrub'

export type { EngineEvents } from './core'
export { RESYNC_REGION_BYTES, RESYNC_SCAN_BYTES, type ResyncProgress } from './resync'
export { SCRUB_CHUNK_BYTES, type ScrubOptions, type ScrubResult } from './scrub'

export interface EngineOptions {
  volumeId: string
  size: number
  /** In-sync replicas, local first. */
  replicas: Replica[]
  /**
   * Take failed replicas out of the in-sync set durably. Resolves once the kvdb says so;
   * rejects when that cannot be recorded (then the write must not be acknowledged).
   */
  demote?: (failed: Array<{ nodeId: string; error: unknown }>) => Promise<void>
  /** Told once when the engine learns it has been fenced. */
  onFenced?: (error: PxdError) => void
  /** The attach epoch this engine writes at. */
  epoch?: number
  /** Where dirty-region maps of out-of-sync replicas are kept (none: resync always scans). */
  dirtyDir?: string
  /** Replicas already out of sync at attach, whose maps an earlier attach may have left. */
  outOfSync?: string[]
  /** What operators count (metrics); called on the data path, so it must be cheap. */
  events?: EngineEvents
  /**
   * Told of every block range rewritten by read repair (for the log), with the first block
   * that failed its checksum when the replica named it.
   */
  onRepair?: RepairListener
}

export class VolumeEngine {
  readonly volumeId: string
  readonly size: number
  readonly #members: ReplicaSet
  readonly #writes = new InflightWrites()
  readonly #core: EngineCore
  readonly #onFenced: EngineOptions['onFenced']
  readonly #events: EngineEvents | undefined
  #nextSeq = 1
  #inflight = 0
  #drained: (() => void) | undefined
  #closing: Promise<void> | undefined
  #fenced: PxdError | undefined

  constructor(options: EngineOptions) {
    if (options.replicas.length === 0) throw pxdError('UNSATISFIABLE', `volume ${options.volumeId} has no in-sync replica`)
    this.volumeId = options.volumeId
    this.size = options.size
    this.#onFenced = options.onFenced
    this.#events = options.events
    const demote = options.demote
    const epoch = options.epoch ?? 0
    this.#members = new ReplicaSet({
      volumeId: options.volumeId,
      replicas: options.replicas,
      epoch,
      ...(demote ? { demote: (failed: ReplicaFailure[]) => demote(failed).catch((err: unknown) => this.#fenceOn(err)) } : {}),
      dirtyDir: options.dirtyDir,
      outOfSync: options.outOfSync,
    })
    const engine = this
    this.#core = {
      volumeId: options.volumeId,
      size: options.size,
      epoch,
      members: this.#members,
      writes: this.#writes,
      events: options.events,
      onRepair: options.onRepair,
      get closing() { return engine.#closing !== undefined },
      checkFenced: () => { if (this.#fenced) throw this.#fenced },
    }
  }

  /** Writes numbered so far. */
  get lastSequence(): number {
    return this.#nextSeq - 1
  }

  /** Node ids of the replicas this engine still writes to. */
  get inSync(): string[] {
    return this.#members.inSync.map((r) => r.nodeId)
  }

  /** Replicas being resynced. */
  get resyncing(): string[] {
    return this.#members.learners.map((r) => r.nodeId)
  }

  /**
   * Open every replica at this engine's epoch; replicas that fail are demoted. Dirty maps
   * an earlier attach of this node left are picked up first, so no write goes unrecorded.
   */
  async open(): Promise<void> {
    await this.#members.resume()
    await this.#each(async (r) => { await r.open() })
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    const refused = this.#check(offset, data.length)
    if (refused) return Promise.reject(refused)
    return this.#track(this.#write(offset, data))
  }

  #write(offset: number, data: Uint8Array): Promise<void> {
    const end = offset + data.length
    const blocker = this.#writes.blocker(offset, end)
    if (blocker) return blocker.then(() => this.#write(offset, data))
    const seq = this.#nextSeq++
    const replicas = this.#members.inSync
    const learners = this.#members.learners
    let p: Promise<void>
    if (replicas.length === 1 && learners.length === 0) p = replicas[0]!.write(offset, data, seq).catch((err) => this.#fail(err))
    else {
      p = this.#each((r) => r.write(offset, data, seq), [offset, data.length])
      for (const learner of learners) {
        p = Promise.all([p, learner.write(offset, data, seq).catch((err) => this.#learnerFailed(learner, err))]).then(noop)
      }
    }
    const marked = this.#members.mark(offset, data.length)
    if (marked) p = Promise.all([p, marked]).then(noop)
    this.#writes.add(offset, end, p)
    return p
  }

  /**
   * Bring `target` (a replica that missed writes) back in sync while the volume is in use.
   * `commit` records it as in sync (in the kvdb); only then does it take part as a full
   * replica. Returns how much was compared and copied.
   */
  resync(target: Replica, commit: () => Promise<void>, onProgress?: (p: ResyncProgress) => void): Promise<ResyncProgress> {
    return resync(this.#core, target, commit, onProgress)
  }

  /**
   * After a coordinator died, its last writes (never acknowledged) may have reached some
   * replicas and not others. Before the volume is used again, make every in-sync replica
   * equal to the first one (the local one when there is one): compare block checksums and
   * copy the regions that differ. Returns the bytes copied.
   */
  reconcile(): Promise<number> {
    return reconcile(this.#core)
  }

  /**
   * Read every written block of every in-sync replica and check it against its crc32c;
   * a bad block is rewritten from a replica where it is good. Blocks whose stored crc is
   * 0 were never written (or hold zeros) and are skipped. `bytesPerSecond` paces it.
   */
  scrub(options: ScrubOptions = {}): Promise<ScrubResult> {
    return scrub(this.#core, options)
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    const refused = this.#check(offset, into.length)
    if (refused) return Promise.reject(refused)
    return this.#track(this.#readFrom(0, offset, into))
  }

  flush(): Promise<void> {
    if (this.#closing) return Promise.reject(pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`))
    if (this.#fenced) return Promise.reject(this.#fenced)
    return this.#track(this.#each((r) => r.flush()))
  }

  /** Waits for in-flight requests, then flushes and lets go of every replica. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#inflight > 0) await new Promise<void>((resolve) => { this.#drained = resolve })
      const results = await Promise.allSettled([...this.#members.inSync, ...this.#members.learners].map((r) => r.close()))
      const failed = results.find((r) => r.status === 'rejected')
      if (failed && !this.#fenced) throw (failed as PromiseRejectedResult).reason
    })()
    return this.#closing
  }

  /**
   * Read from the first in-sync replica that can serve. A block that fails its checksum is
   * served from the next replica and then rewritten on the bad one (read repair); with no
   * other replica the read fails, naming the block, and never returns wrong bytes.
   */
  async #readFrom(index: number, offset: number, into: Uint8Array): Promise<void> {
    const replica = this.#members.inSync[index]
    if (!replica) throw pxdError('IO_ERROR', `volume ${this.volumeId}: no replica could serve the read at ${offset}`)
    try {
      await replica.read(offset, into)
    } catch (err) {
      if (isPxdError(err, 'STALE_EPOCH')) return this.#fail(err)
      const corrupt = isPxdError(err, 'CHECKSUM_MISMATCH')
      if (corrupt) this.#events?.checksumFailure()
      if (index + 1 >= this.#members.inSync.length) throw err
      await this.#readFrom(index + 1, offset, into)
      if (corrupt) await repair(this.#core, replica, offset, into.length, badBlockOf(err))
    }
  }

  /**
   * Run one operation on every in-sync replica in parallel. All succeeded: done. Some
   * failed: demote them (durably) and carry on with the rest. All failed, or the
   * demotion could not be recorded: the operation fails.
   */
  async #each(op: (r: Replica) => Promise<void>, range?: [number, number]): Promise<void> {
    const replicas = this.#members.inSync
    const results = await Promise.allSettled(replicas.map(op))
    let failed: ReplicaFailure[] | undefined
    for (let i = 0; i < results.length; i++) {
      const r = results[i]!
      if (r.status === 'fulfilled') continue
      if (isPxdError(r.reason, 'STALE_EPOCH')) return this.#fail(r.reason)
      ;(failed ??= []).push({ nodeId: replicas[i]!.nodeId, error: r.reason })
    }
    if (failed) await this.#members.demote(failed, replicas, range)
  }

  #learnerFailed(learner: Replica, err: unknown): void {
    if (isPxdError(err, 'STALE_EPOCH')) this.#fail(err)
    this.#members.learnerFailed(learner, err)
  }

  /** A demotion the kvdb refused with FENCED fences the engine; any other failure passes through. */
  #fenceOn(err: unknown): never {
    if (isPxdError(err, 'FENCED')) this.#fail(err)
    throw err
  }

  #fail(err: unknown): never {
    if (isPxdError(err, 'STALE_EPOCH') || isPxdError(err, 'FENCED')) {
      if (!this.#fenced) {
        this.#fenced = pxdError('FENCED', `volume ${this.volumeId} was attached elsewhere with a newer epoch; this node can no longer write it`, err)
        this.#onFenced?.(this.#fenced)
      }
      throw this.#fenced
    }
    throw err
  }

  /** Why a request cannot start, or undefined. Returned, not thrown: callers get a rejected promise. */
  #check(offset: number, length: number): PxdError | undefined {
    if (this.#closing) return pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`)
    if (this.#fenced) return this.#fenced
    if (offset < 0 || length < 0 || offset + length > this.size) {
      return pxdError('INVALID_ARGUMENT', `I/O at ${offset}+${length} is outside volume ${this.volumeId} of ${this.size} bytes`)
    }
    return undefined
  }

  #track(p: Promise<void>): Promise<void> {
    this.#inflight++
    return p.finally(() => {
      if (--this.#inflight === 0 && this.#drained) this.#drained()
    })
  }
}

function noop(): void {}
