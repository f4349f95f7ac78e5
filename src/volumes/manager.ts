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
 * resynced (resyncs.ts). Creation (creation.ts), placement, the scrub timer and the info
 * view have modules too; what shared volumes and the healer get of this manager is in
 * hosts.ts, a live restart's hand-over and resume (and the detach at a stop) in
 * live-restart.ts.
 *
 * Healing (healer.ts) may hold a volume here with no mount (mountpoint null) to resync or
 * replace its replicas; a mount here adopts that engine (the resync goes on), a mount on
 * another node takes the volume over (the engine here is fenced and the resync continues
 * there).
 */
import type { Logger } from 'pino'
import type { Membership } from '../cluster/membership'
import type { QuarantinedReplica, ReplicaHost } from '../replicas/replica-host'
import type { ReplicaDirectory } from '../replicas/directory'
import type { EngineEvents, ScrubResult } from '../engine/volume-engine'
import { pxdError } from '../errors'
import type { Frontend } from '../frontend/frontend'
import { keys, type Kvdb } from '../kvdb/kvdb'
import { capacityOf } from '../util/capacity'
import { KeyedMutex } from '../util/mutex'
import { Attachments } from './attachments'
import { InSyncSet } from './in-sync'
import { LocalVolumes, type LocalAttachment } from './local-volumes'
import { InfoView } from './info'
import { parseVolumeRef } from './options'
import { takeKeyOptions, type KeyOptions, type KeySources } from './keys'
import { VolumeCreation } from './creation'
import { VolumeRemoval } from './removal'
import { ReplicaPlacement } from './placement'
import { Resyncs } from './resyncs'
import { ResyncPace } from './resync-pace'
import { DEFAULT_REPLACE_AFTER_MS, Healer } from './healer'
import { ReplicaMoves } from './replica-moves'
import { VolumeResize } from './resize'
import { cleanUpLeftovers, sweepLeftovers } from './leftovers'
import { VolumeSnapshots } from './snapshots'
import { ScrubScheduler } from './scrub-scheduler'
import { healerHost, shareHost } from './hosts'
import { LiveRestart, type HandedVolume } from './live-restart'
import type { ClusterNodeInfo, VolumeInfo, VolumeRecord } from './types'
import { SharedVolumes } from '../shares/shared-volumes'
import type { LiveShare } from '../shares/share-handoff'
import type { HandedShare } from '../shares/share-restart'
import type { ShareRegistry } from '../shares/share-registry'
import type { ShareService } from '../shares/share-service'
import type { ShareExecutor } from '../shares/executor'
import type { LiveVolume } from '../restart/session-file'

/** The mount ID used for a Mount without one (dvdcli, the Mesos isolator). */
const ANONYMOUS_MOUNT = ''

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
  /** Resyncs coordinated here: bytes per second and how many at once. */
  resyncBytesPerSecond?: number
  resyncConcurrency?: number
  /** A replica whose node has been offline this long is replaced (0: never). */
  replaceAfterMs?: number
  /** Where secure volumes' key-encryption keys come from (cluster secret, --secrets-dir). */
  keySources?: KeySources
  /** After each mount and unmount (a live restart's session file follows them). */
  changed?: () => Promise<void>
}

export class VolumeManager {
  readonly #nodeId: string
  readonly #dataDir: string
  readonly #kvdb: Kvdb
  readonly #host: ReplicaHost
  readonly #log: Logger
  readonly #locks = new KeyedMutex()
  readonly #local: LocalVolumes
  readonly #attached: ReadonlyMap<string, LocalAttachment>
  readonly #attachments: Attachments
  readonly #resyncs: Resyncs
  readonly #scrubs: ScrubScheduler
  readonly #view: InfoView
  readonly #placement: ReplicaPlacement
  readonly #creation: VolumeCreation
  readonly #removal: VolumeRemoval
  readonly #shares: SharedVolumes
  readonly #healer: Healer
  readonly #restart: LiveRestart
  readonly moves: ReplicaMoves
  readonly resizes: VolumeResize
  readonly snapshots: VolumeSnapshots
  readonly #keySources: KeySources
  readonly #changed: (() => Promise<void>) | undefined
  #stopping = false
  #sweeper: NodeJS.Timeout | undefined

