/**
 * Which regions of a volume were written while one replica was out of sync: the
 * coordinator's write-intent map, so that resync copies those regions instead of scanning
 * the whole volume. A region is in the map on disk before any write to it is sent to any
 * replica (the engine awaits `mark`), so the map survives a coordinator crash or restart,
 * and no replica holds bytes of a region the map could have lost.
 *
 * `mark` resolves once every region of the write is on disk: at once (undefined) for a
 * region already saved, with the save in flight for a region that one is writing, and with
 * the next save for a new one. A save that fails leaves its regions unsaved: the next mark
 * of any of them saves again. Each save writes the whole map (small: a number per MiB)
 * with writeFileDurably (temp file, fsync, rename, directory fsync).
 *
 * The map is only trusted when it covers every write the replica missed:
 *   - it starts at the epoch at which the replica was demoted (`sinceEpoch`), and the
 *     replica has not been opened since (its stored epoch is still `sinceEpoch`), and
 *   - every attach since then was this node's (`lastEpoch` follows the epochs one by one:
 *     another coordinator in between would have written regions this map never saw).
 * Otherwise resync falls back to comparing every block's checksum.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { mkdirDurably, writeFileDurably } from '../util/durable'

export const DIRTY_REGION_BYTES = 1024 * 1024

/** The first region a write at `offset` touches. */
export function firstRegion(offset: number): number {
  return Math.floor(offset / DIRTY_REGION_BYTES)
}

/** The last region a write of `length` bytes at `offset` touches (the first for an empty one). */
export function lastRegion(offset: number, length: number): number {
  return Math.floor((offset + Math.max(length, 1) - 1) / DIRTY_REGION_BYTES)
}

interface DirtyFile {
  volumeId: string
  nodeId: string
  sinceEpoch: number
  lastEpoch: number
  regionBytes: number
  regions: number[]
}

const NONE: ReadonlySet<number> = new Set()
/** What a region marked needs (bits, or-ed over a write's regions). */
const SAVED = 0
const RUNNING = 1
const QUEUE = 2

/** Where a node keeps the dirty maps of the replicas it coordinates. */
export function dirtyDirOf(dataDir: string): string {
  return path.join(dataDir, 'dirty')
}

export class DirtyMap {
  readonly nodeId: string
  readonly sinceEpoch: number
  #lastEpoch: number
  /** Every region marked, saved or not. */
  readonly #regions: Set<number>
  /** Regions no save has taken yet (or whose save failed): `#queued` takes them. */
  #unsaved = new Set<number>()
  /** Regions the save running now is writing. */
  #inFlight: ReadonlySet<number> = NONE
  #queued: Promise<void> | undefined
  #running: Promise<void> | undefined
  /** Saves run one after another. */
  #saving: Promise<void> = Promise.resolve()
  #dirMade: boolean
  readonly #file: string
  readonly #volumeId: string

  private constructor(file: string, d: DirtyFile, dirMade: boolean) {
    this.#file = file
    this.#volumeId = d.volumeId
    this.nodeId = d.nodeId
    this.sinceEpoch = d.sinceEpoch
    this.#lastEpoch = d.lastEpoch
    this.#regions = new Set(d.regions)
    this.#dirMade = dirMade
  }

  static fileOf(dir: string, volumeId: string, nodeId: string): string {
    return path.join(dir, `${volumeId}.${nodeId}.json`)
  }

  /** Delete every map of a volume (it was removed). */
  static async forgetVolume(dir: string, volumeId: string): Promise<void> {
    const names = await fs.readdir(dir).catch(() => [] as string[])
    await Promise.all(names.filter((n) => n.startsWith(`${volumeId}.`)).map((n) => fs.rm(path.join(dir, n), { force: true })))
  }

  /** A new map for a replica demoted at `epoch`, holding `regions`, once it is on disk. */
  static async create(dir: string, volumeId: string, nodeId: string, epoch: number, regions: Iterable<number> = []): Promise<DirtyMap> {
    const { map, saved } = DirtyMap.begin(dir, volumeId, nodeId, epoch, regions)
    await saved
    return map
  }

