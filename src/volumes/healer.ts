/**
 * Self-healing, on every node, every HEAL_CHECK_MS:
 *   - nodes seen offline get an `offline/<node>` mark with the time (the first node to see it
 *     writes it; the node deletes its own when it starts), so that every node agrees on when a
 *     node was lost;
 *   - for each volume attached here (mounted or held for healing): replicas due for
 *     replacement (healing-plan.ts) get a new replica on another online node with room, placed
 *     as for create, and are marked retiring; retiring replicas are dropped once the others
 *     hold `repl` in-sync copies (from the record first, then from the engine, then on their
 *     node); out-of-sync replicas are resynced (resyncs.ts);
 *   - a volume attached nowhere that needs any of that is taken by its healer node (the first
 *     online node of its in-sync set) with a background claim (attachments.ts: a claim with
 *     purpose 'resync', its own epoch, that any mount takes over), healed, and let go once
 *     nothing is left to do. A node takes no such claim while its resync slots are all busy.
 * Each change of a record is a transaction that also checks the attachment, so a holder that
 * lost the volume changes nothing.
 */
import type { Logger } from 'pino'
import type { Membership, NodeInfo } from '../cluster/membership'
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import { CAS_RETRIES } from './in-sync'
import { dueForReplacement, healerOf, needingResync, needsHealing, readyToRetire, replacementDueAt, withoutReplicas, withReplacements, type ClusterView } from './healing-plan'
import type { ReplicaPlacement } from './placement'
import type { ResyncPace } from './resync-pace'
import type { AttachmentRecord, VolumeRecord } from './types'

export const HEAL_CHECK_MS = 2_000
/** The default --replace-after: ten minutes. */
export const DEFAULT_REPLACE_AFTER_MS = 10 * 60_000

/** What the healer needs of the volume manager. */
export interface HealerHost {
  /** The volume's attachment here: its epoch, and whether it is only held for healing. */
  attached(name: string): { epoch: number; background: boolean } | undefined
  /** The volumes held here for healing only. */
  healing(): string[]
  /** Close the engine of a volume held for healing that another node took over (or that is gone); no release. */
  dropHealing(name: string, epoch: number): Promise<void>
  /** Take the volume for healing (a background claim, no mount); false when that was not possible. */
  attachForHealing(name: string): Promise<boolean>
  /** Let go of a volume held for healing, unless it was mounted meanwhile or is still resyncing. */
  releaseHealing(name: string): Promise<void>
  /** Stop writing to these replicas of a volume attached here (they were dropped from its record). */
  retire(name: string, nodeIds: readonly string[]): Promise<void>
  resyncCheck(name: string): Promise<void>
  resyncRunning(name: string): boolean
}

export interface HealerOptions {
  nodeId: string
  kvdb: Kvdb
  membership: Pick<Membership, 'nodes'>
  placement: Pick<ReplicaPlacement, 'place' | 'create' | 'drop'>
  pace: Pick<ResyncPace, 'running' | 'concurrency'>
  /** 0: never replace. */
  replaceAfterMs: number
  host: HealerHost
  log: Logger
}

interface OfflineMark {
  since: string
}

export class Healer {
  readonly #o: HealerOptions
  #timer: NodeJS.Timeout | undefined
  #ticking: Promise<void> | undefined
  #stopped = false
  /** Replicas this node placed to replace lost, drained or moved ones. */
  replacements = 0

  constructor(o: HealerOptions) {
    this.#o = o
  }

  start(): void {
    this.#timer = setInterval(() => { this.#ticking ??= this.tick().finally(() => { this.#ticking = undefined }) }, HEAL_CHECK_MS)
    this.#timer.unref()
  }

  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearInterval(this.#timer)
    await this.#ticking
  }

  /** The cluster as healing sees it now. */
  async view(): Promise<ClusterView> {
    return (await this.read()).view
  }

  /** The same, with the membership it was made from (one read of each). */
  async read(): Promise<{ view: ClusterView; nodes: NodeInfo[] }> {
    const [nodes, marks, drains] = await Promise.all([
      this.#o.membership.nodes(),
      this.#o.kvdb.list<OfflineMark>(keys.offlineSinces()),
      this.#o.kvdb.list(keys.drainings()),
    ])
    const view: ClusterView = {
      online: new Set(nodes.filter((n) => n.online).map((n) => n.nodeId)),
      offlineSince: new Map(marks.map((m) => [m.key.slice(keys.offlineSinces().length), Date.parse(m.value.since)])),
      draining: new Set(drains.map((d) => d.key.slice(keys.drainings().length))),
      replaceAfterMs: this.#o.replaceAfterMs,
      now: Date.now(),
    }
    return { view, nodes }
  }

