/**
 * Resync brings a replica that missed writes back while the volume is in use: it reserves
 * the node (one resync per node), opens the replica and joins as a learner (new writes go
 * to it too, but its failures only abort the resync), then every region whose block
 * hashes differ from the source's is copied under the copy lock, which holds back
 * overlapping writes, and finally `commit` records it as in sync (in the kvdb); from the
 * moment the commit starts it gets every write and flush as an in-sync replica does (see
 * ReplicaSet). A commit whose outcome is unknown (KVDB_UNAVAILABLE, a timeout: it may have
 * been applied) is read back, again every readBackRetryMs until the kvdb answers or the
 * engine stops, and what the kvdb says decides. With a trusted dirty map only the regions
 * written while it was away are compared, else the whole volume.
 *
 * Reconcile, after a coordinator died, makes every in-sync replica equal to the first one
 * (its last writes, never acknowledged, may have reached some replicas and not others).
 *
 * The source is the first readable in-sync replica; a block that fails its checksum there
 * is taken from each other one in turn, and the source is mended on the way.
 *
 * Blocks are compared by a hash of their data (Replica.hashes), never by their stored
 * crc32c: a CRC is linear, so every block that ends in its own crc32c (an ext4 superblock,
 * a directory block with metadata_csum, a jbd2 descriptor) has the same crc32c whatever it
 * holds, and a stale superblock compared by crc looks in sync.
 *
 * Resuming: a region is copied only when its block hashes differ, so a resync that
 * starts again after an interruption (a coordinator restart, a mount taking the volume over,
 * a lost link) compares everything (hashes only, 8 bytes per block) but copies only what
 * is still missing. The target is flushed after every scan chunk that copied something, so
 * what was copied stays copied even if the target's node loses power.
 *
 * Reading the source once: when the source is on this node (Replica.readHashed: a
 * background resync, a mount on a node with a replica), only the target's hashes are
 * taken ahead; each piece of RESYNC_COPY_BYTES is then read from the source with its
 * hashes in one pass under the copy lock, and only its differing regions are written.
 * Comparing hashes taken earlier on the target is sound: the target got every write
 * since, so a block equal then is equal now (a block that differs then may be equal by
 * now: copied anyway, harmless). Otherwise the source's hashes are compared first and
 * the differing runs read again to be copied.
 *
 * `pace` (the node's rate limit) is awaited outside the copy lock, so writes are never
 * held back by it: before each run is copied, or after a piece for what it copied. The
 * next range is compared while this one copies. Up to RESYNC_COPIES_IN_FLIGHT runs are
 * copied at once, each
 * under its own copy lock, while the volume's user is quiet; while it is active (a request
 * in the last FOREGROUND_QUIET_MS) the resync yields: one copy at a time, each followed by
 * a rest FOREGROUND_REST_FACTOR times as long as it took, so the user's requests keep most
 * of the disk and the CPU.
 */
