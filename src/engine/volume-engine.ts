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
 * Resync brings a replica that missed writes back: it joins as a learner (new writes go
 * to it too, but its failures only abort the resync), then every region whose block
 * checksums differ from the source's is copied under a region lock that holds back
 * overlapping writes, and finally the manager records it as in sync again.
 *
 * The data path allocates little: with one replica the call goes straight through, and
 * the write payload is the caller's buffer, never copied.
 */
import { isPxdError, pxdError, PxdError } from '../errors'
import { DIRTY_REGION_BYTES, DirtyMap } from './dirty-map'
import type { Replica } from '../replicas/replica'

/** One digest request covers this much of the volume (its reply is 4 bytes per block). */
export const RESYNC_SCAN_BYTES = 64 * 1024 * 1024
/** Unit of copying: a region with any differing block is copied whole. */
export const RESYNC_REGION_BYTES = 128 * 1024
const BLOCK = 4096

/** Scrub reads this much of a replica at a time. */
export const SCRUB_CHUNK_BYTES = 1024 * 1024

export interface ScrubResult {
  checkedBlocks: number
  badBlocks: number
  repairedBlocks: number
  unrecoverableBlocks: number
}

export interface ResyncProgress {
  nodeId: string
  /** 'dirty-map': only the regions written while the replica was away; 'checksum-scan': every block. */
  method: 'dirty-map' | 'checksum-scan'
  totalBytes: number
  scannedBytes: number
  copiedBytes: number
}

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
  onRepair?: (nodeId: string, offset: number, length: number, error?: unknown, badBlock?: number) => void
}

export interface EngineEvents {
  checksumFailure(): void
  repaired(): void
}

export class VolumeEngine {
  readonly volumeId: string
  readonly size: number
  #replicas: Replica[]
  readonly #demote: EngineOptions['demote']
  readonly #onFenced: EngineOptions['onFenced']
  #nextSeq = 1
  #inflight = 0
  #drained: (() => void) | undefined
  #closing: Promise<void> | undefined
  #fenced: PxdError | undefined
  #demoting: Promise<void> = Promise.resolve()
  /** Replicas being resynced: they get every new write, but never serve reads. */
  #learners: Replica[] = []
  readonly #learnerErrors = new Map<Replica, unknown>()
  /** Writes in flight, so a copy can wait for the ones that overlap it to land. */
  readonly #writes = new Set<Promise<void>>()
  /** The byte ranges of the writes in flight; `settled` resolves either way. */
  readonly #writeRanges = new Set<{ start: number; end: number; settled: Promise<void> }>()
  #copyLock: { start: number; end: number; done: Promise<void> } | undefined
  readonly #epoch: number
  readonly #dirtyDir: string | undefined
  readonly #outOfSync: string[]
  readonly #events: EngineEvents | undefined
  readonly #onRepair: EngineOptions['onRepair']
  /** Write-intent maps of replicas that fell out of sync under this node's coordination. */
  readonly #dirty = new Map<string, DirtyMap>()

  constructor(options: EngineOptions) {
    if (options.replicas.length === 0) throw pxdError('UNSATISFIABLE', `volume ${options.volumeId} has no in-sync replica`)
    this.volumeId = options.volumeId
    this.size = options.size
    this.#replicas = options.replicas
    this.#demote = options.demote
    this.#onFenced = options.onFenced
    this.#epoch = options.epoch ?? 0
    this.#dirtyDir = options.dirtyDir
    this.#outOfSync = options.outOfSync ?? []
    this.#events = options.events
    this.#onRepair = options.onRepair
  }

  /** Writes numbered so far. */
  get lastSequence(): number {
    return this.#nextSeq - 1
  }

  /** Node ids of the replicas this engine still writes to. */
  get inSync(): string[] {
    return this.#replicas.map((r) => r.nodeId)
  }