  constructor(o: ManagerOptions) {
    this.#nodeId = o.nodeId
    this.#dataDir = o.dataDir
    this.#kvdb = o.kvdb
    this.#host = o.host
    this.#log = o.log
    this.#keySources = o.keySources ?? {}
    this.#changed = o.changed
    this.#attachments = new Attachments({ nodeId: o.nodeId, kvdb: o.kvdb, membership: o.membership, locks: this.#locks, log: o.log })
    const inSync = new InSyncSet({ nodeId: o.nodeId, kvdb: o.kvdb })
    this.#local = new LocalVolumes({
      nodeId: o.nodeId, dataDir: o.dataDir, kvdb: o.kvdb, frontend: o.frontend, replicas: o.replicas, attachments: this.#attachments, inSync,
      locks: this.#locks, engineEvents: o.engineEvents, log: o.log,
      attached: (name) => void this.#resyncs.check(name),
      resyncRunning: (name) => this.#resyncs.running(name),
      fence: (name) => this.#shares.fence(name),
      fenced: (name) => this.#shares.fenced(name),
      stopping: () => this.#stopping,
      keySources: this.#keySources,
    })
    const attached = (this.#attached = this.#local.map)
    const pace = new ResyncPace(o.resyncBytesPerSecond, o.resyncConcurrency)
    this.#resyncs = new Resyncs({ nodeId: o.nodeId, kvdb: o.kvdb, membership: o.membership, replicas: o.replicas, inSync, attached, pace, log: o.log })
    this.#scrubs = new ScrubScheduler({ intervalSeconds: o.scrubIntervalSeconds, bytesPerSecond: o.scrubBytesPerSecond, attached, log: o.log })
    this.#placement = new ReplicaPlacement({ kvdb: o.kvdb, membership: o.membership, replicas: o.replicas, log: o.log })
    this.#shares = new SharedVolumes({
      nodeId: o.nodeId, registry: o.shares.registry, service: o.shares.service, executor: o.shares.executor, locks: this.#locks, log: o.shares.log,
      host: shareHost({
        local: this.#local, attachments: this.#attachments, membership: o.membership, replicas: o.replicas, frontend: o.frontend,
        requireRecord: (name) => this.#requireRecord(name),
      }),
    })
    this.#creation = new VolumeCreation({
      kvdb: o.kvdb, locks: this.#locks, placement: this.#placement, log: o.log, keySources: this.#keySources,
      info: (record) => this.#view.info(record),
      checkRunning: () => this.#checkRunning(),
      createAsSnapshot: (parent, name, options) => this.snapshots.createAsVolume(parent, name, options),
    })
    this.#view = new InfoView({ kvdb: o.kvdb, membership: o.membership, attached, shared: (name) => this.#shares.mounted(name), healing: () => this.#healer.read() })
    this.#healer = new Healer({
      nodeId: o.nodeId, kvdb: o.kvdb, membership: o.membership, placement: this.#placement, pace,
      replaceAfterMs: o.replaceAfterMs ?? DEFAULT_REPLACE_AFTER_MS, log: o.log,
      host: healerHost({ local: this.#local, shares: this.#shares, resyncs: this.#resyncs }),
    })
    const attachedOn = async (name: string) => (await this.#attachments.get(name))?.value.nodeId ?? null
    this.moves = new ReplicaMoves({
      nodeId: o.nodeId, kvdb: o.kvdb, membership: o.membership, placement: this.#placement, locks: this.#locks, log: o.log,
      attachedOn,
      changed: (name) => { if (this.#attached.has(name)) void this.#resyncs.check(name) },
      info: (record) => this.#view.info(record),
      checkRunning: () => this.#checkRunning(),
    })
    this.resizes = new VolumeResize({
      nodeId: o.nodeId, kvdb: o.kvdb, membership: o.membership, locks: this.#locks, log: o.log,
      attachedOn,
      growAttached: (name, record) => this.#local.grow(name, record),
      info: (record) => this.#view.info(record),
      checkRunning: () => this.#checkRunning(),
    })
    this.#removal = new VolumeRemoval({
      dataDir: o.dataDir, kvdb: o.kvdb, locks: this.#locks, attachments: this.#attachments, attached, local: this.#local, shares: this.#shares,
      snapshots: () => this.snapshots, placement: this.#placement, requireRecord: (name) => this.#requireRecord(name), checkRunning: () => this.#checkRunning(), log: o.log,
    })
    this.snapshots = new VolumeSnapshots({
      nodeId: o.nodeId, kvdb: o.kvdb, locks: this.#locks, attached, attachedOn, log: o.log,
      withEngine: (name, work) => this.#local.withEngine(name, work),
      dropLayers: (record) => this.#placement.drop(record),
      cloneReplica: (nodeId, volumeId, size, snapId) => o.replicas.clone(nodeId, volumeId, size, snapId),
      info: (record) => this.#view.info(record),
      checkRunning: () => this.#checkRunning(),
    })
    this.#restart = new LiveRestart({ kvdb: o.kvdb, locks: this.#locks, local: this.#local, shares: this.#shares, stopBackground: () => this.#stopBackground(), log: o.log })
  }

  /** Replicas placed here to replace lost, drained or moved ones (since start). */
  get replacements(): number {
    return this.#healer.replacements
  }

  /**
   * After a restart nothing is attached here any more but what a live restart took over
   * (`kept`, see resume): say so in the kvdb. Replicas on
   * disk the kvdb does not list are quarantined.
   */
  async start(kept: ReadonlySet<string> = new Set()): Promise<void> {
    await this.#attachments.markDetachedAfterRestart(kept)
    this.#resyncs.start()
    this.#scrubs.start()
    this.#shares.start()
    this.#healer.start()
    await cleanUpLeftovers(this.#nodeId, this.#host, await this.#records(), this.#log, { replicas: true, graceMs: process.uptime() * 1000 })
    this.#sweeper = sweepLeftovers(this.#nodeId, this.#host, () => this.#records(), this.#log)
  }

  /** Replicas set aside at start because the kvdb did not list them (this node's). */
  quarantined(): Promise<QuarantinedReplica[]> {
    return this.#host.listQuarantined()
  }

  /** Delete one quarantined replica of this node for good. */
  purgeQuarantined(name: string): Promise<void> {
    return this.#host.purgeQuarantined(name)
  }

  /** Create a volume, or accept an existing one when nothing requested contradicts it (creation.ts). */
  create(requestedName: string, opts?: unknown): Promise<VolumeInfo> {
    return this.#creation.create(requestedName, opts)
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
      const result = await this.#local.withEngine(name, (engine) => engine.scrub({ signal: this.#scrubs.signal }))
      this.#log.info({ volume: name, ...result }, 'scrub done')
      return { volume: name, ...result }
    })
  }

  /** Remove a volume nobody has mounted, with its replicas (removal.ts). */
  remove(requestedName: string): Promise<void> {
    return this.#removal.remove(requestedName)
  }

  /**
   * `requestedName` may carry the key of a secure volume inline (`name=v,passphrase=...`),
   * or `keyOptionsIn` may: a passphrase volume needs it at every mount.
   */
  async mount(requestedName: string, mountId: string | undefined, keyOptionsIn?: Record<string, string>): Promise<string> {
    const { name, inline } = parseVolumeRef(requestedName)
    const keyOptions = takeKeyOptions({ ...inline, ...keyOptionsIn })
    const id = mountId ?? ANONYMOUS_MOUNT
    return this.#locks.run(name, async () => {
      this.#checkRunning()
      if (this.#shares.has(name)) return this.#shares.mount(name, id, keyOptions)
      let local = this.#attached.get(name)
      // Held here for healing: a shared volume is let go (the share attaches it its own way);
      // any other is mounted on the engine it has, and its resync goes on.
      if (local?.mountpoint === null && (await this.#requireRecord(name)).value.spec.shared) {
        await this.#local.detach(name, local, false)
        local = undefined
      }
      if (local?.mountpoint === null && !(await this.#local.adopt(name, local, keyOptions))) local = undefined
      if (local) {
        local.mountIds.add(id)
        return local.mountpoint!
      }
      const { value: before } = await this.#requireRecord(name)
      if (before.inSync.length === 0) throw pxdError('UNSATISFIABLE', `volume ${name} has no in-sync replica left`)
      if (before.spec.shared) return this.#shares.mount(name, id, keyOptions)
      const { mountpoint } = await this.#local.attachHere(name, undefined, keyOptions)
      this.#attached.get(name)!.mountIds.add(id)
      return mountpoint
    }).finally(() => this.#changed?.())
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
      await this.#local.detach(name, local, false)
      local.mountIds.delete(id)
    }).finally(() => this.#changed?.())
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
    const [records, { nodes, view }] = await Promise.all([this.#records(), this.#healer.read()])
    return Promise.all(records.map((r) => this.#view.info(r, nodes, view, records)))
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
  async nodes(): Promise<ClusterNodeInfo[]> {
    const { nodes, view } = await this.#healer.read()
    return nodes.map((n) => {
      const since = view.offlineSince.get(n.nodeId)
      return { ...n, draining: view.draining.has(n.nodeId), ...(since !== undefined && !n.online ? { offlineSince: new Date(since).toISOString() } : {}) }
    })
  }

  /** Detach every volume (the daemon is stopping). New requests are refused from now on. */
  async stop(): Promise<void> {
    await this.#stopBackground()
    await this.#restart.detachAll(() => true)
  }

  /** A live restart, before start: take over the volumes the process before handed over; returns those it could not. */
  resume(volumes: LiveVolume[], clean: boolean, keys?: Record<string, KeyOptions>): Promise<LiveVolume[]> {
    return this.#local.resumeAll(volumes, clean, keys)
  }

  /** Stop for a live restart, the volumes handed over (live-restart.ts); `drain` waits until no request is in flight. */
  handOff(drain: () => Promise<void>): Promise<{ volumes: HandedVolume[]; shares: HandedShare[] }> {
    return this.#restart.handOff(drain)
  }

  /** A live restart, before start: the shared volumes handed over, or after a crash those `resumed` (live-restart.ts). */
  resumeShares(shares: readonly LiveShare[], fds: Map<string, number>, handedKeys: Record<string, KeyOptions>, resumed: readonly LiveVolume[]): Promise<void> {
    return this.#restart.resumeShares(shares, fds, handedKeys, resumed)
  }

  /** What a successor needs of each attached volume (live-restart.ts). */
  liveVolumes(): HandedVolume[] {
    return this.#restart.liveVolumes()
  }

  /** The passphrases of mounted volumes, for a successor only (never written to a disk). */
  liveKeys(): Record<string, KeyOptions> {
    return this.#restart.liveKeys()
  }

  async #stopBackground(): Promise<void> {
    this.#stopping = true
    clearInterval(this.#sweeper)
    this.#attachments.stop()
    this.#resyncs.stop()
    this.#scrubs.stop()
    await this.#healer.stop()
    await this.#shares.stop()
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
