/**
 * The replicas this node holds, for whichever coordinator uses them: the local engine
 * (when the volume is attached here) and remote engines (through peer frames) reach the
 * same ReplicaStore instance, so there is one owner of each replica's files.
 *
 * Epochs fence coordinators: `open` at a newer epoch is recorded durably in the replica's
 * superblock before it returns, and from then on any request carrying an older epoch is
 * refused with STALE_EPOCH. A coordinator that was cut off and comes back cannot write.
 * An open also waits until every write that started before it has landed, so nothing of an
 * earlier session (a fenced coordinator's write, or one whose caller timed out and gave the
 * replica up) can land after it: the new session's reads and resync see the final bytes.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import { VOLUME_ID_PATTERN } from '../constants'
import { pxdError } from '../errors'
import { layerBytes } from '../store/layers'
import { ReplicaStore } from '../store/replica-store'
import { mkdirDurably, renameDurably, syncDir } from '../util/durable'
import { KeyedMutex } from '../util/mutex'
import { ReplicaLayers } from './replica-layers'

/** How long an open waits for writes of an earlier session to land. */
const DRAIN_TIMEOUT_MS = 60_000

/** A replica moved out of service (see `quarantine`). */
export interface QuarantinedReplica {
  /** The directory's name: the volume id, then when it was quarantined. */
  name: string
  volumeId: string
  /** Bytes it takes on disk. */
  bytes: number
}

/** A quarantined replica's directory: its volume id, then when it was quarantined. */
const QUARANTINED = /^[0-9a-f]{16}\.[0-9TZ-]{1,40}$/

export class ReplicaHost {
  readonly #dir: string
  readonly #quarantine: string
  readonly #log: Logger
  readonly #open = new Map<string, ReplicaStore>()
  readonly #locks = new KeyedMutex()
  /** Writes in flight per volume, and the opens waiting for them to land. */
  readonly #writes = new Map<string, { inflight: number; waiters: Array<() => void> }>()
  /** Open replicas whose coordinator let go (flushed, closed its engine): nobody writes them until the next open. */
  readonly #released = new Set<string>()
  /** Snapshots, restores and clones of the replicas held here, and their layers' upkeep. */
  readonly layers: ReplicaLayers
  /** Bytes written to the replicas held here since this process started (coordinators' writes and resync copies). */
  writtenBytes = 0
  #closed = false

  constructor(dataDir: string, log: Logger) {
    this.#dir = path.join(dataDir, 'replicas')
    this.#quarantine = path.join(dataDir, 'quarantine')
    this.#log = log
    this.layers = new ReplicaLayers({
      open: this.#open, released: this.#released, locks: this.#locks, log,
      dirOf: (id) => this.dirOf(id), exists: (id) => this.exists(id), list: () => this.list(),
      storeFor: (id, epoch) => this.storeFor(id, epoch), drained: (id) => this.#drained(id), takeOut: (id) => this.#takeOut(id),
    })
  }

  /** A replica's directory; anything but a volume id (16 hex digits) is refused, never joined into a path. */
  dirOf(volumeId: string): string {
    if (!VOLUME_ID_PATTERN.test(volumeId)) throw pxdError('UNKNOWN_VOLUME', `"${volumeId.slice(0, 64)}" is not a volume id`)
    return path.join(this.#dir, volumeId)
  }

  async exists(volumeId: string): Promise<boolean> {
    try {
      await fs.access(path.join(this.dirOf(volumeId), 'super.json'))
      return true
    } catch {
      return false
    }
  }

  /** Create this node's (empty) replica of a volume, unless it exists. */
  async create(volumeId: string, size: number): Promise<void> {
    await this.#locks.run(volumeId, async () => {
      if (this.#open.has(volumeId) || (await this.exists(volumeId))) return
      const store = await ReplicaStore.create(this.dirOf(volumeId), volumeId, size)
      this.#open.set(volumeId, store)
      this.#log.info({ volumeId, size }, 'replica created')
    })
  }

