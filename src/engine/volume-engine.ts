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
 * A write's promise settles only once every replica call it started has settled: the
 * caller's buffer (a FUSE slot, reused once the request is answered) is never read after.
 * While a replica is out of sync, a write to a region its dirty map does not hold yet waits
 * until the map has it on disk before it is sent anywhere. A write that failed on some
 * in-sync replicas and could not be recorded leaves the engine `diverged`: the attachment
 * is then released unclean, so the next attach reconciles the replicas.
 *
 * Who is in sync, learning or demoted is the ReplicaSet's (src/replicas/replica-set.ts);
 * whether the engine is fenced is fence.ts's; resync and reconcile are in resync.ts, scrub
 * in scrub.ts, reads that fall back to the next replica and read repair in repair.ts, grow,
 * snapshot and restore in point-in-time.ts, one call on many replicas in fan-out.ts, and
 * the ordering of writes in flight against each other and against copies in inflight.ts.
 *
 * The data path allocates little: with one replica the call goes straight through, and
 * the write payload is the caller's buffer, never copied.
 */
import { pxdError, PxdError } from '../errors'
import { VolumeCipher } from './cipher'
import type { Replica } from '../replicas/replica'
import { ReplicaSet, type ReplicaFailure, type WriteRange } from '../replicas/replica-set'
import type { EngineCore, EngineEvents, RepairListener } from './core'
import { fanOut, NONE } from './fan-out'
import { Fence } from './fence'
import { grow, restore, snapshot, type PointInTime } from './point-in-time'
import { InflightWrites } from './inflight'
import { RequestGate } from './request-gate'
import { readRepairing } from './repair'
import { READ_BACK_RETRY_MS, reconcile, resync, type ResyncOptions, type ResyncProgress } from './resync'
import { scrub, type ScrubOptions, type ScrubResult } from './scrub'