import { BLOCK_SIZE, HASH_BYTES } from '../constants'
import { isPxdError, pxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import type { CommitOutcome } from '../replicas/replica-set'
import type { EngineCore } from './core'
import { blocksIn, chunks, sameHash } from './digest'
import { DIRTY_REGION_BYTES } from '../replicas/dirty-map'
import { readFromOthers } from './repair'

/** One digest request covers this much of the volume (its reply is 4 bytes per block). */
export const RESYNC_SCAN_BYTES = 64 * 1024 * 1024
/** Unit of comparing: a region with any differing block is copied whole. */
export const RESYNC_REGION_BYTES = 128 * 1024
/** Adjacent differing regions are copied together, up to this much at once. */
export const RESYNC_COPY_BYTES = 1024 * 1024
/** Copies of disjoint runs a resync keeps in flight (each under its own copy lock). */
export const RESYNC_COPIES_IN_FLIGHT = 8
/** The volume's user counts as active this long after its last request. */
export const FOREGROUND_QUIET_MS = 500
/** While the user is active, a resync copies one run at a time and rests this many times as long as each copy took. */
export const FOREGROUND_REST_FACTOR = 3
/** A read back of a commit whose outcome is unknown that fails is tried again this often. */
export const READ_BACK_RETRY_MS = 1_000

export interface ResyncProgress {
  nodeId: string
  /** 'dirty-map': only the regions written while the replica was away; 'checksum-scan': every block. */
  method: 'dirty-map' | 'checksum-scan'
  totalBytes: number
  scannedBytes: number
  copiedBytes: number
}

export interface ResyncOptions {
  onProgress?: (p: ResyncProgress) => void
  /** Resolves when `bytes` more may be copied (a rate limit). */
  pace?: (bytes: number) => Promise<void>
}

export async function resync(core: EngineCore, target: Replica, commit: () => Promise<void>, options: ResyncOptions = {}): Promise<ResyncProgress> {
  // Before any await: a second resync of the node is refused here.
  core.members.join(target)
  try {
    const previousEpoch = await target.open()
    const map = core.members.dirtyMapOf(target.nodeId)
    // The map covers every missed write only if nobody opened the replica since it began.
    const trusted = map !== undefined && map.sinceEpoch === previousEpoch && map.lastEpoch === core.epoch
    core.members.learn(target)
    // Writes that started before the target joined did not go to it: let them land first.
    await core.writes.landed()
    const ranges: Array<[number, number]> = trusted ? dirtyRanges(map.regions, core.size) : chunks(core.size, RESYNC_SCAN_BYTES)
    const progress: ResyncProgress = {
      nodeId: target.nodeId,
      method: trusted ? 'dirty-map' : 'checksum-scan',
      totalBytes: ranges.reduce((n, [, len]) => n + len, 0),
      scannedBytes: 0,
      copiedBytes: 0,
    }
    let unflushed = 0
    await eachRange(core, target, ranges, options.pace, foregroundWatch(core), async (length, copied) => {
      progress.copiedBytes += copied
      unflushed += copied
      if (unflushed >= RESYNC_SCAN_BYTES) {
        await target.flush()
        unflushed = 0
      }
      progress.scannedBytes += length
      options.onProgress?.({ ...progress })
    })
    await target.flush()
    check(core, target)
    await core.members.promote(target, () => commitOutcome(core, target.nodeId, commit))
    return progress
  } finally {
    core.members.leave(target)
  }
}

/** The dirty regions as ranges to compare: adjacent ones merged, up to RESYNC_SCAN_BYTES each (one digest request). */
export function dirtyRanges(regions: readonly number[], size: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (const r of [...regions].sort((a, b) => a - b)) {
    const start = r * DIRTY_REGION_BYTES
    if (start >= size) continue
    const len = Math.min(DIRTY_REGION_BYTES, size - start)
    const last = out[out.length - 1]
    if (last && last[0] + last[1] === start && last[1] + len <= RESYNC_SCAN_BYTES) last[1] += len
    else out.push([start, len])
  }
  return out
}

/** Run the kvdb commit; an outcome it leaves unknown is read back until the kvdb answers or the engine stops. */
async function commitOutcome(core: EngineCore, nodeId: string, commit: () => Promise<void>): Promise<CommitOutcome> {
  try {
    await commit()
    return { promoted: true }
  } catch (error) {
    // A refusal (CONFLICT, FENCED, ...) was not applied; KVDB_UNAVAILABLE or anything else may have been.
    if (isPxdError(error) && !isPxdError(error, 'KVDB_UNAVAILABLE')) return { promoted: false, error }
    while (core.readInSync && !core.closing && !core.fenced) {
      try {
        return (await core.readInSync()).includes(nodeId) ? { promoted: true } : { promoted: false, error }
      } catch {
        await new Promise((resolve) => setTimeout(resolve, core.readBackRetryMs))
      }
    }
    return { promoted: undefined, error }
  }
}

/** Make every in-sync replica equal to the first; returns the bytes copied. */
export async function reconcile(core: EngineCore): Promise<number> {
  let copied = 0
  for (const target of core.members.inSync.slice(1)) {
    await eachRange(core, target, chunks(core.size, RESYNC_SCAN_BYTES), undefined, never, async (_length, bytes) => {
      copied += bytes
    })
  }
  return copied
}

/**
 * Compare each range's block hashes and copy the regions that differ, in order; the next
 * range is compared while this one's regions copy, so the disks never wait for a compare.
 * `done` is told each range's length and the bytes copied in it, in order.
 */
async function eachRange(
  core: EngineCore,
  target: Replica,
  ranges: ReadonlyArray<readonly [number, number]>,
  pace: ((bytes: number) => Promise<void>) | undefined,
  yielding: () => boolean,
  done: (length: number, copied: number) => Promise<void>,
): Promise<void> {
  const compareAt = (i: number) => {
    const [offset, length] = ranges[i]!
    const compared = compare(core, target, offset, length)
    // Seen when awaited; a copy that fails first leaves it unawaited.
    compared.catch(() => {})
    return compared
  }
  let next = ranges.length > 0 ? compareAt(0) : undefined
  for (let i = 0; i < ranges.length; i++) {
    const compared = await next!
    next = i + 1 < ranges.length ? compareAt(i + 1) : undefined
    await done(ranges[i]![1], await copyDiffering(core, target, compared, pace, yielding))
  }
}

/**
 * What to copy of a range: the runs that differ on the target, or, when the source is on
 * this node and reads its data and hashes in one pass, every piece of the range with the
 * target's hashes to compare each with once it is read (the source is read once, not twice).
 */
interface Compared {
  source: Replica
  units: Array<[number, number]>
  /** The target's hashes of the range from `offset`: each unit is a piece, compared as it is copied. */
  have?: { offset: number; hashes: Uint8Array }
}

async function compare(core: EngineCore, target: Replica, offset: number, length: number): Promise<Compared> {
  const source = core.members.readable[0]
  if (!source) throw pxdError('IO_ERROR', `volume ${core.volumeId}: no in-sync replica to resync from`)
  if (source.readHashed) {
    const hashes = await target.hashes(offset, length)
    check(core, target)
    return { source, units: pieces(offset, length), have: { offset, hashes } }
  }
  const [want, have] = await Promise.all([source.hashes(offset, length), target.hashes(offset, length)])
  check(core, target)
  return { source, units: differingRuns(want, have, offset, length, core.size) }
}

/** [offset, offset + length) in pieces of RESYNC_COPY_BYTES that start at multiples of it. */
export function pieces(offset: number, length: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let at = offset, end = offset + length; at < end; ) {
    const next = Math.min(end, at - (at % RESYNC_COPY_BYTES) + RESYNC_COPY_BYTES)
    out.push([at, next - at])
    at = next
  }
  return out
}

