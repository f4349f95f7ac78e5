/**
 * The volume manager: create, mount, unmount and remove volumes over the kvdb, for this
 * node. Every state change of a volume runs under that volume's mutex (one node's view;
 * across nodes the kvdb's compare-and-swap decides).
 *
 * Mount and unmount keep a reference count per volume (Docker sends a random ID per
 * mount; Mesos sends none and counts itself): the first mount attaches, the last unmount
 * detaches, and repeated or unknown IDs change nothing.
 *
 * Attach is a compare-and-swap on the volume's attachment that bumps its epoch; the
 * engine then opens every in-sync replica at that epoch, which fences any older
 * coordinator. A replica that fails is taken out of the in-sync set here, with a
 * transaction that also checks this node still holds the attachment.
 */
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import type { Membership, NodeInfo } from '../cluster/membership'
import type { Replica } from '../replicas/replica'
import type { ReplicaHost } from '../replicas/replica-host'
import type { ReplicaDirectory } from '../replicas/directory'
import { VolumeEngine, type EngineEvents, type ResyncProgress, type ScrubResult } from '../engine/volume-engine'
import { messageOf, pxdError, type PxdError } from '../errors'
import type { Frontend } from '../frontend/frontend'
import { keys, type Kvdb } from '../kvdb/kvdb'
import { capacityOf } from '../util/capacity'
import { KeyedMutex } from '../util/mutex'
import { buildSpec, flattenOptions, MAX_REPL, mergeOptions, parseVolumeRef, specConflicts } from './options'
import { placeReplicas } from './placement'
import type { AttachmentRecord, ReplicaInfo, ResyncRecord, VolumeInfo, VolumeRecord } from './types'

/** The mount ID used for a Mount without one (dvdcli, the Mesos isolator). */
const ANONYMOUS_MOUNT = ''
const CAS_RETRIES = 10
const RELEASE_RETRY_MS = 2_000
/** How often a coordinator looks for replicas that are back and out of sync. */
const RESYNC_CHECK_MS = 2_000
const RESYNC_PUBLISH_MS = 500

interface LocalAttachment {
  engine: VolumeEngine
  mountpoint: string
  mountIds: Set<string>
  epoch: number
  volumeId: string
  size: number
}

export interface ManagerOptions {
  nodeId: string
  dataDir: string
  kvdb: Kvdb
  frontend: Frontend
  host: ReplicaHost
  membership: Membership
  replicas: ReplicaDirectory
  log: Logger
  /** Per-volume event sink for metrics. */
  engineEvents?: (volumeName: string) => EngineEvents
  /** Background scrub of the volumes attached here: every this many seconds (0: never), at this rate. */
  scrubIntervalSeconds?: number
  scrubBytesPerSecond?: number
}

export class VolumeManager {
  readonly #nodeId: string
  readonly #dataDir: string
  readonly #kvdb: Kvdb
  readonly #frontend: Frontend
  readonly #host: ReplicaHost
  readonly #membership: Membership
  readonly #replicas: ReplicaDirectory
  readonly #log: Logger
  readonly #engineEvents: ManagerOptions['engineEvents']
  readonly #scrubEvery: number
  readonly #scrubRate: number
  #scrubTimer: NodeJS.Timeout | undefined
  readonly #scrubAbort = new AbortController()
  readonly #locks = new KeyedMutex()
  readonly #attached = new Map<string, LocalAttachment>()
  #stopping = false
  #resyncTimer: NodeJS.Timeout | undefined

  constructor(o: ManagerOptions) {
    this.#nodeId = o.nodeId
    this.#dataDir = o.dataDir
    this.#kvdb = o.kvdb
    this.#frontend = o.frontend
    this.#host = o.host
    this.#membership = o.membership
    this.#replicas = o.replicas
    this.#log = o.log
    this.#engineEvents = o.engineEvents
    this.#scrubEvery = o.scrubIntervalSeconds ?? 0
    this.#scrubRate = o.scrubBytesPerSecond ?? 50 * 1024 * 1024
  }

