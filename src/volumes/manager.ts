/**
 * The volume manager: create, mount, unmount and remove volumes over the kvdb. Every
 * state change of a volume runs under that volume's mutex. Mount and unmount keep a
 * reference count per volume (Docker sends a random ID per mount; Mesos sends none and
 * counts itself): the first mount attaches, the last unmount detaches, and repeated or
 * unknown IDs change nothing.
 */
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import { VolumeEngine } from '../engine/volume-engine'
import { LocalReplica } from '../engine/replica'
import type { Frontend } from '../frontend/frontend'
import { keys, type Kvdb } from '../kvdb/kvdb'
import { pxdError } from '../errors'
import { ReplicaStore } from '../store/replica-store'
import { KeyedMutex } from '../util/mutex'
import { formatSize } from '../util/size'
import { buildSpec, flattenOptions, mergeOptions, parseVolumeRef, specConflicts } from './options'
import type { AttachmentRecord, VolumeInfo, VolumeRecord } from './types'

/** The mount ID used for a Mount without one (dvdcli, the Mesos isolator). */
const ANONYMOUS_MOUNT = ''

interface LocalAttachment {
  engine: VolumeEngine
  mountpoint: string
  mountIds: Set<string>
}

export interface ManagerOptions {
  nodeId: string
  dataDir: string
  kvdb: Kvdb
  frontend: Frontend
  log: Logger
}

export class VolumeManager {
  readonly #nodeId: string
  readonly #dataDir: string
  readonly #kvdb: Kvdb
  readonly #frontend: Frontend
  readonly #log: Logger
  readonly #locks = new KeyedMutex()
  readonly #attached = new Map<string, LocalAttachment>()
  #stopping = false

  constructor(options: ManagerOptions) {
    this.#nodeId = options.nodeId
    this.#dataDir = options.dataDir
    this.#kvdb = options.kvdb
    this.#frontend = options.frontend
    this.#log = options.log
  }