  /** One pass over the cluster; errors are logged, never thrown. */
  async tick(): Promise<void> {
    try {
      const { view, nodes } = await this.read()
      await this.#markOffline(view, nodes.map((n) => n.nodeId))
      await this.#dropTakenOver()
      for (const { value: record } of await this.#o.kvdb.list<VolumeRecord>(keys.volumes())) {
        if (this.#stopped) return
        // A snapshot is a layer of its volume's replicas: it has no replicas of its own to heal.
        if (record.snapshotOf) continue
        await this.#heal(record, view).catch((err) => this.#o.log.warn({ err, volume: record.name }, 'healing step failed; it is tried again'))
      }
    } catch (err) {
      this.#o.log.debug({ err }, 'healing pass skipped: the metadata store did not answer')
    }
  }

  /** Volumes held here for healing that a mount (or a remove) took from this node: close their engines. */
  async #dropTakenOver(): Promise<void> {
    for (const name of this.#o.host.healing()) {
      const local = this.#o.host.attached(name)
      if (!local) continue
      const [att, vol] = await Promise.all([this.#o.kvdb.get<AttachmentRecord>(keys.attachment(name)), this.#o.kvdb.get(keys.volume(name))])
      if (vol && att?.value.nodeId === this.#o.nodeId && att.value.epoch === local.epoch) continue
      await this.#o.host.dropHealing(name, local.epoch)
    }
  }

  async #markOffline(view: ClusterView, known: string[]): Promise<void> {
    for (const nodeId of known) {
      if (view.online.has(nodeId) && view.offlineSince.has(nodeId)) {
        // Back without a restart (its lease was lost and granted again).
        await this.#o.kvdb.delete(keys.offlineSince(nodeId))
        ;(view.offlineSince as Map<string, number>).delete(nodeId)
        this.#o.log.info({ node: nodeId }, 'node online again')
        continue
      }
      if (view.online.has(nodeId) || view.offlineSince.has(nodeId)) continue
      const since = new Date(view.now).toISOString()
      const made = await this.#o.kvdb.txn({ compares: [{ key: keys.offlineSince(nodeId), modRevision: 0 }], puts: [{ key: keys.offlineSince(nodeId), value: { since } satisfies OfflineMark }] })
      if (made) {
        ;(view.offlineSince as Map<string, number>).set(nodeId, view.now)
        const due = this.#o.replaceAfterMs > 0 ? `; its replicas are replaced from ${new Date(view.now + this.#o.replaceAfterMs).toISOString()} if it is not back` : ''
        this.#o.log.warn({ node: nodeId, since }, `node offline${due}`)
      }
    }
  }

  async #heal(record: VolumeRecord, view: ClusterView): Promise<void> {
    const name = record.name
    const att = (await this.#o.kvdb.get<AttachmentRecord>(keys.attachment(name)))?.value
    const local = this.#o.host.attached(name)
    if (local) {
      if (att?.nodeId !== this.#o.nodeId || att.epoch !== local.epoch) return
      // Resyncs' own timer looks at the volumes attached here; a change is acted on at once.
      const now = await this.#plan(name, local.epoch, record, view)
      if (now !== record) void this.#o.host.resyncCheck(name)
      if (local.background && !this.#o.host.resyncRunning(name) && !(await this.#actionable(now, view))) await this.#o.host.releaseHealing(name)
      return
    }
    // A holder whose lease expired may be cut from etcd only, still serving: it is taken from
    // only once it counts as lost (its replicas are due for replacement), as a mount would.
    if (att?.nodeId) {
      const due = replacementDueAt(att.nodeId, view)
      if (view.online.has(att.nodeId) || due === undefined || due > view.now) return
    }
    if (healerOf(record, view.online) !== this.#o.nodeId || !(await this.#actionable(record, view))) return
    if (this.#o.pace.running >= this.#o.pace.concurrency) return
    if (!(await this.#o.host.attachForHealing(name))) return
    const held = this.#o.host.attached(name)
    if (!held) return
    await this.#plan(name, held.epoch, record, view)
    void this.#o.host.resyncCheck(name)
  }

  /**
   * Whether there is healing that can be done now: a resync, a drop, or a replacement with an
   * online node that has room (a volume is not held, and its epoch not bumped, for nothing).
   */
  async #actionable(record: VolumeRecord, view: ClusterView): Promise<boolean> {
    if (!needsHealing(record, view)) return false
    if (needingResync(record, view.online).length > 0 || readyToRetire(record).length > 0) return true
    return (await this.#placeElsewhere(record, 1)).length > 0
  }

  /** `count` nodes for new replicas of the volume, none that holds one (placement skips draining nodes); [] when there is no room. */
  #placeElsewhere(record: VolumeRecord, count: number): Promise<string[]> {
    return this.#o.placement.place(count, record.spec.size, record.replicas.map((r) => r.nodeId)).catch(() => [])
  }

  /**
   * Replace what is due and drop what has been replaced, as the holder at `epoch`, starting
   * from `record` (each change re-reads it under compare-and-swap). Returns the record as it
   * left it: `record` itself when nothing changed.
   */
  async #plan(name: string, epoch: number, record: VolumeRecord, view: ClusterView): Promise<VolumeRecord> {
    const due = dueForReplacement(record, view)
    const replaced = due.length > 0 ? await this.#replace(name, epoch, record, due, view) : record
    return readyToRetire(replaced).length > 0 ? this.#retire(name, epoch, readyToRetire(replaced)) : replaced
  }

  async #replace(name: string, epoch: number, record: VolumeRecord, due: string[], view: ClusterView): Promise<VolumeRecord> {
    let placed: string[] = []
    for (let count = due.length; count > 0 && placed.length === 0; count--) placed = await this.#placeElsewhere(record, count)
    if (placed.length === 0) {
      this.#o.log.debug({ volume: name, due }, 'replicas are due for replacement but no other online node has room')
      return record
    }
    const replaced = due.slice(0, placed.length)
    const next = await this.#update(name, epoch, (r) => {
      if (r.replicas.some((p) => placed.includes(p.nodeId)) || replaced.some((n) => r.retiring?.includes(n))) throw pxdError('CONFLICT', `volume ${name}: its replicas changed; the replacement waits`)
      return withReplacements(r, placed, replaced, view.now)
    })
    const failed = await this.#o.placement.create(placed, next)
    if (failed.length > 0) this.#o.log.warn({ volume: name, failed }, 'a new replica could not be created yet; it is retried by its resync')
    this.replacements += placed.length
    for (const [i, nodeId] of placed.entries()) {
      const old = replaced[i]!
      const why = view.draining.has(old) ? 'its node is draining' : `its node has been offline since ${new Date(view.offlineSince.get(old) ?? view.now).toISOString()}`
      this.#o.log.info({ volume: name, volumeId: record.id, replica: old, by: nodeId }, `replica replaced (${why}): the new one is resynced, then the old one is dropped`)
    }
    return next
  }

  async #retire(name: string, epoch: number, gone: string[]): Promise<VolumeRecord> {
    // Decided again on the record the swap compares: never drop a copy the others no longer cover.
    const next = await this.#update(name, epoch, (r) => {
      const ready = readyToRetire(r).filter((n) => gone.includes(n))
      if (ready.length !== gone.length) throw pxdError('CONFLICT', `volume ${name}: its replicas changed; retiring ${gone.join(', ')} waits`)
      return withoutReplicas(r, gone)
    })
    await this.#o.host.retire(name, gone)
    await this.#o.placement.drop({ id: next.id, replicas: gone.map((nodeId) => ({ nodeId })) })
    for (const nodeId of gone) this.#o.log.info({ volume: name, volumeId: next.id, replica: nodeId, replicas: next.replicas.map((r) => r.nodeId) }, 'replica retired: its replacement is in sync')
    return next
  }

  /** Change the record, as long as this node holds the volume at `epoch`. */
  async #update(name: string, epoch: number, change: (r: VolumeRecord) => VolumeRecord): Promise<VolumeRecord> {
    for (let attempt = 0; attempt < CAS_RETRIES; attempt++) {
      const [vol, att] = await Promise.all([
        this.#o.kvdb.get<VolumeRecord>(keys.volume(name)),
        this.#o.kvdb.get<AttachmentRecord>(keys.attachment(name)),
      ])
      if (!vol) throw pxdError('NOT_FOUND', `volume ${name} not found`)
      if (!att || att.value.nodeId !== this.#o.nodeId || att.value.epoch !== epoch) throw pxdError('FENCED', `volume ${name} is no longer attached here at epoch ${epoch}`)
      const next = change(vol.value)
      const ok = await this.#o.kvdb.txn({
        compares: [{ key: vol.key, modRevision: vol.modRevision }, { key: att.key, modRevision: att.modRevision }],
        puts: [{ key: vol.key, value: next }],
      })
      if (ok) return next
    }
    throw pxdError('CONFLICT', `volume ${name}: its record changed too often to heal it now`)
  }
}