export type { EngineEvents } from './core'
export { READ_BACK_RETRY_MS, RESYNC_REGION_BYTES, RESYNC_SCAN_BYTES, type ResyncOptions, type ResyncProgress } from './resync'
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
  /**
   * The volume's in-sync set as the kvdb has it now: a resync commit whose outcome is
   * unknown (KVDB_UNAVAILABLE, a timeout) is read back with it before anything is decided.
   */
  readInSync?: () => Promise<string[]>
  /** How often a failed read back is tried again (READ_BACK_RETRY_MS). */
  readBackRetryMs?: number
  /**
   * A secure volume's cipher (cipher.ts): writes are encrypted before they reach any
   * replica, reads decrypted after. Without it (a resync or scrub on a node without the
   * key) the engine moves ciphertext as it is; useCipher() sets it later.
   */
  cipher?: VolumeCipher
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
  #size: number
  readonly #members: ReplicaSet
  readonly #writes = new InflightWrites()
  readonly #core: EngineCore
  readonly #fence: Fence
  #nextSeq = 1
  #cipher: VolumeCipher | undefined
  /** Requests in flight; closed while a grow runs. */
  readonly #gate = new RequestGate()
  readonly #point: PointInTime
  #closing: Promise<void> | undefined
  /** Copies running (resync, reconcile, scrub), each settled once it stopped. */
  readonly #copies = new Set<Promise<void>>()

  constructor(options: EngineOptions) {
    if (options.replicas.length === 0) throw pxdError('UNSATISFIABLE', `volume ${options.volumeId} has no in-sync replica`)
    this.volumeId = options.volumeId
    this.#size = options.size
    const fence = this.#fence = new Fence(options.volumeId, options.onFenced)
    this.#cipher = options.cipher
    const demote = options.demote
    const epoch = options.epoch ?? 0
    this.#members = new ReplicaSet({
      volumeId: options.volumeId,
      replicas: options.replicas,
      epoch,
      ...(demote ? { demote: (failed: ReplicaFailure[]) => demote(failed).catch((err: unknown) => fence.demotionFailed(err)) } : {}),
      dirtyDir: options.dirtyDir,
      outOfSync: options.outOfSync,
    })
    const engine = this
    this.#core = {
      volumeId: options.volumeId,
      get size() { return engine.#size },
      epoch,
      members: this.#members,
      writes: this.#writes,
      events: options.events,
      onRepair: options.onRepair,
      readInSync: options.readInSync,
      readBackRetryMs: options.readBackRetryMs ?? READ_BACK_RETRY_MS,
      foreground: { requests: 0 },
      get closing() { return engine.#closing !== undefined },
      get fenced() { return fence.error !== undefined },
      // Stamped with the next write's number: only a flush that starts once a later write settled clears it.
      copied: (offset, length) => { this.#members.wrote(offset, length, this.#nextSeq) },
      checkFenced: () => { if (fence.error) throw fence.error },
    }
    this.#point = {
      volumeId: options.volumeId,
      members: this.#members,
      get size() { return engine.#size },
      set size(size: number) { engine.#size = size },
      hold: (what, work) => this.#atOnePoint(what, work),
      flush: () => this.#flush(),
      fanOut: (replicas, others, op, range) => this.#fanOut(replicas, others, op, range),
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

  /** Replicas being resynced (from the moment a resync starts, before it opened the replica). */
  get resyncing(): string[] {
    return this.#members.resyncing
  }

  /**
   * Whether a write failed on some in-sync replicas and was not acknowledged without the
   * failure being recorded (the demotion failed, or every replica failed): the replicas may
   * differ, and the attachment must be released unclean so that the next attach reconciles.
   */
  get diverged(): boolean {
    return this.#members.diverged
  }

  /**
   * Open every replica at this engine's epoch; replicas that fail are demoted. Dirty maps
   * an earlier attach of this node left are picked up first, so no write goes unrecorded.
   */
  async open(): Promise<void> {
    await this.#members.resume()
    await this.#fanOut(this.#members.inSync, NONE, openOf)
  }

  /** The volume's size in bytes (it changes only by grow). */
  get size(): number {
    return this.#size
  }

  /** Encrypt and decrypt with `cipher` from now on (a secure volume mounted on an engine opened without its key). */
  useCipher(cipher: VolumeCipher): void {
    this.#cipher = cipher
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    const held = this.#gate.held
    if (held) return held.then(() => this.write(offset, data))
    const cipher = this.#cipher
    const refused = this.#check(offset, data.length) ?? (cipher && VolumeCipher.check(offset, data.length))
    if (refused) return Promise.reject(refused)
    if (!cipher || data.length === 0) return this.#track(this.#write(offset, data.length, data))
    // The ciphertext buffer goes back to the pool once the write settled on every replica.
    const sealed = cipher.encrypt(offset, data)
    const p = this.#track(this.#write(offset, data.length, sealed))
    p.then(() => cipher.release(sealed), () => cipher.release(sealed))
    return p
  }

  /**
   * The range reads back as zeros on every replica from now on, and each gives its space
   * back to its host. A write in all but name: numbered, ordered against the writes and
   * copies in flight that overlap it, marked in dirty maps, acknowledged like one.
   */
  discard(offset: number, length: number): Promise<void> {
    const held = this.#gate.held
    if (held) return held.then(() => this.discard(offset, length))
    const refused = this.#check(offset, length) ?? (this.#cipher && VolumeCipher.check(offset, length))
    if (refused) return Promise.reject(refused)
    if (length === 0) return Promise.resolve()
    return this.#track(this.#write(offset, length, null))
  }

  /** A write of `data`, or with null a discard of `length` bytes. */
  #write(offset: number, length: number, data: Uint8Array | null): Promise<void> {
    const end = offset + length
    const blocker = this.#writes.blocker(offset, end)
    if (blocker) return blocker.then(() => this.#write(offset, length, data))
    const seq = this.#nextSeq++
    // A region goes into the dirty maps on disk before the write is sent to any replica.
    const marked = this.#members.mark(offset, length)
    const p = marked === undefined ? this.#send(offset, length, data, seq) : marked.then(() => this.#send(offset, length, data, seq))
    this.#writes.add(offset, end, p, seq)
    return p
  }

  #send(offset: number, length: number, data: Uint8Array | null, seq: number): Promise<void> {
    const members = this.#members
    members.wrote(offset, length, seq)
    const replicas = members.inSync
    const learners = members.learners
    if (replicas.length === 1 && learners.length === 0 && !members.unrecorded) return apply(replicas[0]!, offset, length, data, seq).catch(this.#fence.fail)
    const range: WriteRange = [offset, length]
    return this.#fanOut(replicas, learners, (r) => apply(r, offset, length, data, seq), range)
  }

  /**
   * Bring `target` (a replica that missed writes) back in sync while the volume is in use.
   * `commit` records it as in sync (in the kvdb); only then does it take part as a full
   * replica. Returns how much was compared and copied.
   */
  resync(target: Replica, commit: () => Promise<void>, options?: ResyncOptions): Promise<ResyncProgress> {
    return this.#background(resync(this.#core, target, commit, options))
  }

  /**
   * Stop writing to the replica on `nodeId`: the kvdb no longer lists it (it was replaced,
   * drained or moved). In-flight writes to it land first, then it is closed. Never the last
   * in-sync one; an out-of-sync one is only forgotten.
   */
  async retire(nodeId: string): Promise<void> {
    const gone = this.#members.retire(nodeId)
    if (!gone) return
    await this.#writes.landed()
    await gone.close().catch(() => undefined)
  }

  /**
   * After a coordinator died, its last writes (never acknowledged) may have reached some
   * replicas and not others. Before the volume is used again, make every in-sync replica
   * equal to the first one (the local one when there is one): compare block checksums and
   * copy the regions that differ. Returns the bytes copied.
   */
  reconcile(): Promise<number> {
    return this.#background(reconcile(this.#core))
  }

  /**
   * Read every block of every in-sync replica and check it against its crc32c; a bad block
   * is rewritten from a replica where it is good. Blocks whose stored crc is 0 were never
   * written (or hold zeros) and are not counted, but a torn one among them (crc 0 over
   * bytes that are not zeros) is bad. `bytesPerSecond` paces it.
   */
  scrub(options: ScrubOptions = {}): Promise<ScrubResult> {
    return this.#background(scrub(this.#core, options))
  }

  /** Grow, snapshot and restore run at one point in the write order (point-in-time.ts). */
  grow(size: number): Promise<void> {
    return grow(this.#point, size)
  }

  /** The replicas that took it. */
  snapshot(snapId: string): Promise<string[]> {
    return snapshot(this.#point, snapId)
  }

  restore(snapId: string): Promise<void> {
    return restore(this.#point, snapId)
  }

  /** Run `work` with requests held and none in flight; refused while a copy runs (it works on the replicas as they are). */
  async #atOnePoint(what: string, work: () => Promise<void>): Promise<void> {
    if (this.#closing) throw pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`)
    if (this.#fence.error) throw this.#fence.error
    if (this.#copies.size > 0 || this.#members.resyncing.length > 0) throw pxdError('CONFLICT', `volume ${this.volumeId} is being resynced or scrubbed; ${what} it once that is done`)
    const ran = await this.#gate.hold(work)
    if (!ran) throw pxdError('CONFLICT', `volume ${this.volumeId} is busy with a grow, snapshot or restore; retry`)
  }

  /** Track a copy (resync, reconcile, scrub): close waits for it to stop before it lets go of the replicas. */
  #background<T>(p: Promise<T>): Promise<T> {
    const settled = p.then(noop, noop)
    this.#copies.add(settled)
    void settled.then(() => this.#copies.delete(settled))
    return p
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    const held = this.#gate.held
    if (held) return held.then(() => this.read(offset, into))
    const cipher = this.#cipher
    const refused = this.#check(offset, into.length) ?? (cipher && VolumeCipher.check(offset, into.length))
    if (refused) return Promise.reject(refused)
    if (!cipher) return this.#track(readRepairing(this.#core, offset, into, this.#fence.fail))
    // Decrypted only once every replica call (read repair too) is done: they see ciphertext.
    return this.#track(readRepairing(this.#core, offset, into, this.#fence.fail).then(() => cipher.decrypt(offset, into)))
  }

  flush(): Promise<void> {
    const held = this.#gate.held
    if (held) return held.then(() => this.flush())
    if (this.#closing) return Promise.reject(pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`))
    if (this.#fence.error) return Promise.reject(this.#fence.error)
    return this.#track(this.#flush())
  }

  /**
   * Waits for in-flight requests and for the copies running (they stop at their next step:
   * none may write a replica once the next coordinator has it), then flushes and lets go of
   * every replica. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#gate.idle()
      await Promise.all([...this.#copies])
      const results = await Promise.allSettled([...this.#members.inSync, ...this.#members.learners].map((r) => r.close()))
      // Nothing reads or writes through it any more: the data key leaves this process's memory.
      this.#cipher?.destroy()
      const failed = results.find((r) => r.status === 'rejected')
      if (failed && !this.#fence.error) throw (failed as PromiseRejectedResult).reason
    })()
    return this.#closing
  }

  /**
   * A flush of every in-sync and committing replica. One that succeeded makes durable on its
   * replica every write that had settled when it started: those regions are no longer
   * unflushed there (what a replica demoted later may have lost is the rest).
   */
  #flush(): Promise<void> {
    const oldest = this.#writes.oldestSeq()
    const upTo = (oldest ?? this.#nextSeq) - 1
    const members = this.#members
    return this.#fanOut(members.inSync, members.committing, async (r) => {
      await r.flush()
      members.flushed(r, upTo)
    })
  }

  #fanOut(replicas: readonly Replica[], others: readonly Replica[], op: (r: Replica) => Promise<void>, range?: WriteRange): Promise<void> {
    return fanOut(this.#members, replicas, others, op, this.#fence.fail, range)
  }

  /** Why a request cannot start, or undefined. Returned, not thrown: callers get a rejected promise. */
  #check(offset: number, length: number): PxdError | undefined {
    if (this.#closing) return pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`)
    if (this.#fence.error) return this.#fence.error
    if (offset < 0 || length < 0 || offset + length > this.#size) {
      return pxdError('INVALID_ARGUMENT', `I/O at ${offset}+${length} is outside volume ${this.volumeId} of ${this.#size} bytes`)
    }
    return undefined
  }

  #track(p: Promise<void>): Promise<void> {
    this.#core.foreground.requests++
    return this.#gate.track(p)
  }
}

function apply(r: Replica, offset: number, length: number, data: Uint8Array | null, seq: number): Promise<void> {
  return data ? r.write(offset, data, seq) : r.discard(offset, length, seq)
}

function openOf(r: Replica): Promise<void> {
  return r.open().then(noop)
}

function noop(): void {}
