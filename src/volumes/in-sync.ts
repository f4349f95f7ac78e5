/**
 * Changes to a volume's in-sync set. Each one is a transaction that also checks this node
 * still holds the attachment at the epoch it coordinates at, so a coordinator that lost
 * the volume cannot rewrite the set; a lost compare-and-swap is read again and retried.
 * A change that rejected with KVDB_UNAVAILABLE (a timeout) may have been applied all the
 * same: `inSyncOf` reads the set back, so that the caller acts on what the kvdb says.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { AttachmentRecord, VolumeRecord } from './types'

/** How often a read-then-swap of a volume's records is tried before it gives up with CONFLICT. */
export const CAS_RETRIES = 10

export interface InSyncOptions {
  nodeId: string
  kvdb: Kvdb
}

export class InSyncSet {
  readonly #nodeId: string
  readonly #kvdb: Kvdb

  constructor(o: InSyncOptions) {
    this.#nodeId = o.nodeId
    this.#kvdb = o.kvdb
  }

  /** The volume's in-sync set as the kvdb has it now. */
  async inSyncOf(name: string): Promise<string[]> {
    const vol = await this.#kvdb.get<VolumeRecord>(keys.volume(name))
    if (!vol) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return vol.value.inSync
  }

  /** Put a resynced replica back into the in-sync set. */
  promote(name: string, epoch: number, nodeId: string): Promise<void> {
    return this.change(name, epoch, (inSync, record) => {
      // Dropped from the record meanwhile (retired, or replication lowered): never listed again.
      if (!record.replicas.some((r) => r.nodeId === nodeId)) throw pxdError('CONFLICT', `volume ${name}: node ${nodeId} no longer holds one of its replicas`)
      return inSync.includes(nodeId) ? undefined : [...inSync, nodeId]
    })
  }

  /** Take failed replicas out of the in-sync set; never the last one. */
  async demote(name: string, epoch: number, failed: Array<{ nodeId: string; error: unknown }>, log: Logger): Promise<void> {
    const gone = new Set(failed.map((f) => f.nodeId))
    await this.change(name, epoch, (inSync) => {
      const left = inSync.filter((n) => !gone.has(n))
      if (left.length === 0) throw pxdError('IO_ERROR', `volume ${name}: every in-sync replica failed`)
      return left
    })
    for (const f of failed) log.warn({ replica: f.nodeId, err: f.error }, 'replica taken out of the in-sync set: volume degraded')
  }

  /** `change` returns the new set, or undefined when nothing needs to change. */
  async change(name: string, epoch: number, change: (inSync: string[], record: VolumeRecord) => string[] | undefined): Promise<void> {
    for (let attempt = 0; attempt < CAS_RETRIES; attempt++) {
      const [vol, att] = await Promise.all([
        this.#kvdb.get<VolumeRecord>(keys.volume(name)),
        this.#kvdb.get<AttachmentRecord>(keys.attachment(name)),
      ])
      if (!vol || !att || att.value.nodeId !== this.#nodeId || att.value.epoch !== epoch) {
        throw pxdError('FENCED', `volume ${name} is no longer attached here at epoch ${epoch}`)
      }
      const inSync = change(vol.value.inSync, vol.value)
      if (!inSync) return
      const next: VolumeRecord = { ...vol.value, inSync }
      // Since when it has been short of copies: kept while it is, gone once it is not.
      if (inSync.length < next.spec.repl) next.degradedSince ??= new Date().toISOString()
      else delete next.degradedSince
      const ok = await this.#kvdb.txn({
        compares: [{ key: vol.key, modRevision: vol.modRevision }, { key: att.key, modRevision: att.modRevision }],
        puts: [{ key: vol.key, value: next }],
      })
      if (ok) return
    }
    throw pxdError('CONFLICT', `volume ${name}: could not change its in-sync set (too many concurrent changes)`)
  }
}
