/**
 * Which regions of a volume were written while one replica was out of sync: the
 * coordinator's write-intent map, so that resync copies those regions instead of scanning
 * the whole volume. A region is recorded durably before the write that dirties it is
 * acknowledged, so the map survives a coordinator crash or restart.
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

export const DIRTY_REGION_BYTES = 1024 * 1024

interface DirtyFile {
  volumeId: string
  nodeId: string
  sinceEpoch: number
  lastEpoch: number
  regionBytes: number
  regions: number[]
}

export class DirtyMap {
  readonly nodeId: string
  readonly sinceEpoch: number
  #lastEpoch: number
  readonly #regions: Set<number>
  readonly #file: string
  readonly #volumeId: string
  #saving: Promise<void> = Promise.resolve()

  private constructor(file: string, d: DirtyFile) {
    this.#file = file
    this.#volumeId = d.volumeId
    this.nodeId = d.nodeId
    this.sinceEpoch = d.sinceEpoch
    this.#lastEpoch = d.lastEpoch
    this.#regions = new Set(d.regions)
  }

  static fileOf(dir: string, volumeId: string, nodeId: string): string {
    return path.join(dir, `${volumeId}.${nodeId}.json`)
  }

  /** A new map for a replica demoted at `epoch`. */
  static async create(dir: string, volumeId: string, nodeId: string, epoch: number): Promise<DirtyMap> {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 })
    const map = new DirtyMap(DirtyMap.fileOf(dir, volumeId, nodeId), { volumeId, nodeId, sinceEpoch: epoch, lastEpoch: epoch, regionBytes: DIRTY_REGION_BYTES, regions: [] })
    await map.#save()
    return map
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
    const map = new DirtyMap(file, { ...d, lastEpoch: epoch })
    await map.#save()
    return map
  }

  get lastEpoch(): number {
    return this.#lastEpoch
  }

  get regions(): number[] {
    return [...this.#regions].sort((a, b) => a - b)
  }

  /** Record the regions of a write; resolves once they are durable (at once when known). */
  mark(offset: number, length: number): Promise<void> | undefined {
    const first = Math.floor(offset / DIRTY_REGION_BYTES)
    const last = Math.floor((offset + Math.max(length, 1) - 1) / DIRTY_REGION_BYTES)
    let added = false
    for (let r = first; r <= last; r++) {
      if (this.#regions.has(r)) continue
      this.#regions.add(r)
      added = true
    }
    return added ? this.#save() : undefined
  }

  async discard(): Promise<void> {
    await this.#saving
    await fs.rm(this.#file, { force: true })
  }

  /** Saves run one after another; each writes the whole map (small: a number per MiB). */
  #save(): Promise<void> {
    const run = this.#saving.then(async () => {
      const doc: DirtyFile = { volumeId: this.#volumeId, nodeId: this.nodeId, sinceEpoch: this.sinceEpoch, lastEpoch: this.#lastEpoch, regionBytes: DIRTY_REGION_BYTES, regions: this.regions }
      const tmp = `${this.#file}.tmp`
      const h = await fs.open(tmp, 'w', 0o600)
      try {
        await h.writeFile(JSON.stringify(doc))
        await h.sync()
      } finally {
        await h.close()
      }
      await fs.rename(tmp, this.#file)
    })
    this.#saving = run.catch(() => undefined)
    return run
  }
}