/** Copy the runs, up to RESYNC_COPIES_IN_FLIGHT at once; returns the bytes copied. */
async function copyDiffering(core: EngineCore, target: Replica, { source, units: runs, have }: Compared, pace?: (bytes: number) => Promise<void>, yielding: () => boolean = never): Promise<number> {
  let copied = 0
  let next = 0
  let copying = 0
  let failed: { error: unknown } | undefined
  // RESYNC_COPIES_IN_FLIGHT workers take the runs in order; the first failure stops them all.
  const worker = async (): Promise<void> => {
    while (next < runs.length && !failed) {
      // While the user is active only one worker copies.
      if (yielding() && copying > 0) {
        await sleep(FOREGROUND_QUIET_MS / 10)
        continue
      }
      const [start, len] = runs[next++]!
      copying++
      try {
        check(core, target)
        const began = Date.now()
        if (have) {
          // What a piece copies is known once it is read: the rate is paid after, outside the lock.
          const bytes = await copyPiece(core, source, target, start, len, have)
          copied += bytes
          if (pace && bytes > 0) await pace(bytes)
        } else {
          if (pace) {
            await pace(len)
            check(core, target)
          }
          await copyRegion(core, source, target, start, len)
          copied += len
        }
        if (yielding()) await sleep((Date.now() - began) * FOREGROUND_REST_FACTOR)
      } catch (error) {
        failed ??= { error }
      } finally {
        copying--
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(RESYNC_COPIES_IN_FLIGHT, runs.length) }, worker))
  if (failed) throw failed.error
  return copied
}

