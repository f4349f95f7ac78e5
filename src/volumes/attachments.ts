/**
 * Who holds each volume: its attachment record in the kvdb, changed only by
 * compare-and-swap. A claim bumps the epoch, so only one node holds a volume and every
 * older coordinator is fenced; a holder that is offline (its lease expired) loses the
 * volume to the claim, which marks it unclean until a reconcile clears the mark. Only the
 * holder at its epoch releases or clears the mark; a release keeps the mark.
 *
 * A background resync holds a volume with purpose 'resync'. It writes nothing the in-sync
 * replicas could disagree on (only the copies to the replica it resyncs), so a claim for a
 * mount takes the volume from it even while its node is online, without marking the volume
 * unclean; the resync is fenced by the newer epoch and the new holder continues it.
 */
import type { Logger } from 'pino'
import type { Membership } from '../cluster/membership'
import { pxdError } from '../errors'
import { keys, type Kvdb, type KvEntry } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import type { AttachmentRecord } from './types'

/** A release the kvdb refused is tried again this often, until it is recorded. */
export const RELEASE_RETRY_MS = 2_000

/** What a claim took: the new epoch, whether the volume needs a reconcile, what the record held before. */
export interface Claim {
  epoch: number
  unclean: boolean
  previous: AttachmentRecord | undefined
}

export interface AttachmentsOptions {
  nodeId: string
  kvdb: Kvdb
  membership: Pick<Membership, 'isOnline'>
  /** The volumes' locks: a release retried in the background runs under the volume's lock. */
  locks: KeyedMutex
  log: Logger
}

export class Attachments {
  readonly #o: AttachmentsOptions
  #stopped = false

  constructor(o: AttachmentsOptions) {
    this.#o = o
  }

  get(name: string): Promise<KvEntry<AttachmentRecord> | undefined> {
    return this.#o.kvdb.get<AttachmentRecord>(keys.attachment(name))
  }