  /**
   * Open the replica for a coordinator at `epoch`. Refuses epochs older than the replica
   * has seen. A replica that is not on disk is never made up here: an empty file standing
   * in for lost data would serve zeros as if they were the volume's contents.
   * Returns the epoch the replica was at before: resync uses it to know whether anyone
   * else opened (and so may have written) the replica since it fell out of sync.
   */
  open(volumeId: string, size: number, epoch: number): Promise<number> {
    return this.#locks.run(volumeId, async () => {
      if (this.#closed) throw pxdError('DAEMON_STOPPING', 'replica host is closed')
      let store = this.#open.get(volumeId)
      if (store?.flushFailed) {
        // Its failed flush stays failed until the store is opened again; a new session (a
        // resync) starts from what is really on disk, and the crash recovery of the open.
        await this.#drained(volumeId)
        this.#open.delete(volumeId)
        await store.close().catch((err) => this.#log.warn({ err, volumeId }, 'closing a replica whose flush failed'))
        this.#log.warn({ volumeId }, 'reopening a replica whose flush had failed')
        store = undefined
      }
      if (!store) {
        if (!(await this.exists(volumeId))) return this.layers.openView(volumeId, size, epoch)
        store = await ReplicaStore.open(this.dirOf(volumeId))
        const { regions, blocks } = store.recovery
        if (regions > 0) this.#log.warn({ volumeId, regions, blocks }, `${blocks} blocks torn by a crash had their checksum rebuilt (${regions} regions checked)`)
        this.#open.set(volumeId, store)
      }
      if (epoch < store.superblock.epoch) {
        throw pxdError('STALE_EPOCH', `replica ${volumeId} is at epoch ${store.superblock.epoch}; refusing epoch ${epoch}`)
      }
      if (store.size < size && !store.readOnly) {
        // The volume was resized: the replica grows before it serves the larger size.
        const from = store.size
        await this.#drained(volumeId)
        this.#open.delete(volumeId)
        await store.close()
        await ReplicaStore.grow(this.dirOf(volumeId), size)
        store = await ReplicaStore.open(this.dirOf(volumeId))
        this.#open.set(volumeId, store)
        this.#log.info({ volumeId, from, to: size }, 'replica grown to the volume\'s new size')
      }
      if (store.size !== size) throw pxdError('CONFLICT', `replica ${volumeId} is ${store.size} bytes here, the coordinator says ${size}`)
      const previous = store.superblock.epoch
      await store.setEpoch(epoch)
      this.#released.delete(volumeId)
      // Writes that started before (an older coordinator's, or a request of this one that
      // timed out on its side but still runs here) land before the new session reads or
      // resyncs anything: none can land after the open is answered.
      await this.#drained(volumeId)
      return previous
    })
  }

  /** A write to the open replica at `epoch`, counted so that an open waits for it. */
  async write(volumeId: string, epoch: number, offset: number, data: Uint8Array): Promise<void> {
    await this.#counted(volumeId, epoch, (store) => store.write(offset, data))
    this.writtenBytes += data.length
  }

  /** A discard on the open replica at `epoch` (zeros from now on), counted like a write. */
  discard(volumeId: string, epoch: number, offset: number, length: number): Promise<void> {
    return this.#counted(volumeId, epoch, (store) => store.discard(offset, length))
  }