/** Whether the volume's user made a request in the last FOREGROUND_QUIET_MS (sampled on each call). */
function foregroundWatch(core: EngineCore): () => boolean {
  let seen = core.foreground.requests
  let activeUntil = 0
  return () => {
    const now = Date.now()
    if (core.foreground.requests !== seen) {
      seen = core.foreground.requests
      activeUntil = now + FOREGROUND_QUIET_MS
    }
    return now < activeUntil
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const never = () => false

/**
 * The regions of [offset, offset + length) with a block whose hashes differ, adjacent
 * ones merged into runs of at most RESYNC_COPY_BYTES: one copy (one lock, one round trip)
 * per run.
 */
export function differingRuns(want: Uint8Array, have: Uint8Array, offset: number, length: number, size: number): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  let regionEnd = -1
  for (let block = 0; block < blocksIn(length); block++) {
    const at = offset + block * BLOCK_SIZE
    if (at < regionEnd || sameHash(want, have, block)) continue
    const start = at - (at % RESYNC_REGION_BYTES)
    regionEnd = Math.min(start + RESYNC_REGION_BYTES, size)
    const last = runs[runs.length - 1]
    if (last && last[0] + last[1] === start && last[1] + (regionEnd - start) <= RESYNC_COPY_BYTES) last[1] += regionEnd - start
    else runs.push([start, regionEnd - start])
  }
  return runs
}

/** Copy one region with overlapping writes held back and in-flight ones landed first. */
async function copyRegion(core: EngineCore, source: Replica, target: Replica, start: number, length: number): Promise<void> {
  await core.writes.withCopyLock(start, length, async () => {
    const buf = Buffer.allocUnsafe(length)
    try {
      await source.read(start, buf)
    } catch (err) {
      await mendSource(core, source, start, buf, err)
    }
    await put(core, target, start, buf)
  })
  check(core, target)
}

/**
 * Copy the blocks of one piece that differ from the target's hashes (`have`, taken before
 * the lock: the target got every write since, so a block equal then is equal now), the
 * source read once for its data and its hashes; returns the bytes copied.
 */
async function copyPiece(core: EngineCore, source: Replica, target: Replica, start: number, length: number, have: { offset: number; hashes: Uint8Array }): Promise<number> {
  let copied = 0
  await core.writes.withCopyLock(start, length, async () => {
    const buf = Buffer.allocUnsafe(length)
    let runs: Array<[number, number]>
    try {
      const want = await source.readHashed!(start, buf)
      const from = ((start - have.offset) / BLOCK_SIZE) * HASH_BYTES
      runs = differingRuns(want, have.hashes.subarray(from, from + want.length), start, length, Math.min(core.size, start + length))
    } catch (err) {
      await mendSource(core, source, start, buf, err)
      runs = [[start, length]]
    }
    await Promise.all(runs.map(([at, len]) => put(core, target, at, buf.subarray(at - start, at - start + len))))
    for (const [, len] of runs) copied += len
  })
  check(core, target)
  return copied
}

/**
 * A torn or rotten block on the source: take the range from each other replica in turn (in
 * a reconcile, it may be the target itself) and mend the source on the way.
 */
async function mendSource(core: EngineCore, source: Replica, start: number, buf: Buffer, err: unknown): Promise<void> {
  if (!isPxdError(err, 'CHECKSUM_MISMATCH')) throw err
  core.events?.checksumFailure()
  await readFromOthers(core, source, start, buf, err)
  await source.write(start, buf, 0)
  core.copied(start, buf.length)
  core.events?.repaired()
  core.onRepair?.(source.nodeId, start, buf.length)
}

/**
 * Write one copied range to the target. A range of zeros (discarded, or never written on
 * the source) is discarded on the target: the same contents, and the target's host gets
 * the space back too.
 */
async function put(core: EngineCore, target: Replica, start: number, data: Buffer): Promise<void> {
  if (data.equals(ZEROS.subarray(0, data.length))) await target.discard(start, data.length, 0)
  else await target.write(start, data, 0)
  core.copied(start, data.length)
}

/** What a copied region is compared with (memcmp): no copy is longer. */
const ZEROS = Buffer.alloc(RESYNC_COPY_BYTES)

/**
 * The resync stops once the engine is fenced or closing, or the target (a learner) failed a
 * write: a copy of a closed engine could still reach the target after the next coordinator
 * compared it.
 */
function check(core: EngineCore, target: Replica): void {
  core.checkFenced()
  if (core.closing) throw pxdError('ENGINE_CLOSED', `volume ${core.volumeId} is closed; its resync of node ${target.nodeId} stops`)
  core.members.checkLearner(target)
}
