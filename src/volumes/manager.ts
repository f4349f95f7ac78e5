/**
 * The volume manager: create, mount, unmount and remove volumes over the kvdb, for this
 * node. Every state change of a volume runs under that volume's mutex (one node's view;
 * across nodes the kvdb's compare-and-swap decides).
 *
 * Mount and unmount keep a reference count per volume (Docker sends a random ID per
 * mount; Mesos sends none and counts itself): the first mount attaches, the last unmount
 * detaches, and repeated or unknown IDs change nothing.
 *
 * Attach claims the volume's attachment, bumping its epoch (attachments.ts); the engine
 * then opens every in-sync replica at that epoch, which fences any older coordinator. A
 * replica that fails is taken out of the in-sync set (in-sync.ts); one that is back is
 * resynced (resyncs.ts). Placement, the scrub timer and the info view have modules too.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { Membership, NodeInfo } from '../cluster/membership'
import { DirtyMap, dirtyDirOf } from '../replicas/dirty-map'
import type { QuarantinedReplica, ReplicaHost } from '../replicas/replica-host'
import type { ReplicaDirectory } from '../replicas/directory'
import type { EngineEvents, ScrubResult, VolumeEngine } from '../engine/volume-engine'
import { pxdError, type PxdError } from '../errors'
import type { Frontend } from '../frontend/frontend'
import { keys, type Kvdb } from '../kvdb/kvdb'
import { capacityOf } from '../util/capacity'
import { KeyedMutex } from '../util/mutex'
import { Attachments } from './attachments'
import { releaseOptions, VolumeEngines } from './engines'
import { CAS_RETRIES, InSyncSet } from './in-sync'
import { InfoView } from './info'
import { buildSpec, flattenOptions, MAX_REPL, mergeOptions, parseVolumeRef, specConflicts } from './options'
import { ReplicaPlacement } from './placement'
import { Resyncs } from './resyncs'
import { ScrubScheduler } from './scrub-scheduler'
import type { VolumeInfo, VolumeRecord } from './types'
import { SharedVolumes } from '../shares/shared-volumes'
import type { ShareRegistry } from '../shares/share-registry'
import type { ShareService } from '../shares/share-service'
import type { ShareExecutor } from '../shares/executor'

/** The mount ID used for a Mount without one (dvdcli, the Mesos isolator). */
const ANONYMOUS_MOUNT = ''

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
  /** Shared volumes: who has them mounted, and the handler of other nodes' file operations. */
  shares: { registry: ShareRegistry; service: ShareService; executor: ShareExecutor; log: Logger }
}

export class VolumeManager {
  readonly #nodeId: string
  readonly #dataDir: string
  readonly #kvdb: Kvdb
  readonly #frontend: Frontend
  readonly #host: ReplicaHost
  readonly #membership: Membership
  readonly #log: Logger
  readonly #locks = new KeyedMutex()
  readonly #attached = new Map<string, LocalAttachment>()
  readonly #attachments: Attachments
  readonly #resyncs: Resyncs
  readonly #scrubs: ScrubScheduler
  readonly #view: InfoView
  readonly #engines: VolumeEngines
  readonly #placement: ReplicaPlacement
  readonly #shares: SharedVolumes
  #stopping = false

