/**
 * Resyncs of the volumes attached here (mounted, or held by the healer for a background
 * resync). Every RESYNC_CHECK_MS (and when asked, after an attach or a replication change)
 * each replica that is online but out of the in-sync set, and not on its way out, is
 * resynced by the volume's engine, then promoted back at the coordinator's epoch. At most
 * `pace.concurrency` resyncs run on this node at once, and together they copy at most
 * `pace`'s rate. Progress goes to the kvdb (resync/<name>) so that inspect on any node shows
 * it, per replica; an attempt that follows an unfinished one at the same replica carries its count on.
 */
import type { Logger } from 'pino'
import type { Membership } from '../cluster/membership'
import type { ResyncProgress, VolumeEngine } from '../engine/volume-engine'
import { messageOf } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { ReplicaDirectory } from '../replicas/directory'
import type { InSyncSet } from './in-sync'
import type { ResyncPace } from './resync-pace'
import type { ResyncRecord, VolumeRecord } from './types'

/** How often a coordinator looks for replicas that are back and out of sync. */
export const RESYNC_CHECK_MS = 2_000
/** Progress goes to the kvdb at most this often. */
export const RESYNC_PUBLISH_MS = 500
/** Reads of the last resync record before an attempt gives up and counts as the first. */
const PREVIOUS_READ_TRIES = 4

/** What resync needs of a volume attached here. */
export interface ResyncableVolume {
  engine: Pick<VolumeEngine, 'resync' | 'resyncing'>
  epoch: number
  volumeId: string
  size: number
}

export interface ResyncsOptions {
  nodeId: string
  kvdb: Kvdb
  membership: Pick<Membership, 'nodes'>
  replicas: Pick<ReplicaDirectory, 'replica'>
  inSync: Pick<InSyncSet, 'promote'>
  /** The volumes attached here, by name (the manager's map, read only). */
  attached: ReadonlyMap<string, ResyncableVolume>
  /** This node's resync rate and slots. */
  pace: ResyncPace
  log: Logger
}

export class Resyncs {
  readonly #o: ResyncsOptions
  /** Nodes whose resync has been started, per attached volume: marked before any await. */
  readonly #running = new WeakMap<ResyncableVolume, Set<string>>()
  #timer: NodeJS.Timeout | undefined
  #stopped = false

  constructor(o: ResyncsOptions) {
    this.#o = o
  }

  start(): void {
    this.#timer = setInterval(() => {
      for (const name of this.#o.attached.keys()) void this.check(name)
    }, RESYNC_CHECK_MS)
    this.#timer.unref()
  }

  stop(): void {
    this.#stopped = true
    if (this.#timer) clearInterval(this.#timer)
  }

  /** Whether a resync of `name` started here is still running. */
  running(name: string): boolean {
    const local = this.#o.attached.get(name)
    return local !== undefined && (this.#running.get(local)?.size ?? 0) > 0
  }

  /**
   * Start a resync of every replica of `name` that is online, out of sync and not resyncing
   * yet (by this object or, as the engine says, anyone): never two of one node at a time.
   */
  async check(name: string): Promise<void> {
    const local = this.#o.attached.get(name)
    if (!local || this.#stopped) return
    let record: VolumeRecord | undefined
    let online: Set<string>
    try {
      record = (await this.#o.kvdb.get<VolumeRecord>(keys.volume(name)))?.value
      online = new Set((await this.#o.membership.nodes()).filter((n) => n.online).map((n) => n.nodeId))
    } catch {
      return
    }
    if (!record || this.#o.attached.get(name) !== local || this.#stopped) return
    const running = this.#running.get(local) ?? new Set<string>()
    this.#running.set(local, running)
    const busy = new Set([...local.engine.resyncing, ...running])
    const retiring = new Set(record.retiring ?? [])
    for (const { nodeId } of record.replicas) {
      if (record.inSync.includes(nodeId) || busy.has(nodeId) || !online.has(nodeId) || retiring.has(nodeId)) continue
      const slot = this.#o.pace.slot()
      if (!slot) {
        this.#o.log.debug({ volume: name, replica: nodeId }, 'resync waits: every resync slot of this node is taken')
        return
      }
      // Busy from now on, before the first await of the resync: the next check skips it.
      running.add(nodeId)
      void this.#resync(name, local, nodeId).finally(() => {
        running.delete(nodeId)
        slot()
      })
    }
  }

  async #resync(name: string, local: ResyncableVolume, nodeId: string): Promise<void> {
    const log = this.#o.log.child({ volume: name, volumeId: local.volumeId, replica: nodeId, epoch: local.epoch })
    const key = keys.resync(name, nodeId)
    const startedAt = new Date().toISOString()
    // An unfinished earlier attempt at this replica: this one resumes it, and counts on.
    const before = await this.#previous(key, log)
    const resumed = before !== undefined && before.state !== 'done'
    const carried = resumed ? { copiedBefore: (before.copiedBefore ?? 0) + before.copiedBytes, attempt: (before.attempt ?? 1) + 1 } : { copiedBefore: 0, attempt: 1 }
    let lastPublished = 0
    let last: ResyncProgress = { nodeId, method: 'checksum-scan', totalBytes: local.size, scannedBytes: 0, copiedBytes: 0 }
    const publish = (p: ResyncProgress, state: ResyncRecord['state'], error?: string) =>
      this.#o.kvdb.put(key, { ...p, state, startedAt, updatedAt: new Date().toISOString(), epoch: local.epoch, coordinator: this.#o.nodeId, ...carried, ...(error ? { error } : {}) } satisfies ResyncRecord)
        .catch((err) => log.debug({ err }, 'could not publish resync progress'))
    try {
      const target = await this.#o.replicas.replica(nodeId, local.volumeId, local.size, local.epoch)
      log.info({ attempt: carried.attempt, copiedBefore: carried.copiedBefore }, resumed ? 'resync resumed: only what is still missing is copied' : 'resync started')
      const started = Date.now()
      const result = await local.engine.resync(target, () => this.#o.inSync.promote(name, local.epoch, nodeId), {
        pace: (bytes) => this.#o.pace.take(bytes),
        onProgress: (p) => {
          last = p
          if (Date.now() - lastPublished < RESYNC_PUBLISH_MS) return
          lastPublished = Date.now()
          void publish(p, 'running')
        },
      })
      await publish(result, 'done')
      log.info({ method: result.method, copiedBytes: result.copiedBytes, comparedBytes: result.scannedBytes, seconds: (Date.now() - started) / 1000 }, 'resync done: replica back in sync')
    } catch (err) {
      log.warn({ err, copiedBytes: last.copiedBytes }, 'resync did not finish; it resumes while the replica is online')
      await publish(last, 'failed', messageOf(err))
    }
  }

  /** The replica's last resync record; a read that fails is tried again before this attempt counts from 1. */
  async #previous(key: string, log: Logger): Promise<ResyncRecord | undefined> {
    for (let i = 1; ; i++) {
      try {
        return (await this.#o.kvdb.get<ResyncRecord>(key))?.value
      } catch (err) {
        if (i >= PREVIOUS_READ_TRIES) {
          log.warn({ err }, 'could not read the last resync record of this replica: this attempt counts as the first')
          return undefined
        }
        await new Promise((resolve) => setTimeout(resolve, 250 * i))
      }
    }
  }
}