  async #counted(volumeId: string, epoch: number, op: (store: ReplicaStore) => Promise<void>): Promise<void> {
    const store = this.storeFor(volumeId, epoch)
    let w = this.#writes.get(volumeId)
    if (!w) this.#writes.set(volumeId, (w = { inflight: 0, waiters: [] }))
    w.inflight++
    try {
      await op(store)
    } finally {
      if (--w.inflight === 0) {
        this.#writes.delete(volumeId)
        for (const wake of w.waiters) wake()
      }
    }
  }

  async #drained(volumeId: string): Promise<void> {
    const w = this.#writes.get(volumeId)
    if (!w) return
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        new Promise<void>((resolve) => w.waiters.push(resolve)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(pxdError('IO_ERROR', `replica ${volumeId}: ${w.inflight} earlier write(s) did not finish within ${DRAIN_TIMEOUT_MS / 1000} s; refusing the open`)), DRAIN_TIMEOUT_MS)
        }),
      ])
    } finally {
      clearTimeout(timer)
    }
  }

  /** The coordinator at `epoch` lets go: a flush, and until the next open nobody writes the replica. */
  async release(volumeId: string, epoch: number): Promise<void> {
    await this.storeFor(volumeId, epoch).flush()
    this.#released.add(volumeId)
  }

  /** The open replica for a request at `epoch`; the request's epoch must be the current one. */
  storeFor(volumeId: string, epoch: number): ReplicaStore {
    const store = this.#open.get(volumeId)
    if (!store) throw pxdError('UNKNOWN_VOLUME', `no open replica of volume ${volumeId} on this node`)
    const current = store.superblock.epoch
    if (epoch < current) throw pxdError('STALE_EPOCH', `replica ${volumeId} is at epoch ${current}; refusing epoch ${epoch}`)
    if (epoch > current) throw pxdError('STALE_EPOCH', `replica ${volumeId} was not opened at epoch ${epoch} (it is at ${current})`)
    return store
  }

  /** Close and delete a replica (its volume was removed, or this node no longer holds it). */
  async drop(volumeId: string): Promise<void> {
    if (!(await this.exists(volumeId)) && (await this.layers.ownerOf(volumeId))) return this.layers.dropSnapshot(volumeId)
    await this.#locks.run(volumeId, async () => {
      await this.#takeOut(volumeId)
      await ReplicaStore.destroy(this.dirOf(volumeId))
      this.#log.info({ volumeId }, 'replica dropped')
    })
  }

  /**
   * Move a replica out of service without deleting anything: to `<data-dir>/quarantine/`,
   * named by volume id and time. Used for replicas the kvdb does not list (a wrong cluster
   * id or a restored metadata store must never wipe a node); an operator purges them.
   */
  async quarantine(volumeId: string, reason: string): Promise<string> {
    return this.#locks.run(volumeId, async () => {
      await this.#takeOut(volumeId)
      await mkdirDurably(this.#quarantine)
      const name = `${volumeId}.${new Date().toISOString().replace(/[:.]/g, '-')}`
      await renameDurably(this.dirOf(volumeId), path.join(this.#quarantine, name))
      this.#log.warn({ volumeId, quarantined: name, reason }, 'replica moved to quarantine')
      return name
    })
  }

  /** Quarantined replicas, oldest first, with their sizes on disk. */
  async listQuarantined(): Promise<QuarantinedReplica[]> {
    const names = await fs.readdir(this.#quarantine).catch(() => [] as string[])
    const out: QuarantinedReplica[] = []
    for (const name of names.filter((n) => QUARANTINED.test(n)).sort((a, b) => a.slice(17).localeCompare(b.slice(17)))) {
      let bytes = 0
      for (const f of await fs.readdir(path.join(this.#quarantine, name)).catch(() => [] as string[])) {
        bytes += (await fs.stat(path.join(this.#quarantine, name, f)).catch(() => ({ blocks: 0 }))).blocks * 512
      }
      out.push({ name, volumeId: name.slice(0, 16), bytes })
    }
    return out
  }

  /** Delete one quarantined replica for good (its name as listQuarantined gives it). */
  async purgeQuarantined(name: string): Promise<void> {
    if (!QUARANTINED.test(name)) throw pxdError('INVALID_ARGUMENT', `"${name.slice(0, 64)}" is not the name of a quarantined replica`)
    const dir = path.join(this.#quarantine, name)
    try {
      await fs.access(dir)
    } catch {
      throw pxdError('NOT_FOUND', `no quarantined replica ${name}`)
    }
    await fs.rm(dir, { recursive: true, force: true })
    await syncDir(this.#quarantine)
    this.#log.info({ quarantined: name }, 'quarantined replica purged')
  }

  /** Close a replica's store (if open) and forget it: its files are about to move or go. */
  async #takeOut(volumeId: string): Promise<void> {
    const store = this.#open.get(volumeId)
    this.#open.delete(volumeId)
    this.#released.delete(volumeId)
    await store?.close()
  }

  /** Replica ids present on disk. */
  async list(): Promise<string[]> {
    try {
      return (await fs.readdir(this.#dir)).filter((n) => VOLUME_ID_PATTERN.test(n))
    } catch {
      return []
    }
  }

  /**
   * Host bytes allocated for each replica on disk (data and checksum files, as the file
   * system counts them: holes punched by discards are not). A replica dropped meanwhile is left out.
   */
  async allocated(): Promise<Record<string, number>> {
    const out: Record<string, number> = {}
    await Promise.all((await this.list()).map(async (id) => {
      try {
        const dir = this.dirOf(id)
        const [data, crc, superblock] = await Promise.all([fs.stat(path.join(dir, 'data')), fs.stat(path.join(dir, 'crc')), this.layers.readSuperblock(id)])
        out[id] = (data.blocks + crc.blocks) * 512 + (superblock ? await layerBytes(dir, superblock) : 0)
      } catch {
        // gone, or being made
      }
    }))
    return out
  }

  /** Flush and close every open replica. */
  async close(): Promise<void> {
    this.#closed = true
    const stores = [...this.#open.entries()]
    this.#open.clear()
    for (const [volumeId, store] of stores) {
      await store.close().catch((err) => this.#log.error({ err, volumeId }, 'closing a replica failed'))
    }
  }
}