  constructor(o: ManagerOptions) {
    this.#nodeId = o.nodeId
    this.#dataDir = o.dataDir
    this.#kvdb = o.kvdb
    this.#frontend = o.frontend
    this.#host = o.host
    this.#membership = o.membership
    this.#log = o.log
    const attached = this.#attached
    this.#attachments = new Attachments({ nodeId: o.nodeId, kvdb: o.kvdb, membership: o.membership, locks: this.#locks, log: o.log })
    const inSync = new InSyncSet({ nodeId: o.nodeId, kvdb: o.kvdb })
    this.#resyncs = new Resyncs({ kvdb: o.kvdb, membership: o.membership, replicas: o.replicas, inSync, attached, log: o.log })
    this.#scrubs = new ScrubScheduler({ intervalSeconds: o.scrubIntervalSeconds, bytesPerSecond: o.scrubBytesPerSecond, attached, log: o.log })
    this.#placement = new ReplicaPlacement({ kvdb: o.kvdb, membership: o.membership, replicas: o.replicas, log: o.log })
    this.#shares = new SharedVolumes({
      nodeId: o.nodeId, registry: o.shares.registry, service: o.shares.service, executor: o.shares.executor, locks: this.#locks, log: o.shares.log,
      host: {
        attach: (name, mountpoint) => this.#attachHere(name, mountpoint),
        detach: async (name) => this.#attached.has(name) && this.#detach(name, this.#attached.get(name)!, false),
        holder: async (name) => {
          const att = (await this.#attachments.get(name))?.value
          return att?.nodeId ? { nodeId: att.nodeId, epoch: att.epoch } : null
        },
        isOnline: (nodeId) => o.membership.isOnline(nodeId),
        channel: (nodeId) => o.replicas.channel(nodeId),
        volumeId: async (name) => (await this.#requireRecord(name)).value.id,
        mountpointOf: (name) => o.frontend.mountpointOf(name),
        servedPathOf: (name) => o.frontend.servedPathOf(name),
      },
    })
    this.#view = new InfoView({ kvdb: o.kvdb, membership: o.membership, attached, shared: (name) => this.#shares.mounted(name) })
    this.#engines = new VolumeEngines({
      nodeId: o.nodeId, dataDir: o.dataDir, replicas: o.replicas, attachments: this.#attachments, inSync,
      readRecord: async (name) => (await this.#requireRecord(name)).value,
      engineEvents: o.engineEvents, onFenced: (name, engine, err, log) => this.#fenced(name, engine, err, log), log: o.log,
    })
  }

  /**
   * After a restart nothing is attached here any more: say so in the kvdb. Replicas on
   * disk the kvdb does not list are quarantined.
   */
  async start(): Promise<void> {
    await this.#attachments.markDetachedAfterRestart()
    this.#resyncs.start()
    this.#scrubs.start()
    this.#shares.start()
    const mine = new Set((await this.#records()).filter((r) => r.replicas.some((p) => p.nodeId === this.#nodeId)).map((r) => r.id))
    // A replica the kvdb does not list is kept aside, never deleted: a wrong --cluster-id,
    // an empty or restored etcd or a lost embedded store must not wipe the node.
    for (const id of await this.#host.list()) {
      if (mine.has(id)) continue
      await this.#host.quarantine(id, 'the metadata store lists no volume with a replica of this id on this node')
    }
  }

  /** Replicas set aside at start because the kvdb did not list them (this node's). */
  quarantined(): Promise<QuarantinedReplica[]> {
    return this.#host.listQuarantined()
  }

  /** Delete one quarantined replica of this node for good. */
  purgeQuarantined(name: string): Promise<void> {
    return this.#host.purgeQuarantined(name)
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
        return this.#view.info(existing.value)
      }
      const placed = await this.#placement.place(spec.repl, spec.size)
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
      const failed = await this.#placement.create(placed, record)
      if (failed.length > 0) {
        await this.#kvdb.txn({ deletes: [keys.volume(ref.name)] }).catch(() => undefined)
        await this.#placement.drop(record)
        throw pxdError('UNSATISFIABLE', `could not create the replicas of ${ref.name}: ${failed.join('; ')}`)
      }
      this.#log.info({ volume: ref.name, volumeId: record.id, spec, replicas: placed }, 'volume created')
      return this.#view.info(record)
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
      if (repl === record.replicas.length && repl === record.spec.repl) return this.#view.info(record)
      const attachedOn = (await this.#attachments.get(name))?.value.nodeId
      const { next, added, removed } = await this.#placement.replan(record, repl, attachedOn)
      const ok = await this.#kvdb.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: next }] })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed during ha-update; retry`)
      const failed = await this.#placement.create(added, next)
      if (failed.length > 0) this.#log.warn({ volume: name, volumeId: record.id, failed }, 'some new replicas could not be created yet; they stay out of sync')
      if (removed.length > 0) await this.#placement.drop({ ...record, replicas: removed.map((nodeId) => ({ nodeId })) })
      this.#log.info({ volume: name, volumeId: record.id, repl, added, removed }, 'replication changed')
      if (this.#attached.has(name)) void this.#resyncs.check(name)
      return this.#view.info(next)
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
    if (local) return { volume: name, ...(await local.engine.scrub({ signal: this.#scrubs.signal })) }
    return this.#locks.run(name, async () => {
      this.#checkRunning()
      await this.#requireRecord(name)
      const { engine, epoch, record } = await this.#engines.attach(name)
      try {
        const result = await engine.scrub({ signal: this.#scrubs.signal })
        this.#log.info({ volume: name, volumeId: record.id, ...result }, 'scrub done')
        return { volume: name, ...result }
      } finally {
        await this.#engines.detach(name, record.id, engine, epoch)
      }
    })
  }

  async remove(requestedName: string): Promise<void> {
    const { name } = parseVolumeRef(requestedName)
    await this.#locks.run(name, async () => {
      this.#checkRunning()
      const entry = await this.#requireRecord(name)
      // A shared volume served here for others is refused for them, naming them.
      if (entry.value.spec.shared) await this.#shares.checkUnmounted(name)
      if (this.#attached.has(name) || this.#shares.has(name)) throw pxdError('IN_USE', `volume ${name} is mounted on this node; unmount it first`)
      const attachment = await this.#attachments.get(name)
      if (attachment?.value.nodeId) throw pxdError('IN_USE', `volume ${name} is attached on node ${attachment.value.nodeId}`)
      const ok = await this.#kvdb.txn({
        compares: [
          { key: keys.volume(name), modRevision: entry.modRevision },
          { key: keys.attachment(name), modRevision: attachment?.modRevision ?? 0 },
        ],
        deletes: [keys.volume(name), keys.attachment(name), keys.resync(name)],
      })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed while it was being removed; retry`)
      await this.#placement.drop(entry.value)
      await DirtyMap.forgetVolume(dirtyDirOf(this.#dataDir), entry.value.id)
      this.#log.info({ volume: name, volumeId: entry.value.id }, 'volume removed')
    })
  }

  async mount(requestedName: string, mountId: string | undefined): Promise<string> {
    const { name } = parseVolumeRef(requestedName)
    const id = mountId ?? ANONYMOUS_MOUNT
    return this.#locks.run(name, async () => {
      this.#checkRunning()
      if (this.#shares.has(name)) return this.#shares.mount(name, id)
      const local = this.#attached.get(name)
      if (local) {
        local.mountIds.add(id)
        return local.mountpoint
      }
      const { value: before } = await this.#requireRecord(name)
      if (before.inSync.length === 0) throw pxdError('UNSATISFIABLE', `volume ${name} has no in-sync replica left`)
      if (before.spec.shared) return this.#shares.mount(name, id)
      const { mountpoint } = await this.#attachHere(name)
      this.#attached.get(name)!.mountIds.add(id)
      return mountpoint
    })
  }

  /**
   * Claim, open the replicas, build the chain; the attachment starts with no mount IDs.
   * `mountpoint`: where the file system goes, when not at the volume's mountpoint.
   */
  async #attachHere(name: string, at?: string): Promise<{ mountpoint: string; volumeId: string; epoch: number }> {
    const { engine, epoch, record } = await this.#engines.attach(name)
    try {
      const mountpoint = await this.#frontend.attach({
        id: record.id, name, fs: record.spec.fs, blockSize: record.spec.blockSize, device: engine,
        formatted: record.formatted === true,
        onFormatted: () => this.#markFormatted(name),
        ...(at ? { mountpoint: at } : {}),
      })
      this.#attached.set(name, { engine, mountpoint, mountIds: new Set(), epoch, volumeId: record.id, size: record.spec.size })
      void this.#resyncs.check(name)
      return { mountpoint, volumeId: record.id, epoch }
    } catch (err) {
      await this.#engines.detach(name, record.id, engine, epoch)
      throw err
    }
  }

  async unmount(requestedName: string, mountId: string | undefined): Promise<void> {
    const { name } = parseVolumeRef(requestedName)
    const id = mountId ?? ANONYMOUS_MOUNT
    await this.#locks.run(name, async () => {
      if (this.#shares.has(name)) return this.#shares.unmount(name, id)
      const local = this.#attached.get(name)
      if (!local || !local.mountIds.has(id)) return
      if (local.mountIds.size > 1) {
        local.mountIds.delete(id)
        return
      }
      // The ID goes only once the detach succeeded: after EBUSY, Docker's retry detaches.
      await this.#detach(name, local, false)
      local.mountIds.delete(id)
    })
  }

  /** The mountpoint while mounted on this node, else null. Throws NOT_FOUND for unknown volumes. */
  async path(requestedName: string): Promise<string | null> {
    const { name } = parseVolumeRef(requestedName)
    await this.#requireRecord(name)
    if (this.#shares.has(name)) return this.#shares.path(name)
    return this.#attached.get(name)?.mountpoint ?? null
  }

  async inspect(requestedName: string): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(requestedName)
    return this.#view.info((await this.#requireRecord(name)).value)
  }

  async list(): Promise<VolumeInfo[]> {
    const [records, nodes] = await Promise.all([this.#records(), this.#membership.nodes()])
    return Promise.all(records.map((r) => this.#view.info(r, nodes)))
  }

  /** What each client node sent to the shared volumes this node serves, for /metrics. */
  shareClients(): Array<{ volume: string; client: string; ops: number; bytes: number }> {
    return this.#shares.exports().flatMap((e) => [...e.counters].map(([client, c]) => ({ volume: e.name, client, ops: c.ops, bytes: c.bytes })))
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
    this.#attachments.stop()
    this.#resyncs.stop()
    this.#scrubs.stop()
    await this.#shares.stop()
    for (const [name, local] of [...this.#attached]) {
      await this.#locks.run(name, () => this.#detach(name, local, true)).catch((err) => this.#log.error({ err, volume: name, volumeId: local.volumeId }, 'detach at shutdown failed'))
    }
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

  /** Another node attached the volume: tear down the local chain, and leave the attachment to its new holder. */
  #fenced(name: string, engine: VolumeEngine, err: PxdError, log: Logger): void {
    log.error({ err }, 'fenced: another node attached this volume with a newer epoch; tearing down the local mount')
    this.#shares.fence(name)
    void this.#locks.run(name, async () => {
      const local = this.#attached.get(name)
      if (!local || local.engine !== engine) return
      this.#attached.delete(name)
      await this.#shares.fenced(name)
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
      const opts = releaseOptions(local.engine)
      await this.#attachments.release(name, local.epoch, opts).catch((err) => {
        // The volume is unmounted here whatever the kvdb says; record that once it is back.
        this.#log.warn({ err, volume: name, volumeId: local.volumeId }, 'could not record the detach now; retrying in the background')
        this.#attachments.retryRelease(name, local.epoch, opts)
      })
    }
  }

  async #records(): Promise<VolumeRecord[]> {
    return (await this.#kvdb.list<VolumeRecord>(keys.volumes())).map((e) => e.value)
  }

  async #requireRecord(name: string) {
    const entry = await this.#kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return entry
  }

  #checkRunning(): void {
    if (this.#stopping) throw pxdError('DAEMON_STOPPING', 'pxd is shutting down')
  }
}