  /** After a restart nothing is attached here any more: say so for every volume this node held, but those `kept` (a live restart took them over). */
  async markDetachedAfterRestart(kept: ReadonlySet<string> = new Set()): Promise<void> {
    for (const entry of await this.#o.kvdb.list<AttachmentRecord>(keys.attachments())) {
      if (entry.value.nodeId !== this.#o.nodeId || kept.has(entry.key.slice(keys.attachments().length))) continue
      const ok = await this.#o.kvdb.txn({
        compares: [{ key: entry.key, modRevision: entry.modRevision }],
        // A background resync wrote nothing the in-sync replicas could disagree on.
        puts: [{ key: entry.key, value: { nodeId: null, epoch: entry.value.epoch, ...(entry.value.purpose === 'resync' && !entry.value.unclean ? {} : { unclean: true }) } satisfies AttachmentRecord }],
      })
      if (ok) this.#o.log.info({ volume: entry.key.slice(keys.attachments().length) }, 'marked detached after restart')
    }
  }

  /** `purpose` 'resync': for a background resync, which yields to any mount (see above). */
  async claim(name: string, purpose?: 'resync'): Promise<Claim> {
    const key = keys.attachment(name)
    const current = await this.#o.kvdb.get<AttachmentRecord>(key)
    const holder = current?.value.nodeId
    const fromResync = current?.value.purpose === 'resync'
    if (holder && holder !== this.#o.nodeId) {
      if (purpose === 'resync' || !fromResync) {
        if (await this.#o.membership.isOnline(holder)) throw pxdError('IN_USE', `volume ${name} is attached on node ${holder}`)
        this.#o.log.warn({ volume: name, from: holder }, 'taking over a volume from an offline node')
      } else {
        this.#o.log.info({ volume: name, from: holder }, 'taking a volume over from a background resync; the resync continues here')
      }
    }
    const epoch = (current?.value.epoch ?? 0) + 1
    // Taking over from a holder that died keeps the volume marked unclean until reconciled;
    // a background resync's claim leaves the in-sync replicas as they were.
    const unclean = (Boolean(holder) && !fromResync) || current?.value.unclean === true
    const ok = await this.#o.kvdb.txn({
      compares: [{ key, modRevision: current?.modRevision ?? 0 }],
      puts: [{ key, value: { nodeId: this.#o.nodeId, epoch, ...(unclean ? { unclean } : {}), ...(purpose ? { purpose } : {}) } satisfies AttachmentRecord }],
    })
    if (!ok) throw pxdError('CONFLICT', `volume ${name} was attached concurrently; retry`)
    return { epoch, unclean, previous: current?.value }
  }

  /**
   * Undo a claim whose attach failed: the attachment goes back to what the claim found (a
   * retried mount that cannot open its replicas must not bump the epoch each time).
   * Nothing changes unless this node still holds it at the claim's epoch.
   */
  async unclaim(name: string, claim: Claim): Promise<void> {
    const key = keys.attachment(name)
    const current = await this.#o.kvdb.get<AttachmentRecord>(key)
    if (!current || current.value.nodeId !== this.#o.nodeId || current.value.epoch !== claim.epoch) return
    await this.#o.kvdb.txn({
      compares: [{ key, modRevision: current.modRevision }],
      ...(claim.previous ? { puts: [{ key, value: claim.previous }] } : { deletes: [key] }),
    })
  }

  /** Replicas were made equal after an unclean detach: clear the mark (only while still ours at `epoch`). */
  async markClean(name: string, epoch: number): Promise<void> {
    await this.#rewrite(name, epoch, (v) => ({ nodeId: v.nodeId, epoch, ...(v.purpose ? { purpose: v.purpose } : {}) }))
  }

  /**
   * A volume held here for a background resync is now mounted here: from now on it is an
   * ordinary attachment that no mount elsewhere may take (only while still ours at `epoch`).
   */
  async markMounted(name: string, epoch: number): Promise<void> {
    await this.#rewrite(name, epoch, (v) => ({ nodeId: v.nodeId, epoch, ...(v.unclean ? { unclean: true } : {}) }))
  }

  async #rewrite(name: string, epoch: number, next: (v: AttachmentRecord) => AttachmentRecord): Promise<void> {
    const key = keys.attachment(name)
    const current = await this.#o.kvdb.get<AttachmentRecord>(key)
    if (!current || current.value.nodeId !== this.#o.nodeId || current.value.epoch !== epoch) throw pxdError('FENCED', `volume ${name} is no longer attached here at epoch ${epoch}`)
    const ok = await this.#o.kvdb.txn({ compares: [{ key, modRevision: current.modRevision }], puts: [{ key, value: next(current.value) }] })
    if (!ok) throw pxdError('FENCED', `volume ${name} changed hands while attached here at epoch ${epoch}`)
  }

  /**
   * Give the attachment back; nothing changes unless this node holds it at `epoch`.
   * `unclean`: the replicas may differ (a write failed on some and was not acknowledged).
   */
  async release(name: string, epoch: number, options?: { unclean?: boolean }): Promise<void> {
    const key = keys.attachment(name)
    const current = await this.#o.kvdb.get<AttachmentRecord>(key)
    if (!current || current.value.nodeId !== this.#o.nodeId || current.value.epoch !== epoch) return
    // An unclean mark stays until a reconcile clears it, whatever happened in between.
    const unclean = current.value.unclean === true || options?.unclean === true
    await this.#o.kvdb.txn({
      compares: [{ key, modRevision: current.modRevision }],
      puts: [{ key, value: { nodeId: null, epoch, ...(unclean ? { unclean } : {}) } satisfies AttachmentRecord }],
    })
  }

  /** Release in the background, every RELEASE_RETRY_MS until the kvdb takes it (or until stop). */
  retryRelease(name: string, epoch: number, options?: { unclean?: boolean }): void {
    const timer = setTimeout(() => {
      if (this.#stopped) return
      void this.#o.locks.run(name, () => this.release(name, epoch, options)).then(
        () => this.#o.log.info({ volume: name }, 'detach recorded'),
        () => this.retryRelease(name, epoch, options),
      )
    }, RELEASE_RETRY_MS)
    timer.unref()
  }

  stop(): void {
    this.#stopped = true
  }
}