  /** After a restart nothing is attached here any more: say so in the kvdb. */
  async start(): Promise<void> {
    for (const entry of await this.#kvdb.list<AttachmentRecord>(keys.attachments())) {
      if (entry.value.nodeId !== this.#nodeId) continue
      const ok = await this.#kvdb.txn({
        compares: [{ key: entry.key, modRevision: entry.modRevision }],
        puts: [{ key: entry.key, value: { nodeId: null, epoch: entry.value.epoch } satisfies AttachmentRecord }],
      })
      if (ok) this.#log.info({ volume: entry.key.slice(keys.attachments().length) }, 'marked detached after restart')
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
      if (spec.repl > 1) {
        throw pxdError('UNSATISFIABLE', `repl=${spec.repl} needs ${spec.repl} nodes, but this is a single-node pxd (1 node online); use repl=1 or join more nodes with --kvdb etcd://...`)
      }
      const free = await this.freeBytes()
      if (spec.size > free) {
        throw pxdError('NO_SPACE', `size ${formatSize(spec.size)} is more than the ${formatSize(free)} free in ${this.#dataDir}`)
      }
      const record: VolumeRecord = {
        id: randomBytes(8).toString('hex'),
        name: ref.name,
        spec,
        createdAt: new Date().toISOString(),
        replicas: [{ nodeId: this.#nodeId }],
      }
      const store = await ReplicaStore.create(this.#replicaDir(record.id), record.id, spec.size)
      await store.close()
      const created = await this.#kvdb.txn({
        compares: [{ key: keys.volume(ref.name), modRevision: 0 }],
        puts: [{ key: keys.volume(ref.name), value: record }],
      })
      if (!created) {
        await ReplicaStore.destroy(this.#replicaDir(record.id))
        throw pxdError('CONFLICT', `volume ${ref.name} was created concurrently; retry`)
      }
      this.#log.info({ volume: ref.name, id: record.id, spec }, 'volume created')
      return this.#info(record)
    })
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
        compares: [{ key: keys.volume(name), modRevision: entry.modRevision }],
        deletes: [keys.volume(name), keys.attachment(name)],
      })
      if (!ok) throw pxdError('CONFLICT', `volume ${name} changed while it was being removed; retry`)
      await ReplicaStore.destroy(this.#replicaDir(entry.value.id))
      this.#log.info({ volume: name, id: entry.value.id }, 'volume removed')
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
      const epoch = await this.#claimAttachment(name)
      const store = await ReplicaStore.open(this.#replicaDir(record.id))
      let engine: VolumeEngine | undefined
      try {
        await store.setEpoch(epoch)
        engine = new VolumeEngine({ volumeId: record.id, size: record.spec.size, replicas: [new LocalReplica(this.#nodeId, store)] })
        const mountpoint = await this.#frontend.attach({ id: record.id, name, fs: record.spec.fs, blockSize: record.spec.blockSize, device: engine })
        this.#attached.set(name, { engine, mountpoint, mountIds: new Set([id]) })
        return mountpoint
      } catch (err) {
        await (engine ? engine.close() : store.close()).catch((e) => this.#log.error({ err: e, volume: name }, 'close after failed attach'))
        await this.#releaseAttachment(name).catch((e) => this.#log.error({ err: e, volume: name }, 'release after failed attach'))
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
    const entries = await this.#kvdb.list<VolumeRecord>(keys.volumes())
    return Promise.all(entries.map((e) => this.#info(e.value)))
  }

  /** Bytes free for new volumes in the data dir's file system. */
  async freeBytes(): Promise<number> {
    const s = await fs.statfs(this.#dataDir)
    return s.bavail * s.bsize
  }

  async capacity(): Promise<{ total: number; free: number }> {
    const s = await fs.statfs(this.#dataDir)
    return { total: s.blocks * s.bsize, free: s.bavail * s.bsize }
  }

  get attachedCount(): number {
    return this.#attached.size
  }

  /** Detach every volume (the daemon is stopping). New requests are refused from now on. */
  async stop(): Promise<void> {
    this.#stopping = true
    for (const [name, local] of [...this.#attached]) {
      await this.#locks.run(name, () => this.#detach(name, local, true)).catch((err) => this.#log.error({ err, volume: name }, 'detach at shutdown failed'))
    }
  }

  async #detach(name: string, local: LocalAttachment, lazy: boolean): Promise<void> {
    await this.#frontend.detach(name, lazy)
    this.#attached.delete(name)
    await local.engine.close()
    await this.#releaseAttachment(name)
  }

  /** Attach is a compare-and-swap that bumps the epoch, so only one node holds a volume. */
  async #claimAttachment(name: string): Promise<number> {
    const key = keys.attachment(name)
    const current = await this.#kvdb.get<AttachmentRecord>(key)
    if (current?.value.nodeId && current.value.nodeId !== this.#nodeId) {
      throw pxdError('IN_USE', `volume ${name} is attached on node ${current.value.nodeId}`)
    }
    const epoch = (current?.value.epoch ?? 0) + 1
    const ok = await this.#kvdb.txn({
      compares: [{ key, modRevision: current?.modRevision ?? 0 }],
      puts: [{ key, value: { nodeId: this.#nodeId, epoch } satisfies AttachmentRecord }],
    })
    if (!ok) throw pxdError('CONFLICT', `volume ${name} was attached concurrently; retry`)
    return epoch
  }

  async #releaseAttachment(name: string): Promise<void> {
    const key = keys.attachment(name)
    const current = await this.#kvdb.get<AttachmentRecord>(key)
    if (!current || current.value.nodeId !== this.#nodeId) return
    await this.#kvdb.txn({
      compares: [{ key, modRevision: current.modRevision }],
      puts: [{ key, value: { nodeId: null, epoch: current.value.epoch } satisfies AttachmentRecord }],
    })
  }

  async #requireRecord(name: string) {
    const entry = await this.#kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return entry
  }

  async #info(record: VolumeRecord): Promise<VolumeInfo> {
    const attachment = (await this.#kvdb.get<AttachmentRecord>(keys.attachment(record.name)))?.value
    const local = this.#attached.get(record.name)
    return {
      name: record.name,
      id: record.id,
      size: record.spec.size,
      repl: record.spec.repl,
      fs: record.spec.fs,
      blockSize: record.spec.blockSize,
      shared: record.spec.shared,
      options: record.spec.extra,
      state: attachment?.nodeId ? 'attached' : 'detached',
      attachedOn: attachment?.nodeId ?? null,
      epoch: attachment?.epoch ?? 0,
      mountpoint: local?.mountpoint ?? null,
      mounts: local?.mountIds.size ?? 0,
      replicas: record.replicas,
      createdAt: record.createdAt,
    }
  }

  #replicaDir(id: string): string {
    return path.join(this.#dataDir, 'replicas', id)
  }

  #checkRunning(): void {
    if (this.#stopping) throw pxdError('DAEMON_STOPPING', 'pxd is shutting down')
  }
}