  /**
   * A new map, usable at once: marks made before `saved` resolves wait for it like any
   * pending region. The first save starts after `after` (a discard of the file's last map).
   */
  static begin(dir: string, volumeId: string, nodeId: string, epoch: number, regions: Iterable<number>, after?: Promise<unknown>): { map: DirtyMap; saved: Promise<void> } {
    const map = new DirtyMap(DirtyMap.fileOf(dir, volumeId, nodeId), { volumeId, nodeId, sinceEpoch: epoch, lastEpoch: epoch, regionBytes: DIRTY_REGION_BYTES, regions: [] }, false)
    if (after) map.#saving = after.then(noop, noop)
    for (const r of regions) {
      map.#regions.add(r)
      map.#unsaved.add(r)
    }
    const saved = (map.#queued = map.#save())
    return { map, saved }
  }

  /**
   * Pick up a map an earlier attach of this node left, for an attach at `epoch`. Returns
   * undefined (and deletes the file) when another node attached in between.
   */
  static async resume(dir: string, volumeId: string, nodeId: string, epoch: number): Promise<DirtyMap | undefined> {
    const file = DirtyMap.fileOf(dir, volumeId, nodeId)
    let d: DirtyFile
    try {
      d = JSON.parse(await fs.readFile(file, 'utf8')) as DirtyFile
    } catch {
      return undefined
    }
    if (d.lastEpoch !== epoch - 1 || d.regionBytes !== DIRTY_REGION_BYTES) {
      await fs.rm(file, { force: true })
      return undefined
    }
    const map = new DirtyMap(file, { ...d, lastEpoch: epoch }, true)
    await (map.#queued = map.#save())
    return map
  }

  get lastEpoch(): number {
    return this.#lastEpoch
  }

  get regions(): number[] {
    return [...this.#regions].sort((a, b) => a - b)
  }

  /** Record the regions of a write; resolves once all are on disk (undefined: they are). */
  mark(offset: number, length: number): Promise<void> | undefined {
    let need = SAVED
    for (let r = firstRegion(offset), last = lastRegion(offset, length); r <= last; r++) need |= this.#add(r)
    return this.#waitFor(need)
  }

  /** Record whole regions; resolves once all are on disk (undefined: they are). */
  markRegions(regions: Iterable<number>): Promise<void> | undefined {
    let need = SAVED
    for (const r of regions) need |= this.#add(r)
    return this.#waitFor(need)
  }

  async discard(): Promise<void> {
    await this.#saving
    await fs.rm(this.#file, { force: true })
  }

  /** Where region `r` stands: QUEUE (the next save takes it), RUNNING (the one running does) or SAVED. */
  #add(r: number): number {
    if (!this.#regions.has(r)) {
      this.#regions.add(r)
      this.#unsaved.add(r)
      return QUEUE
    }
    if (this.#unsaved.has(r)) return QUEUE
    return this.#inFlight.has(r) ? RUNNING : SAVED
  }

  /** The next save takes every region unsaved when it starts, after the running one: waiting for it covers both. */
  #waitFor(need: number): Promise<void> | undefined {
    if (need & QUEUE) return (this.#queued ??= this.#save())
    return need & RUNNING ? this.#running : undefined
  }

  #save(): Promise<void> {
    const run: Promise<void> = this.#saving.then(async () => {
      if (this.#queued === run) this.#queued = undefined
      const batch = this.#unsaved
      this.#unsaved = new Set()
      this.#inFlight = batch
      this.#running = run
      const doc: DirtyFile = { volumeId: this.#volumeId, nodeId: this.nodeId, sinceEpoch: this.sinceEpoch, lastEpoch: this.#lastEpoch, regionBytes: DIRTY_REGION_BYTES, regions: this.regions }
      try {
        if (!this.#dirMade) {
          await mkdirDurably(path.dirname(this.#file))
          this.#dirMade = true
        }
        await writeFileDurably(this.#file, JSON.stringify(doc))
      } catch (err) {
        for (const r of batch) this.#unsaved.add(r)
        throw err
      } finally {
        this.#inFlight = NONE
        this.#running = undefined
      }
    })
    this.#saving = run.then(noop, noop)
    return run
  }
}

function noop(): void {}

/**
 * Per member, the regions written to it since its last completed flush, each stamped with
 * the sequence number of the last write sent there: what a replica whose node lost power
 * may have lost. Numbers in Maps, nothing allocated per write but a new region's entry.
 */
export class UnflushedRegions<K> {
  readonly #of = new Map<K, Map<number, number>>()
  #maps: ReadonlyArray<Map<number, number>> = []

  /** Start tracking `key` (with nothing unflushed); a no-op when tracked already. */
  track(key: K): void {
    if (this.#of.has(key)) return
    this.#of.set(key, new Map())
    this.#maps = [...this.#of.values()]
  }

  drop(key: K): void {
    if (this.#of.delete(key)) this.#maps = [...this.#of.values()]
  }

  /** A write numbered `seq` is being sent to every tracked member. */
  wrote(offset: number, length: number, seq: number): void {
    const first = firstRegion(offset)
    const last = lastRegion(offset, length)
    for (const m of this.#maps) {
      for (let r = first; r <= last; r++) {
        const stamp = m.get(r)
        if (stamp === undefined || stamp < seq) m.set(r, seq)
      }
    }
  }

  /** A flush of `key` succeeded that started once every write up to `upTo` had settled. */
  flushed(key: K, upTo: number): void {
    const m = this.#of.get(key)
    if (m) for (const [r, stamp] of m) if (stamp <= upTo) m.delete(r)
  }

  /** The regions unflushed on `key`, in order. */
  of(key: K): number[] {
    return [...(this.#of.get(key)?.keys() ?? [])].sort((a, b) => a - b)
  }
}

/** The dirty maps of one attached volume, by node (none without a directory). */
export class DirtyMaps {
  readonly #dir: string | undefined
  readonly #volumeId: string
  readonly #epoch: number
  readonly #maps = new Map<string, DirtyMap>()
  /** A node's last discard: a new map's first save waits for it. */
  readonly #discards = new Map<string, Promise<void>>()

  constructor(dir: string | undefined, volumeId: string, epoch: number) {
    this.#dir = dir
    this.#volumeId = volumeId
    this.#epoch = epoch
  }

  get(nodeId: string): DirtyMap | undefined {
    return this.#maps.get(nodeId)
  }

  /** Pick up the maps an earlier attach of this node left for these nodes. */
  async resume(nodeIds: Iterable<string>): Promise<void> {
    if (!this.#dir) return
    for (const nodeId of nodeIds) {
      const map = await DirtyMap.resume(this.#dir, this.#volumeId, nodeId, this.#epoch)
      if (map) this.#maps.set(nodeId, map)
    }
  }

  /** Record a write in every map; resolves once durable, undefined when nothing to wait for. */
  mark(offset: number, length: number): Promise<void> | undefined {
    if (this.#maps.size === 0) return undefined
    let marks: Array<Promise<void>> | undefined
    for (const map of this.#maps.values()) {
      const m = map.mark(offset, length)
      if (m) (marks ??= []).push(m)
    }
    if (!marks) return undefined
    return marks.length === 1 ? marks[0] : Promise.all(marks).then(noop)
  }

  /** The node's map with `regions` added (a new one, at this epoch, unless it has one); resolves once on disk. */
  add(nodeId: string, regions: Iterable<number>): Promise<void> {
    if (!this.#dir) return Promise.resolve()
    const map = this.#maps.get(nodeId)
    if (map) return map.markRegions(regions) ?? Promise.resolve()
    const begun = DirtyMap.begin(this.#dir, this.#volumeId, nodeId, this.#epoch, regions, this.#discards.get(nodeId))
    this.#maps.set(nodeId, begun.map)
    return begun.saved
  }

  /** Forget the node's map and delete its file (a failure to delete is only logged away: the replica is in sync). */
  async discard(nodeId: string): Promise<void> {
    const map = this.#maps.get(nodeId)
    if (!map) return
    this.#maps.delete(nodeId)
    const discarded = map.discard().catch(noop)
    this.#discards.set(nodeId, discarded)
    await discarded
  }
}