  /**
   * After a restart nothing is attached here any more: say so in the kvdb. Replicas on
   * disk whose volume is gone (removed while this node was away) are deleted.
   */
  async start(): Promise<void> {
    for (const entry of await this.#kvdb.list<AttachmentRecord>(keys.attachments())) {
      if (entry.value.nodeId !== this.#nodeId) continue
      const ok = await this.#kvdb.txn({
        compares: [{ key: entry.key, modRevision: entry.modRevision }],
        puts: [{ key: entry.key, value: { nodeId: null, epoch: entry.value.epoch, unclean: true } satisfies AttachmentRecord }],
      })
      if (ok) this.#log.info({ volume: entry.key.slice(keys.attachments().length) }, 'marked detached after restart')
    }
    this.#resyncTimer = setInterval(() => {
      for (const name of this.#attached.keys()) void this.#startResyncs(name)
    }, RESYNC_CHECK_MS)
    this.#resyncTimer.unref()
    if (this.#scrubEvery > 0) {
      this.#scrubTimer = setInterval(() => void this.#backgroundScrub(), this.#scrubEvery * 1000)
      this.#scrubTimer.unref()
    }
    const mine = new Set((await this.#records()).filter((r) => r.replicas.some((p) => p.nodeId === this.#nodeId)).map((r) => r.id))
    for (const id of await this.#host.list()) {
      if (mine.has(id)) continue
      this.#log.warn({ volumeId: id }, 'deleting a replica whose volume no longer exists')
      await this.#host.drop(id)
    }
  }

  /** Create a volume, or accept an existing one when nothing requested contradicts it. */
  async create(requestedName: string, opts?: unknown): Promise<VolumeInfo> {
    const ref = parseVolumeRef(requestedName)
    const options = mergeOptions(ref.inline, flattenOptions(opts))
    const spec = buildSpec(options)
    return this.#locks.run(ref.name, async () => {
      this.#checkRunning()
      const existing = await this.#kvdb.get<VolumeRecord>(keys.volume(ref.name))
      if (existing) {
        const conflicts = specConflicts(existing.value.spec, options)
        if (conflicts.length > 0) {
          throw pxdError('ALREADY_EXISTS', `volume ${ref.name} already exists with a different spec (${conflicts.join('; ')})`)
        }
        return this.#info(existing.value)
      }
      const [nodes, records] = await Promise.all([this.#membership.nodes(), this.#records()])
      const allocated = new Map<string, number>()
      for (const r of records) for (const p of r.replicas) allocated.set(p.nodeId, (allocated.get(p.nodeId) ?? 0) + r.spec.size)
      const placed = placeReplicas({ repl: spec.repl, size: spec.size, nodes, allocated })
      const record: VolumeRecord = {
        id: randomBytes(8).toString('hex'),
        name: ref.name,
        spec,
        createdAt: new Date().toISOString(),
        replicas: placed.map((nodeId) => ({ nodeId })),
        inSync: placed,
      }
      // The record goes first: a node creates a replica only for a volume that names it.
      const created = await this.#kvdb.txn({
        compares: [{ key: keys.volume(ref.name), modRevision: 0 }],
        puts: [{ key: keys.volume(ref.name), value: record }],
      })
      if (!created) throw pxdError('CONFLICT', `volume ${ref.name} was created concurrently; retry`)
      const results = await Promise.allSettled(placed.map((nodeId) => this.#createReplica(nodeId, record)))
      const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${placed[i]}: ${messageOf(r.reason)}`] : []))
      if (failed.length > 0) {
        await this.#kvdb.txn({ deletes: [keys.volume(ref.name)] }).catch(() => undefined)
        await this.#dropReplicas(record)
        throw pxdError('UNSATISFIABLE', `could not create the replicas of ${ref.name}: ${failed.join('; ')}`)
      }
      this.#log.info({ volume: ref.name, volumeId: record.id, spec, replicas: placed }, 'volume created')
      return this.#info(record)
    })
  }

  /**
   * Change the replication of a live volume. Raising places new replicas (empty) that the
   * coordinator then resyncs and adds to the in-sync set; lowering drops replicas, the ones
   * out of sync first and never the coordinator's own while another will do.
   */
  async haUpdate(requestedName: string, repl: number): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(requestedName)
    if (!Number.isInteger(repl) || repl < 1 || repl > MAX_REPL) throw pxdError('INVALID_ARGUMENT', `repl must be a whole number from 1 to ${MAX_REPL}`)
    return this.#locks.run(name, async () => {
      this.#checkRunning()
      const entry = await this.#requireRecord(name)
      const record = entry.value
      const current = record.replicas.map((r) => r.nodeId)
      if (repl === current.length && repl === record.spec.repl) return this.#info(record)
      let next: VolumeRecord
      let added: string[] = []
      let removed: string[] = []
      if (repl > current.length) {
        const [nodes, records] = await Promise.all([this.#membership.nodes(), this.#records()])
        const allocated = new Map<string, number>()
        for (const r of records) for (const p of r.replicas) allocated.set(p.nodeId, (allocated.get(p.nodeId) ?? 0) + r.spec.size)
        added = placeReplicas({ repl: repl - current.length, size: record.spec.size, nodes: nodes.filter((n) => !current.includes(n.nodeId)), allocated })
        next = { ...record, spec: { ...record.spec, repl }, replicas: [...record.replicas, ...added.map((nodeId) => ({ nodeId }))] }
      } else {
        const attachedOn = (await this.#kvdb.get<AttachmentRecord>(keys.attachment(name)))?.value.nodeId
        const order = [...current].sort((x, y) => dropRank(x, record, attachedOn) - dropRank(y, record, attachedOn))
        removed = order.slice(0, current.length - repl)
        const keep = current.filter((n) => !removed.includes(n))
        const inSync = record.inSync.filter((n) => keep.includes(n))
        if (inSync.length === 0) throw pxdError('UNSATISFIABLE', `lowering ${name} to repl=${repl} would leave no in-sync replica`)
        next = { ...record, spec: { ...record.spec, repl }, replicas: keep.map((nodeId) => ({ nodeId })), inSync }
      }
      const ok = await this.#kvdb.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: next }] })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed during ha-update; retry`)
      const created = await Promise.allSettled(added.map((nodeId) => this.#createReplica(nodeId, next)))
      const failed = created.flatMap((r, i) => (r.status === 'rejected' ? [`${added[i]}: ${messageOf(r.reason)}`] : []))
      if (failed.length > 0) this.#log.warn({ volume: name, volumeId: record.id, failed }, 'some new replicas could not be created yet; they stay out of sync')
      if (removed.length > 0) await this.#dropReplicas({ ...record, replicas: removed.map((nodeId) => ({ nodeId })) })
      this.#log.info({ volume: name, volumeId: record.id, repl, added, removed }, 'replication changed')
      if (this.#attached.has(name)) void this.#startResyncs(name)
      return this.#info(next)
    })
  }

  /**
   * Verify every written block of every in-sync replica and repair what another replica
   * has right. A volume attached here is scrubbed live; a detached one is attached for the
   * scrub (no mount); one attached on another node must be scrubbed there.
   */
  async scrub(requestedName: string): Promise<ScrubResult & { volume: string }> {
    const { name } = parseVolumeRef(requestedName)
    const local = this.#attached.get(name)
    if (local) return { volume: name, ...(await local.engine.scrub({ signal: this.#scrubAbort.signal })) }
    return this.#locks.run(name, async () => {
      this.#checkRunning()
      const { value: record } = await this.#requireRecord(name)
      const { engine, epoch } = await this.#attachEngine(name, record)
      try {
        const result = await engine.scrub({ signal: this.#scrubAbort.signal })
        this.#log.info({ volume: name, volumeId: record.id, ...result }, 'scrub done')
        return { volume: name, ...result }
      } finally {
        await this.#detachEngine(name, record.id, engine, epoch)
      }
    })
  }

  async #backgroundScrub(): Promise<void> {
    for (const [name, local] of [...this.#attached]) {
      try {
        const result = await local.engine.scrub({ bytesPerSecond: this.#scrubRate, signal: this.#scrubAbort.signal })
        this.#log.info({ volume: name, volumeId: local.volumeId, ...result }, 'background scrub done')
      } catch (err) {
        this.#log.warn({ err, volume: name, volumeId: local.volumeId }, 'background scrub stopped')
      }
    }
  }

  async remove(requestedName: string): Promise<void> {
    const { name } = parseVolumeRef(requestedName)
    await this.#locks.run(name, async () => {
      this.#checkRunning()
      const entry = await this.#requireRecord(name)
      if (this.#attached.has(name)) throw pxdError('IN_USE', `volume ${name} is mounted at ${this.#attached.get(name)!.mountpoint}; unmount it first`)
      const attachment = await this.#kvdb.get<AttachmentRecord>(keys.attachment(name))
      if (attachment?.value.nodeId) throw pxdError('IN_USE', `volume ${name} is attached on node ${attachment.value.nodeId}`)
      const ok = await this.#kvdb.txn({
        compares: [
          { key: keys.volume(name), modRevision: entry.modRevision },
          { key: keys.attachment(name), modRevision: attachment?.modRevision ?? 0 },
        ],
        deletes: [keys.volume(name), keys.attachment(name), keys.resync(name)],
      })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed while it was being removed; retry`)
      await this.#dropReplicas(entry.value)
      await this.#forgetDirtyMaps(entry.value.id)
      this.#log.info({ volume: name, volumeId: entry.value.id }, 'volume removed')
    })
  }

  async mount(requestedName: string, mountId: string | undefined): Promise<string> {
    const { name } = parseVolumeRef(requestedName)
    const id = mountId ?? ANONYMOUS_MOUNT
    return this.#locks.run(name, async () => {
      this.#checkRunning()
      const local = this.#attached.get(name)
      if (local) {
        local.mountIds.add(id)
        return local.mountpoint
      }
      const { value: record } = await this.#requireRecord(name)
      if (record.inSync.length === 0) throw pxdError('UNSATISFIABLE', `volume ${name} has no in-sync replica left`)
      const { engine, epoch } = await this.#attachEngine(name, record)
      try {
        const mountpoint = await this.#frontend.attach({
          id: record.id, name, fs: record.spec.fs, blockSize: record.spec.blockSize, device: engine,
          formatted: record.formatted === true,
          onFormatted: () => this.#markFormatted(name),
        })
        this.#attached.set(name, { engine, mountpoint, mountIds: new Set([id]), epoch, volumeId: record.id, size: record.spec.size })
        void this.#startResyncs(name)
        return mountpoint
      } catch (err) {
        await this.#detachEngine(name, record.id, engine, epoch)
        throw err
      }
    })
  }

  async unmount(requestedName: string, mountId: string | undefined): Promise<void> {
    const { name } = parseVolumeRef(requestedName)
    const id = mountId ?? ANONYMOUS_MOUNT
    await this.#locks.run(name, async () => {
      const local = this.#attached.get(name)
      if (!local || !local.mountIds.delete(id) || local.mountIds.size > 0) return
      await this.#detach(name, local, false)
    })
  }

  /** The mountpoint while mounted on this node, else null. Throws NOT_FOUND for unknown volumes. */
  async path(requestedName: string): Promise<string | null> {
    const { name } = parseVolumeRef(requestedName)
    await this.#requireRecord(name)
    return this.#attached.get(name)?.mountpoint ?? null
  }

  async inspect(requestedName: string): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(requestedName)
    return this.#info((await this.#requireRecord(name)).value)
  }

  async list(): Promise<VolumeInfo[]> {
    const [records, nodes] = await Promise.all([this.#records(), this.#membership.nodes()])
    return Promise.all(records.map((r) => this.#info(r, nodes)))
  }

  /** This node's data-dir file system. */
  capacity(): Promise<{ total: number; free: number }> {
    return capacityOf(this.#dataDir)
  }

  /** Every node of the cluster, online or not. */
  nodes(): Promise<NodeInfo[]> {
    return this.#membership.nodes()
  }

  /** Detach every volume (the daemon is stopping). New requests are refused from now on. */
  async stop(): Promise<void> {
    this.#stopping = true
    if (this.#resyncTimer) clearInterval(this.#resyncTimer)
    if (this.#scrubTimer) clearInterval(this.#scrubTimer)
    this.#scrubAbort.abort()
    for (const [name, local] of [...this.#attached]) {
      await this.#locks.run(name, () => this.#detach(name, local, true)).catch((err) => this.#log.error({ err, volume: name, volumeId: local.volumeId }, 'detach at shutdown failed'))
    }
  }

  /**
   * Claim the attachment (bumping the epoch), open the engine on the in-sync replicas and,
   * when the last holder died, make them equal before anything reads them. On failure
   * nothing stays claimed; the unclean mark stays for the next attach.
   */
  async #attachEngine(name: string, record: VolumeRecord): Promise<{ engine: VolumeEngine; epoch: number }> {
    const { epoch, unclean } = await this.#claim(name)
    let engine: VolumeEngine | undefined
    try {
      engine = await this.#openEngine(name, record, epoch)
      if (unclean) {
        const copied = await engine.reconcile()
        await this.#markClean(name, epoch)
        this.#log.info({ volume: name, volumeId: record.id, copiedBytes: copied }, 'replicas reconciled after an unclean detach')
      }
      return { engine, epoch }
    } catch (err) {
      await this.#detachEngine(name, record.id, engine, epoch)
      throw err
    }
  }

  /** Close an engine that is not (or no longer) mounted and give the attachment back. Never throws. */
  async #detachEngine(name: string, volumeId: string, engine: VolumeEngine | undefined, epoch: number): Promise<void> {
    await engine?.close().catch((err) => this.#log.error({ err, volume: name, volumeId }, 'closing the volume engine failed'))
    await this.#releaseAttachment(name, epoch).catch((err) => this.#log.error({ err, volume: name, volumeId }, 'giving the attachment back failed'))
  }

  async #openEngine(name: string, record: VolumeRecord, epoch: number): Promise<VolumeEngine> {
    const ordered = [...record.inSync].sort((a, b) => (a === this.#nodeId ? -1 : b === this.#nodeId ? 1 : 0))
    const replicas: Replica[] = []
    for (const nodeId of ordered) {
      replicas.push(await this.#replicas.replica(nodeId, record.id, record.spec.size, epoch))
    }
    const log = this.#log.child({ volume: name, volumeId: record.id, epoch })
    const engine: VolumeEngine = new VolumeEngine({
      volumeId: record.id,
      size: record.spec.size,
      replicas,
      epoch,
      dirtyDir: path.join(this.#dataDir, 'dirty'),
      outOfSync: record.replicas.map((r) => r.nodeId).filter((n) => !record.inSync.includes(n)),
      ...(this.#engineEvents ? { events: this.#engineEvents(name) } : {}),
      // block: the bad block when the replica named it, else the first of the range.
      onRepair: (replica, offset, length, err, badBlock) => {
        const where = { replica, block: badBlock ?? offset / 4096, rangeBlock: offset / 4096, blocks: length / 4096 }
        if (err) log.error({ ...where, err }, 'read repair failed: the replica keeps a bad block')
        else log.warn(where, 'read repair: checksum mismatch served from another replica and rewritten')
      },
      demote: (failed) => this.#demote(name, epoch, failed, log),
      onFenced: (err) => this.#fenced(name, engine, err, log),
    })
    await engine.open()
    log.info({ inSync: engine.inSync }, 'volume engine open')
    return engine
  }

  /**
   * Start resyncing every replica of an attached volume that is online but not in sync.
   * Progress goes to the kvdb (resync/<name>) so that inspect on any node shows it.
   */
  async #startResyncs(name: string): Promise<void> {
    const local = this.#attached.get(name)
    if (!local || this.#stopping) return
    let record: VolumeRecord | undefined
    let online: Set<string>
    try {
      record = (await this.#kvdb.get<VolumeRecord>(keys.volume(name)))?.value
      online = new Set((await this.#membership.nodes()).filter((n) => n.online).map((n) => n.nodeId))
    } catch {
      return
    }
    if (!record || this.#attached.get(name) !== local) return
    const busy = new Set(local.engine.resyncing)
    for (const { nodeId } of record.replicas) {
      if (record.inSync.includes(nodeId) || busy.has(nodeId) || !online.has(nodeId)) continue
      void this.#resync(name, local, nodeId)
    }
  }

  async #resync(name: string, local: LocalAttachment, nodeId: string): Promise<void> {
    const log = this.#log.child({ volume: name, volumeId: local.volumeId, replica: nodeId, epoch: local.epoch })
    const key = keys.resync(name)
    const startedAt = new Date().toISOString()
    let lastPublished = 0
    const publish = (p: ResyncProgress, state: 'running' | 'done' | 'failed', error?: string) =>
      this.#kvdb.put(key, { ...p, state, startedAt, updatedAt: new Date().toISOString(), epoch: local.epoch, ...(error ? { error } : {}) } satisfies ResyncRecord)
        .catch((err) => log.debug({ err }, 'could not publish resync progress'))
    try {
      const target = await this.#replicas.replica(nodeId, local.volumeId, local.size, local.epoch)
      log.info('resync started')
      const started = Date.now()
      const result = await local.engine.resync(target, () => this.#promote(name, local.epoch, nodeId), (p) => {
        if (Date.now() - lastPublished < RESYNC_PUBLISH_MS) return
        lastPublished = Date.now()
        void publish(p, 'running')
      })
      await publish(result, 'done')
      log.info({ method: result.method, copiedBytes: result.copiedBytes, comparedBytes: result.scannedBytes, seconds: (Date.now() - started) / 1000 }, 'resync done: replica back in sync')
    } catch (err) {
      log.warn({ err }, 'resync did not finish; it is retried while the replica is online')
      await publish({ nodeId, method: 'checksum-scan', totalBytes: local.size, scannedBytes: 0, copiedBytes: 0 }, 'failed', messageOf(err))
    }
  }

  /** Put a resynced replica back into the in-sync set, only while this node still holds the attachment at `epoch`. */
  #promote(name: string, epoch: number, nodeId: string): Promise<void> {
    return this.#changeInSync(name, epoch, (inSync) => (inSync.includes(nodeId) ? undefined : [...inSync, nodeId]))
  }

  async #markFormatted(name: string): Promise<void> {
    for (let attempt = 0; attempt < CAS_RETRIES; attempt++) {
      const vol = await this.#requireRecord(name)
      if (vol.value.formatted) return
      const ok = await this.#kvdb.txn({ compares: [{ key: vol.key, modRevision: vol.modRevision }], puts: [{ key: vol.key, value: { ...vol.value, formatted: true } satisfies VolumeRecord }] })
      if (ok) return
    }
    throw pxdError('CONFLICT', `volume ${name}: could not record that it was formatted`)
  }

  /** Take failed replicas out of the in-sync set, only while this node still holds the attachment at `epoch`. */
  async #demote(name: string, epoch: number, failed: Array<{ nodeId: string; error: unknown }>, log: Logger): Promise<void> {
    const gone = new Set(failed.map((f) => f.nodeId))
    await this.#changeInSync(name, epoch, (inSync) => {
      const left = inSync.filter((n) => !gone.has(n))
      if (left.length === 0) throw pxdError('IO_ERROR', `volume ${name}: every in-sync replica failed`)
      return left
    })
    for (const f of failed) log.warn({ replica: f.nodeId, err: f.error }, 'replica taken out of the in-sync set: volume degraded')
  }

  /**
   * Change a volume's in-sync set with a transaction that also checks this node still holds
   * the attachment at `epoch`: a coordinator that lost the volume cannot rewrite the set.
   * `change` returns the new set, or undefined when nothing needs to change.
   */
  async #changeInSync(name: string, epoch: number, change: (inSync: string[]) => string[] | undefined): Promise<void> {
    for (let attempt = 0; attempt < CAS_RETRIES; attempt++) {
      const [vol, att] = await Promise.all([
        this.#kvdb.get<VolumeRecord>(keys.volume(name)),
        this.#kvdb.get<AttachmentRecord>(keys.attachment(name)),
      ])
      if (!vol || !att || att.value.nodeId !== this.#nodeId || att.value.epoch !== epoch) {
        throw pxdError('FENCED', `volume ${name} is no longer attached here at epoch ${epoch}`)
      }
      const inSync = change(vol.value.inSync)
      if (!inSync) return
      const ok = await this.#kvdb.txn({
        compares: [{ key: vol.key, modRevision: vol.modRevision }, { key: att.key, modRevision: att.modRevision }],
        puts: [{ key: vol.key, value: { ...vol.value, inSync } satisfies VolumeRecord }],
      })
      if (ok) return
    }
    throw pxdError('CONFLICT', `volume ${name}: could not change its in-sync set (too many concurrent changes)`)
  }

  /** Another node attached the volume: tear down the local chain, and leave the attachment to its new holder. */
  #fenced(name: string, engine: VolumeEngine, err: PxdError, log: Logger): void {
    log.error({ err }, 'fenced: another node attached this volume with a newer epoch; tearing down the local mount')
    void this.#locks.run(name, async () => {
      const local = this.#attached.get(name)
      if (!local || local.engine !== engine) return
      this.#attached.delete(name)
      await this.#frontend.detach(name, true).catch((e) => log.error({ err: e }, 'teardown of a fenced volume failed'))
      await engine.close().catch(() => undefined)
    })
  }

  async #detach(name: string, local: LocalAttachment, lazy: boolean): Promise<void> {
    await this.#frontend.detach(name, lazy)
    this.#attached.delete(name)
    try {
      await local.engine.close()
    } finally {
      await this.#releaseAttachment(name, local.epoch).catch((err) => {
        // The volume is unmounted here whatever the kvdb says; record that once it is back.
        this.#log.warn({ err, volume: name, volumeId: local.volumeId }, 'could not record the detach now; retrying in the background')
        this.#retryRelease(name, local.epoch)
      })
    }
  }

  #retryRelease(name: string, epoch: number): void {
    const timer = setTimeout(() => {
      if (this.#stopping) return
      void this.#locks.run(name, () => this.#releaseAttachment(name, epoch)).then(
        () => this.#log.info({ volume: name }, 'detach recorded'),
        () => this.#retryRelease(name, epoch),
      )
    }, RELEASE_RETRY_MS)
    timer.unref()
  }

  async #createReplica(nodeId: string, record: VolumeRecord): Promise<void> {
    await this.#replicas.create(nodeId, record.id, record.spec.size)
  }

  async #forgetDirtyMaps(volumeId: string): Promise<void> {
    const dir = path.join(this.#dataDir, 'dirty')
    const names = await fs.readdir(dir).catch(() => [] as string[])
    await Promise.all(names.filter((n) => n.startsWith(`${volumeId}.`)).map((n) => fs.rm(path.join(dir, n), { force: true })))
  }

  /** Best effort: a node that is away deletes the replica itself when it starts. */
  async #dropReplicas(record: VolumeRecord): Promise<void> {
    await Promise.all(record.replicas.map(async ({ nodeId }) => {
      try {
        await this.#replicas.drop(nodeId, record.id)
      } catch (err) {
        this.#log.warn({ err, volumeId: record.id, replica: nodeId }, 'could not drop a replica now; its node will when it starts')
      }
    }))
  }

  /**
   * Attach is a compare-and-swap that bumps the epoch, so only one node holds a volume.
   * A holder that is offline (its lease expired) loses the volume to the new attach.
   */
  async #claim(name: string): Promise<{ epoch: number; unclean: boolean }> {
    const key = keys.attachment(name)
    const current = await this.#kvdb.get<AttachmentRecord>(key)
    const holder = current?.value.nodeId
    if (holder && holder !== this.#nodeId) {
      if (await this.#membership.isOnline(holder)) throw pxdError('IN_USE', `volume ${name} is attached on node ${holder}`)
      this.#log.warn({ volume: name, from: holder }, 'taking over a volume from an offline node')
    }
    const epoch = (current?.value.epoch ?? 0) + 1
    // Taking over from a holder that died keeps the volume marked unclean until reconciled.
    const unclean = Boolean(holder) || current?.value.unclean === true
    const ok = await this.#kvdb.txn({
      compares: [{ key, modRevision: current?.modRevision ?? 0 }],
      puts: [{ key, value: { nodeId: this.#nodeId, epoch, ...(unclean ? { unclean } : {}) } satisfies AttachmentRecord }],
    })
    if (!ok) throw pxdError('CONFLICT', `volume ${name} was attached concurrently; retry`)
    return { epoch, unclean }
  }

  /** Replicas were made equal after an unclean detach: clear the mark (only while still ours at `epoch`). */
  async #markClean(name: string, epoch: number): Promise<void> {
    const key = keys.attachment(name)
    const current = await this.#kvdb.get<AttachmentRecord>(key)
    if (!current || current.value.nodeId !== this.#nodeId || current.value.epoch !== epoch) throw pxdError('FENCED', `volume ${name} is no longer attached here at epoch ${epoch}`)
    await this.#kvdb.txn({ compares: [{ key, modRevision: current.modRevision }], puts: [{ key, value: { nodeId: this.#nodeId, epoch } satisfies AttachmentRecord }] })
  }

  async #releaseAttachment(name: string, epoch: number): Promise<void> {
    const key = keys.attachment(name)
    const current = await this.#kvdb.get<AttachmentRecord>(key)
    if (!current || current.value.nodeId !== this.#nodeId || current.value.epoch !== epoch) return
    // An unclean mark stays until a reconcile clears it, whatever happened in between.
    const unclean = current.value.unclean === true
    await this.#kvdb.txn({
      compares: [{ key, modRevision: current.modRevision }],
      puts: [{ key, value: { nodeId: null, epoch, ...(unclean ? { unclean } : {}) } satisfies AttachmentRecord }],
    })
  }

  async #records(): Promise<VolumeRecord[]> {
    return (await this.#kvdb.list<VolumeRecord>(keys.volumes())).map((e) => e.value)
  }

  async #requireRecord(name: string) {
    const entry = await this.#kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return entry
  }

  async #info(record: VolumeRecord, nodes?: NodeInfo[]): Promise<VolumeInfo> {
    const [attachment, known, resync] = await Promise.all([
      this.#kvdb.get<AttachmentRecord>(keys.attachment(record.name)),
      nodes ?? this.#membership.nodes(),
      this.#kvdb.get<ResyncRecord>(keys.resync(record.name)),
    ])
    const online = new Set(known.filter((n) => n.online).map((n) => n.nodeId))
    const local = this.#attached.get(record.name)
    const att = attachment?.value
    return {
      name: record.name,
      id: record.id,
      size: record.spec.size,
      repl: record.spec.repl,
      fs: record.spec.fs,
      blockSize: record.spec.blockSize,
      shared: record.spec.shared,
      options: record.spec.extra,
      state: att?.nodeId ? 'attached' : 'detached',
      degraded: record.inSync.length < record.spec.repl,
      attachedOn: att?.nodeId ?? null,
      epoch: att?.epoch ?? 0,
      mountpoint: local?.mountpoint ?? null,
      mounts: local?.mountIds.size ?? 0,
      replicas: record.replicas.map(({ nodeId }) => replicaInfo(nodeId, record, online.has(nodeId), resync?.value)),
      lastResync: resync?.value ?? null,
      createdAt: record.createdAt,
    }
  }

  #checkRunning(): void {
    if (this.#stopping) throw pxdError('DAEMON_STOPPING', 'pxd is shutting down')
  }
}

function replicaInfo(nodeId: string, record: VolumeRecord, online: boolean, resync: ResyncRecord | undefined): ReplicaInfo {
  const inSync = record.inSync.includes(nodeId)
  const base = { nodeId, inSync, online }
  if (inSync) return { ...base, state: 'in-sync' }
  if (!online) return { ...base, state: 'offline' }
  if (resync?.nodeId === nodeId && resync.state === 'running') {
    const elapsed = (Date.now() - Date.parse(resync.startedAt)) / 1000
    const rate = elapsed > 0 ? resync.scannedBytes / elapsed : 0
    const toGo = resync.totalBytes - resync.scannedBytes
    return {
      ...base,
      state: 'resyncing',
      resync: {
        percent: Math.floor((100 * resync.scannedBytes) / resync.totalBytes),
        bytesToGo: toGo,
        copiedBytes: resync.copiedBytes,
        etaSeconds: rate > 0 ? Math.ceil(toGo / rate) : null,
      },
    }
  }
  return { ...base, state: 'out-of-sync' }
}

/** Which replica to drop first: out of sync, then not the coordinator's, then by name. */
function dropRank(nodeId: string, record: VolumeRecord, attachedOn: string | null | undefined): number {
  if (!record.inSync.includes(nodeId)) return 0
  return nodeId === attachedOn ? 2 : 1
}
