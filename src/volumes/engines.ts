/**
 * A volume's engine on this node, from claim to release. Attach claims the attachment
 * (bumping the epoch), opens the engine on the in-sync replicas at that epoch (local
 * first), which fences any older coordinator, and, when the last holder died, makes them
 * equal before anything reads them. On failure nothing stays claimed; the unclean mark
 * stays for the next attach. The engine's failed replicas are demoted at its epoch, and a
 * resync commit whose outcome is unknown is read back from the kvdb. An engine that
 * diverged (a write failed on some replicas and could not be recorded) is released unclean.
 */
import type { Logger } from 'pino'
import { BLOCK_SIZE } from '../constants'
import { VolumeEngine, type EngineEvents } from '../engine/volume-engine'
import { pxdError, type PxdError } from '../errors'
import type { ReplicaDirectory } from '../replicas/directory'
import { dirtyDirOf } from '../replicas/dirty-map'
import type { Replica } from '../replicas/replica'
import type { Attachments } from './attachments'
import type { InSyncSet } from './in-sync'
import type { VolumeRecord } from './types'

export interface EnginesOptions {
  nodeId: string
  /** The engine keeps the dirty maps of out-of-sync replicas under <dataDir>/dirty. */
  dataDir: string
  replicas: Pick<ReplicaDirectory, 'replica'>
  attachments: Pick<Attachments, 'claim' | 'unclaim' | 'markClean'> & {
    /** With `unclean`, the release keeps (or sets) the unclean mark. */
    release(name: string, epoch: number, options?: { unclean?: boolean }): Promise<void>
  }
  /** The volume's record as the kvdb has it now. */
  readRecord: (name: string) => Promise<VolumeRecord>
  inSync: Pick<InSyncSet, 'demote' | 'inSyncOf'>
  engineEvents: ((volumeName: string) => EngineEvents) | undefined
  /** The engine learnt another node attached the volume with a newer epoch. */
  onFenced: (name: string, engine: VolumeEngine, err: PxdError, log: Logger) => void
  log: Logger
}

/** How an engine's attachment is given back: unclean when its replicas may differ (the next attach reconciles them). */
export function releaseOptions(engine: VolumeEngine | undefined): { unclean: true } | undefined {
  return engine?.diverged ? { unclean: true } : undefined
}

export class VolumeEngines {
  readonly #o: EnginesOptions

  constructor(o: EnginesOptions) {
    this.#o = o
  }

  /**
   * Claim, then read the record: a demotion committed by the previous holder before the
   * claim fenced it is in what the engine opens on. A failed attach gives the attachment
   * back as the claim found it.
   */
  async attach(name: string, purpose?: 'resync'): Promise<{ engine: VolumeEngine; epoch: number; record: VolumeRecord }> {
    const claim = await this.#o.attachments.claim(name, purpose)
    const { epoch } = claim
    let engine: VolumeEngine | undefined
    let volumeId: string | undefined
    try {
      const record = await this.#o.readRecord(name)
      volumeId = record.id
      if (record.inSync.length === 0) throw pxdError('UNSATISFIABLE', `volume ${name} has no in-sync replica left`)
      engine = await this.#open(name, record, epoch)
      if (claim.unclean && record.snapshotOf) {
        // A snapshot is never written: its copies cannot differ.
        await this.#o.attachments.markClean(name, epoch)
      } else if (claim.unclean) {
        const copied = await engine.reconcile()
        await this.#o.attachments.markClean(name, epoch)
        this.#o.log.info({ volume: name, volumeId: record.id, copiedBytes: copied }, 'replicas reconciled after an unclean detach')
      }
      return { engine, epoch, record }
    } catch (err) {
      await engine?.close().catch((e) => this.#o.log.error({ err: e, volume: name, volumeId }, 'closing the volume engine failed'))
      await this.#o.attachments.unclaim(name, claim).catch((e) => this.#o.log.error({ err: e, volume: name, volumeId }, 'giving the attachment back failed'))
      throw err
    }
  }

  /**
   * Open the engine again at the epoch this node still holds (a live restart took the volume
   * over from the process before): no claim. After a crash of that process a write may have
   * reached some replicas only: they are made equal first.
   */
  async resume(name: string, record: VolumeRecord, epoch: number, clean: boolean): Promise<VolumeEngine> {
    const engine = await this.#open(name, record, epoch)
    if (clean || record.snapshotOf) return engine
    try {
      const copied = await engine.reconcile()
      this.#o.log.info({ volume: name, volumeId: record.id, copiedBytes: copied }, 'replicas reconciled after the previous pxd died')
      return engine
    } catch (err) {
      await engine.close().catch(() => undefined)
      throw err
    }
  }

  /** Close an engine that is not (or no longer) mounted and give the attachment back. Never throws. */
  async detach(name: string, volumeId: string, engine: VolumeEngine | undefined, epoch: number): Promise<void> {
    const log = this.#o.log
    await engine?.close().catch((err) => log.error({ err, volume: name, volumeId }, 'closing the volume engine failed'))
    await this.#o.attachments.release(name, epoch, releaseOptions(engine))
      .catch((err) => log.error({ err, volume: name, volumeId }, 'giving the attachment back failed'))
  }

  async #open(name: string, record: VolumeRecord, epoch: number): Promise<VolumeEngine> {
    const { nodeId: self, engineEvents } = this.#o
    const ordered = [...record.inSync].sort((a, b) => (a === self ? -1 : b === self ? 1 : 0))
    const replicas: Replica[] = []
    for (const nodeId of ordered) {
      replicas.push(await this.#o.replicas.replica(nodeId, record.id, record.spec.size, epoch))
    }
    const log = this.#o.log.child({ volume: name, volumeId: record.id, epoch })
    const engine: VolumeEngine = new VolumeEngine({
      volumeId: record.id,
      size: record.spec.size,
      replicas,
      epoch,
      dirtyDir: dirtyDirOf(this.#o.dataDir),
      outOfSync: record.replicas.map((r) => r.nodeId).filter((n) => !record.inSync.includes(n)),
      ...(engineEvents ? { events: engineEvents(name) } : {}),
      // block: the bad block when the replica named it, else the first of the range.
      onRepair: (replica, offset, length, err, badBlock) => {
        const where = { replica, block: badBlock ?? offset / BLOCK_SIZE, rangeBlock: offset / BLOCK_SIZE, blocks: length / BLOCK_SIZE }
        if (err) log.error({ ...where, err }, 'read repair failed: the replica keeps a bad block')
        else log.warn(where, 'read repair: checksum mismatch served from another replica and rewritten')
      },
      // A snapshot is never written, so a copy that could not be opened now is still right:
      // it stays listed (the engine serves from the others meanwhile).
      demote: record.snapshotOf ? async () => undefined : (failed) => this.#o.inSync.demote(name, epoch, failed, log),
      readInSync: () => this.#o.inSync.inSyncOf(name),
      onFenced: (err) => this.#o.onFenced(name, engine, err, log),
    })
    await engine.open()
    log.info({ inSync: engine.inSync }, 'volume engine open')
    return engine
  }
}