  /**
   * Open every replica at this engine's epoch; replicas that fail are demoted. Dirty maps
   * an earlier attach of this node left are picked up first, so no write goes unrecorded.
   */
  async open(): Promise<void> {
    if (this.#dirtyDir) {
      for (const nodeId of this.#outOfSync) {
        const map = await DirtyMap.resume(this.#dirtyDir, this.volumeId, nodeId, this.#epoch)
        if (map) this.#dirty.set(nodeId, map)
      }
    }
    await this.#each(async (r) => { await r.open() })
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    const refused = this.#check(offset, data.length)
    if (refused) return Promise.reject(refused)
    return this.#track(this.#write(offset, data))
  }

  #write(offset: number, data: Uint8Array): Promise<void> {
    const lock = this.#copyLock
    if (lock !== undefined && offset < lock.end && offset + data.length > lock.start) {
      return lock.done.then(() => this.#write(offset, data))
    }
    // Several writes are in flight at once, and each replica may apply two of them in
    // either order: a write that overlaps one still in flight waits for it, so that every
    // replica ends with the same bytes (the later write's).
    const end = offset + data.length
    for (const w of this.#writeRanges) {
      if (offset < w.end && end > w.start) return w.settled.then(() => this.#write(offset, data))
    }
    const seq = this.#nextSeq++
    const replicas = this.#replicas
    let p: Promise<void>
    if (replicas.length === 1 && this.#learners.length === 0) p = replicas[0]!.write(offset, data, seq).catch((err) => this.#fail(err))
    else {
      p = this.#each((r) => r.write(offset, data, seq), [offset, data.length])
      for (const learner of this.#learners) {
        p = Promise.all([p, learner.write(offset, data, seq).catch((err) => this.#learnerFailed(learner, err))]).then(() => undefined)
      }
    }
    if (this.#dirty.size > 0) {
      const marks: Array<Promise<void>> = []
      for (const map of this.#dirty.values()) {
        const m = map.mark(offset, data.length)
        if (m) marks.push(m)
      }
      if (marks.length > 0) p = Promise.all([p, ...marks]).then(() => undefined)
    }
    this.#writes.add(p)
    const range = { start: offset, end, settled: p.then(noop, noop) }
    this.#writeRanges.add(range)
    const forget = () => {
      this.#writes.delete(p)
      this.#writeRanges.delete(range)
    }
    p.then(forget, forget)
    return p
  }

  /**
   * Bring `target` (a replica that missed writes) back in sync while the volume is in use.
   * `commit` records it as in sync (in the kvdb); only then does it take part as a full
   * replica. Returns how much was compared and copied.
   */
  async resync(target: Replica, commit: () => Promise<void>, onProgress?: (p: ResyncProgress) => void): Promise<ResyncProgress> {
    const previousEpoch = await target.open()
    const map = this.#dirty.get(target.nodeId)
    // The map covers every missed write only if nobody opened the replica since it began.
    const trusted = map !== undefined && map.sinceEpoch === previousEpoch && map.lastEpoch === this.#epoch
    this.#learners.push(target)
    try {
      // Writes that started before the target joined did not go to it: let them land first.
      await Promise.allSettled([...this.#writes])
      const ranges: Array<[number, number]> = trusted
        ? map.regions.map((r) => [r * DIRTY_REGION_BYTES, Math.min(DIRTY_REGION_BYTES, this.size - r * DIRTY_REGION_BYTES)])
        : chunks(this.size, RESYNC_SCAN_BYTES)
      const progress: ResyncProgress = {
        nodeId: target.nodeId,
        method: trusted ? 'dirty-map' : 'checksum-scan',
        totalBytes: ranges.reduce((n, [, len]) => n + len, 0),
        scannedBytes: 0,
        copiedBytes: 0,
      }
      for (const [offset, length] of ranges) {
        progress.copiedBytes += await this.#syncRange(target, offset, length)
        progress.scannedBytes += length
        onProgress?.({ ...progress })
      }
      await target.flush()
      this.#checkLearner(target)
      await commit()
      this.#replicas = [...this.#replicas, target]
      if (map) {
        this.#dirty.delete(target.nodeId)
        await map.discard()
      }
      return progress
    } finally {
      this.#learners = this.#learners.filter((l) => l !== target)
      this.#learnerErrors.delete(target)
    }
  }

  /** Compare one range's block checksums and copy the regions that differ; returns bytes copied. */
  async #syncRange(target: Replica, offset: number, length: number): Promise<number> {
    const source = this.#replicas[0]
    if (!source) throw pxdError('IO_ERROR', `volume ${this.volumeId}: no in-sync replica to resync from`)
    const [want, have] = await Promise.all([source.digest(offset, length), target.digest(offset, length)])
    this.#checkLearner(target)
    let copied = 0
    let regionEnd = -1
    for (let block = 0; block < length / BLOCK; block++) {
      const at = offset + block * BLOCK
      if (at < regionEnd || sameEntry(want, have, block)) continue
      const start = at - (at % RESYNC_REGION_BYTES)
      regionEnd = Math.min(start + RESYNC_REGION_BYTES, this.size)
      await this.#copyRegion(source, target, start, regionEnd - start)
      copied += regionEnd - start
    }
    return copied
  }

  /** Copy one region with overlapping writes held back and in-flight ones landed first. */
  async #copyRegion(source: Replica, target: Replica, start: number, length: number): Promise<void> {
    await this.#withCopyLock(start, length, async () => {
      const buf = Buffer.allocUnsafe(length)
      try {
        await source.read(start, buf)
      } catch (err) {
        // A torn or rotten block on the source: take the region from another replica
        // (it may be the target itself) and mend the source on the way.
        if (!isPxdError(err, 'CHECKSUM_MISMATCH')) throw err
        this.#events?.checksumFailure()
        const other = this.#replicas.find((r) => r !== source)
        if (!other) throw err
        await other.read(start, buf)
        await source.write(start, buf, 0)
        this.#events?.repaired()
        this.#onRepair?.(source.nodeId, start, length)
      }
      await target.write(start, buf, 0)
    })
    this.#checkLearner(target)
  }

  /** One region at a time: overlapping writes wait, writes already in flight land first. */
  async #withCopyLock(start: number, length: number, fn: () => Promise<void>): Promise<void> {
    while (this.#copyLock) await this.#copyLock.done
    let release!: () => void
    const done = new Promise<void>((resolve) => { release = resolve })
    this.#copyLock = { start, end: start + length, done }
    try {
      await Promise.allSettled([...this.#writes])
      await fn()
    } finally {
      this.#copyLock = undefined
      release()
    }
  }

  #learnerFailed(learner: Replica, err: unknown): void {
    if (isPxdError(err, 'STALE_EPOCH')) this.#fail(err)
    if (!this.#learnerErrors.has(learner)) this.#learnerErrors.set(learner, err)
  }

  #checkLearner(target: Replica): void {
    if (this.#fenced) throw this.#fenced
    const err = this.#learnerErrors.get(target)
    if (err !== undefined) throw err
  }

  /**
   * After a coordinator died, its last writes (never acknowledged) may have reached some
   * replicas and not others. Before the volume is used again, make every in-sync replica
   * equal to the first one (the local one when there is one): compare block checksums and
   * copy the regions that differ. Returns the bytes copied.
   */
  async reconcile(): Promise<number> {
    let copied = 0
    for (const target of this.#replicas.slice(1)) {
      for (const [offset, length] of chunks(this.size, RESYNC_SCAN_BYTES)) copied += await this.#syncRange(target, offset, length)
    }
    return copied
  }

  /**
   * Read every written block of every in-sync replica and check it against its crc32c;
   * a bad block is rewritten from a replica where it is good. Blocks whose stored crc is
   * 0 were never written (or hold zeros) and are skipped. `bytesPerSecond` paces it.
   */
  async scrub(options: { bytesPerSecond?: number; signal?: AbortSignal } = {}): Promise<ScrubResult> {
    const result: ScrubResult = { checkedBlocks: 0, badBlocks: 0, repairedBlocks: 0, unrecoverableBlocks: 0 }
    const started = Date.now()
    let bytes = 0
    for (const replica of [...this.#replicas]) {
      for (let offset = 0; offset < this.size; offset += SCRUB_CHUNK_BYTES) {
        if (options.signal?.aborted || this.#closing) return result
        const length = Math.min(SCRUB_CHUNK_BYTES, this.size - offset)
        const digest = await replica.digest(offset, length)
        if (digest.every((b) => b === 0)) continue
        const written = countWritten(digest)
        const buf = Buffer.allocUnsafe(length)
        try {
          await replica.read(offset, buf)
          result.checkedBlocks += written
        } catch (err) {
          if (!isPxdError(err, 'CHECKSUM_MISMATCH')) throw err
          await this.#scrubBlocks(replica, offset, length, digest, result)
        }
        bytes += length
        if (options.bytesPerSecond) {
          const due = started + (bytes / options.bytesPerSecond) * 1000
          if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()))
        }
      }
    }
    return result
  }

  /** Block by block through a chunk that failed: find each bad block and repair it if another replica has it right. */
  async #scrubBlocks(replica: Replica, offset: number, length: number, digest: Uint8Array, result: ScrubResult): Promise<void> {
    const one = Buffer.allocUnsafe(BLOCK)
    for (let block = 0; block < length / BLOCK; block++) {
      if (digest[block * 4] === 0 && digest[block * 4 + 1] === 0 && digest[block * 4 + 2] === 0 && digest[block * 4 + 3] === 0) continue
      const at = offset + block * BLOCK
      result.checkedBlocks++
      try {
        await replica.read(at, one)
        continue
      } catch (err) {
        if (!isPxdError(err, 'CHECKSUM_MISMATCH')) throw err
      }
      result.badBlocks++
      this.#events?.checksumFailure()
      if (this.#replicas.length < 2) {
        result.unrecoverableBlocks++
        this.#onRepair?.(replica.nodeId, at, BLOCK, pxdError('CHECKSUM_MISMATCH', 'no other replica to repair from'))
        continue
      }
      const before = result.repairedBlocks
      await this.#repair(replica, at, BLOCK, () => { result.repairedBlocks++ })
      if (result.repairedBlocks === before) result.unrecoverableBlocks++
    }
  }

  /** Replicas being resynced. */
  get resyncing(): string[] {
    return this.#learners.map((r) => r.nodeId)
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
      const results = await Promise.allSettled([...this.#replicas, ...this.#learners].map((r) => r.close()))
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
    const replica = this.#replicas[index]
    if (!replica) throw pxdError('IO_ERROR', `volume ${this.volumeId}: no replica could serve the read at ${offset}`)
    try {
      await replica.read(offset, into)
    } catch (err) {
      if (isPxdError(err, 'STALE_EPOCH')) return this.#fail(err)
      const corrupt = isPxdError(err, 'CHECKSUM_MISMATCH')
      if (corrupt) this.#events?.checksumFailure()
      if (index + 1 >= this.#replicas.length) throw err
      await this.#readFrom(index + 1, offset, into)
      if (corrupt) await this.#repair(replica, offset, into.length, undefined, badBlockOf(err))
    }
  }

  /** Rewrite whole blocks of a bad replica from a good one, with overlapping writes held back. */
  async #repair(bad: Replica, offset: number, length: number, onDone?: () => void, badBlock?: number): Promise<void> {
    const start = offset - (offset % BLOCK)
    const end = Math.min(Math.ceil((offset + length) / BLOCK) * BLOCK, this.size)
    try {
      await this.#withCopyLock(start, end - start, async () => {
        const source = this.#replicas.find((r) => r !== bad)
        if (!source) throw pxdError('IO_ERROR', 'no good replica left to repair from')
        const buf = Buffer.allocUnsafe(end - start)
        await source.read(start, buf)
        await bad.write(start, buf, 0)
      })
      this.#events?.repaired()
      onDone?.()
      this.#onRepair?.(bad.nodeId, start, end - start, undefined, badBlock)
    } catch (err) {
      this.#onRepair?.(bad.nodeId, start, end - start, err, badBlock)
    }
  }

  /**
   * Run one operation on every in-sync replica in parallel. All succeeded: done. Some
   * failed: demote them (durably) and carry on with the rest. All failed, or the
   * demotion could not be recorded: the operation fails.
   */
  async #each(op: (r: Replica) => Promise<void>, range?: [number, number]): Promise<void> {
    const replicas = this.#replicas
    const results = await Promise.allSettled(replicas.map(op))
    let failed: Array<{ nodeId: string; error: unknown }> | undefined
    for (let i = 0; i < results.length; i++) {
      const r = results[i]!
      if (r.status === 'fulfilled') continue
      if (isPxdError(r.reason, 'STALE_EPOCH')) return this.#fail(r.reason)
      ;(failed ??= []).push({ nodeId: replicas[i]!.nodeId, error: r.reason })
    }
    if (!failed) return
    if (failed.length === replicas.length || !this.#demote) throw failed[0]!.error
    await this.#demoteOnce(failed, range)
  }

  /** Demotions run one at a time; a replica already gone is not demoted twice. */
  #demoteOnce(failed: Array<{ nodeId: string; error: unknown }>, range?: [number, number]): Promise<void> {
    const run = this.#demoting.then(async () => {
      const still = failed.filter((f) => this.#replicas.some((r) => r.nodeId === f.nodeId))
      // A failed write to a replica demoted meanwhile: its map must still hold the range.
      if (range) {
        for (const f of failed) {
          if (still.includes(f)) continue
          await this.#dirty.get(f.nodeId)?.mark(range[0], range[1])
        }
      }
      if (still.length === 0) return
      try {
        await this.#demote!(still)
      } catch (err) {
        if (isPxdError(err, 'FENCED')) return this.#fail(err)
        throw err
      }
      if (this.#dirtyDir) {
        for (const f of still) {
          const map = await DirtyMap.create(this.#dirtyDir, this.volumeId, f.nodeId, this.#epoch)
          if (range) await map.mark(range[0], range[1])
          this.#dirty.set(f.nodeId, map)
        }
      }
      const gone = new Set(still.map((f) => f.nodeId))
      const removed = this.#replicas.filter((r) => gone.has(r.nodeId))
      this.#replicas = this.#replicas.filter((r) => !gone.has(r.nodeId))
      for (const r of removed) void r.close().catch(() => undefined)
    })
    this.#demoting = run.catch(() => undefined)
    return run
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

/**
 * The block a checksum failure names: the addon's error (a local replica) carries it, a
 * peer's comes as text ("checksum mismatch in block N of ...").
 */
function badBlockOf(err: unknown): number | undefined {
  const cause = (err as { cause?: { block?: unknown } }).cause
  if (typeof cause?.block === 'number') return cause.block
  const m = /checksum mismatch in block (\d+)/.exec(err instanceof Error ? err.message : '')
  return m ? Number(m[1]) : undefined
}

function noop(): void {}

function sameEntry(a: Uint8Array, b: Uint8Array, block: number): boolean {
  const i = block * 4
  return a[i] === b[i] && a[i + 1] === b[i + 1] && a[i + 2] === b[i + 2] && a[i + 3] === b[i + 3]
}

function chunks(size: number, step: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let offset = 0; offset < size; offset += step) out.push([offset, Math.min(step, size - offset)])
  return out
}

function countWritten(digest: Uint8Array): number {
  let n = 0
  for (let i = 0; i < digest.length; i += 4) if (digest[i] !== 0 || digest[i + 1] !== 0 || digest[i + 2] !== 0 || digest[i + 3] !== 0) n++
  return n
}
