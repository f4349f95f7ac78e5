/**
 * Snapshots (`pxctl volume snapshot create/list/delete`, `pxctl volume restore`, Docker
 * `--opt parent=VOL`). A snapshot is a read-only volume record (`snapshotOf`) whose data is
 * a layer of its volume's replicas (src/store/layers.ts): taking one copies nothing.
 *
 * Taking one: the volume's engine (the one it is mounted on here, or one opened for the call)
 * holds its writes, flushes every in-sync replica and has each freeze its contents at that
 * point (VolumeEngine.snapshot), so no write is in one replica's snapshot and not another's.
 * A mounted file system is frozen (fsfreeze) for that instant, so the snapshot is clean as a
 * file system too. The record is written last: a snapshot the kvdb does not list does not
 * exist, and its layers, left by a failure or a crash part way, are deleted (here at once,
 * else by each node when it starts).
 *
 * Every replica of the volume must be in sync, so the snapshot has the volume's replication.
 * A volume mounted on another node is refused, naming it: only that node can freeze it.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { VolumeEngine } from '../engine/volume-engine'
import { pxdError } from '../errors'
import { freezeFilesystem, thawFilesystem } from '../frontend/filesystem'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import type { LocalAttachment } from './local-volumes'
import { parseVolumeRef } from './options'
import type { VolumeInfo, VolumeRecord } from './types'

/** At most this many snapshots per volume. */
export const MAX_SNAPSHOTS = 64

export interface VolumeSnapshotsOptions {
  nodeId: string
  kvdb: Kvdb
  locks: KeyedMutex
  attached: ReadonlyMap<string, LocalAttachment>
  attachedOn: (name: string) => Promise<string | null>
  /** Open the volume's engine here for one call (no mount), and let it go after. */
  withEngine: <T>(name: string, work: (engine: VolumeEngine) => Promise<T>) => Promise<T>
  /** Delete a snapshot's layers, or a volume's replicas, on the nodes that hold them (best effort). */
  dropLayers: (record: Pick<VolumeRecord, 'id' | 'replicas'>) => Promise<void>
  /** Make a new volume's replica on a node as a clone of a snapshot layer there. */
  cloneReplica: (nodeId: string, volumeId: string, size: number, snapId: string) => Promise<void>
  info: (record: VolumeRecord) => Promise<VolumeInfo>
  checkRunning: () => void
  log: Logger
}

export class VolumeSnapshots {
  readonly #o: VolumeSnapshotsOptions

  constructor(o: VolumeSnapshotsOptions) {
    this.#o = o
  }

  /** Take snapshot `snapName` of volume `volumeName`; `freeze: false` skips the fsfreeze of a mounted one. */
  async create(volumeName: string, snapName: string, options: { freeze?: boolean } = {}): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(volumeName)
    const snap = parseVolumeRef(snapName).name
    if (snap === name) throw pxdError('INVALID_ARGUMENT', `a snapshot cannot have its volume's name (${name})`)
    return this.#o.locks.run(name, () => this.#o.locks.run(snap, async () => {
      this.#o.checkRunning()
      const record = await this.#require(name)
      if (record.snapshotOf) throw pxdError('INVALID_ARGUMENT', `${name} is a snapshot (of ${record.snapshotOf.name}); a snapshot of a snapshot is refused`)
      if (await this.#o.kvdb.get(keys.volume(snap))) throw pxdError('ALREADY_EXISTS', `a volume or snapshot named ${snap} exists`)
      const all = await this.#records()
      const count = all.filter((r) => r.snapshotOf?.id === record.id).length
      if (count >= MAX_SNAPSHOTS) throw pxdError('UNSATISFIABLE', `volume ${name} has ${count} snapshots, the most it may have; delete one first`)
      const started = Date.now()
      const { snapId, took } = await this.#takeLayers(record, 'snapshot', 'take the snapshot there', options.freeze !== false)
      const snapshot: VolumeRecord = {
        id: snapId,
        name: snap,
        spec: { ...record.spec, shared: false },
        createdAt: new Date().toISOString(),
        replicas: took.map((nodeId) => ({ nodeId })),
        inSync: took,
        ...(record.formatted ? { formatted: true } : {}),
        // A secure volume's snapshot is its ciphertext: it opens with the volume's key.
        ...(record.encryption ? { encryption: record.encryption } : {}),
        snapshotOf: { id: record.id, name: record.name },
      }
      const ok = await this.#o.kvdb.txn({ compares: [{ key: keys.volume(snap), modRevision: 0 }], puts: [{ key: keys.volume(snap), value: snapshot }] })
      if (!ok) {
        await this.#o.dropLayers(snapshot)
        throw pxdError('CONFLICT', `a volume named ${snap} was created meanwhile; the snapshot was not kept`)
      }
      this.#o.log.info({ volume: name, volumeId: record.id, snapshot: snap, snapId, replicas: took, ms: Date.now() - started }, 'snapshot taken')
      return this.#o.info(snapshot)
    }))
  }

  /**
   * A new writable volume `newName` that reads as `sourceName` (a snapshot, or a volume: then
   * as it is now, through a snapshot taken for the clone and deleted after) and shares its
   * unchanged blocks on the hosts: its replicas are on the nodes that hold the snapshot.
   * Writing to one never changes the other.
   */
  async clone(sourceName: string, newName: string, options: { freeze?: boolean } = {}): Promise<VolumeInfo> {
    const source = parseVolumeRef(sourceName).name
    const name = parseVolumeRef(newName).name
    return this.#o.locks.run(source, () => this.#o.locks.run(name, async () => {
      this.#o.checkRunning()
      const record = await this.#require(source)
      if (await this.#o.kvdb.get(keys.volume(name))) throw pxdError('ALREADY_EXISTS', `a volume or snapshot named ${name} exists`)
      let snapId = record.id
      let nodes = record.inSync
      let volume = record
      let temporary = false
      if (record.snapshotOf) {
        volume = (await this.#o.kvdb.get<VolumeRecord>(keys.volume(record.snapshotOf.name)))?.value ?? record
      } else {
        ({ snapId, took: nodes } = await this.#takeLayers(record, 'clone', 'clone it there', options.freeze !== false))
        temporary = true
      }
      try {
        return await this.#cloneFrom(name, record, volume, snapId, nodes)
      } finally {
        // The clone's links keep the blocks; the source lets go of the layer taken for it.
        if (temporary) await this.#o.dropLayers({ id: snapId, replicas: nodes.map((nodeId) => ({ nodeId })) })
      }
    }))
  }

  async #cloneFrom(name: string, source: VolumeRecord, volume: VolumeRecord, snapId: string, nodes: string[]): Promise<VolumeInfo> {
    const { snapshotOf: _s, formatted: _f, degradedSince: _d, retiring: _r, ...base } = source
    const clone: VolumeRecord = {
      ...base,
      id: randomBytes(8).toString('hex'),
      name,
      spec: { ...source.spec, shared: volume.spec.shared },
      createdAt: new Date().toISOString(),
      replicas: nodes.map((nodeId) => ({ nodeId })),
      inSync: [...nodes],
      ...(source.formatted ? { formatted: true } : {}),
      ...(nodes.length < source.spec.repl ? { degradedSince: new Date().toISOString() } : {}),
      clonedFrom: { id: source.id, name: source.name },
    }
    // The record goes first: a node makes a replica only for a volume that names it.
    const ok = await this.#o.kvdb.txn({ compares: [{ key: keys.volume(name), modRevision: 0 }], puts: [{ key: keys.volume(name), value: clone }] })
    if (!ok) throw pxdError('CONFLICT', `a volume named ${name} was created meanwhile; retry`)
    const results = await Promise.allSettled(nodes.map((nodeId) => this.#o.cloneReplica(nodeId, clone.id, clone.spec.size, snapId)))
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${nodes[i]}: ${(r.reason as Error).message}`] : []))
    if (failed.length > 0) {
      await this.#o.kvdb.txn({ deletes: [keys.volume(name)] }).catch(() => undefined)
      await this.#o.dropLayers(clone)
      throw pxdError('UNSATISFIABLE', `could not clone ${source.name} as ${name}: ${failed.join('; ')}`)
    }
    this.#o.log.info({ volume: name, volumeId: clone.id, source: source.name, snapId, replicas: nodes }, 'volume cloned')
    return this.#o.info(clone)
  }

  /** A snapshot asked for as a create (Docker's `--opt parent=VOL`); an existing snapshot of that volume is accepted as it is. */
  async createAsVolume(parent: string, name: string, options: Record<string, string>): Promise<VolumeInfo> {
    const unknown = Object.keys(options).filter((k) => k !== 'name')
    if (unknown.length > 0) throw pxdError('INVALID_ARGUMENT', `a snapshot (parent=${parent}) takes its volume's options; ${unknown.join(', ')} cannot be given`)
    const existing = await this.#o.kvdb.get<VolumeRecord>(keys.volume(name))
    if (existing?.value.snapshotOf?.name === parseVolumeRef(parent).name) return this.#o.info(existing.value)
    return this.create(parent, name)
  }

  /** A volume with snapshots is not deleted: they are layers of its replicas. */
  async refuseIfSnapshotted(record: VolumeRecord): Promise<void> {
    if (record.snapshotOf) return
    const snapshots = (await this.#records()).filter((r) => r.snapshotOf?.id === record.id)
    if (snapshots.length > 0) throw pxdError('IN_USE', `volume ${record.name} has ${snapshots.length} snapshot(s) (${snapshots.map((r) => r.name).join(', ')}); delete them first`)
  }

  /** Snapshots (of one volume, or of all), oldest first. */
  async list(volumeName?: string): Promise<VolumeInfo[]> {
    const all = await this.#records()
    let of: VolumeRecord | undefined
    if (volumeName !== undefined) {
      const { name } = parseVolumeRef(volumeName)
      of = all.find((r) => r.name === name)
      if (!of) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    }
    const snaps = all.filter((r) => r.snapshotOf && (!of || r.snapshotOf.id === of.id)).sort((a, b) => a.createdAt.localeCompare(b.createdAt))
    return Promise.all(snaps.map((r) => this.#o.info(r)))
  }

  /** Check that `name` is a snapshot (what `snapshot delete` may remove). */
  async requireSnapshot(name: string): Promise<void> {
    const record = await this.#require(parseVolumeRef(name).name)
    if (!record.snapshotOf) throw pxdError('INVALID_ARGUMENT', `${record.name} is a volume, not a snapshot (pxctl volume delete removes volumes)`)
  }

  /**
   * The volume's contents become the snapshot's, on every replica. Refused while the volume
   * is attached anywhere (its file system would change under its users).
   */
  async restore(volumeName: string, snapName: string): Promise<VolumeInfo> {
    const { name } = parseVolumeRef(volumeName)
    const snap = parseVolumeRef(snapName).name
    return this.#o.locks.run(name, async () => {
      this.#o.checkRunning()
      const record = await this.#require(name)
      const snapshot = await this.#require(snap)
      if (!snapshot.snapshotOf) throw pxdError('INVALID_ARGUMENT', `${snap} is a volume, not a snapshot`)
      if (snapshot.snapshotOf.id !== record.id) throw pxdError('INVALID_ARGUMENT', `snapshot ${snap} is of volume ${snapshot.snapshotOf.name}, not of ${name}`)
      const holder = await this.#o.attachedOn(name)
      if (holder !== null) throw pxdError('IN_USE', `volume ${name} is attached on node ${holder}; unmount it before a restore`)
      this.#checkAllInSync(record, 'restore')
      const missing = record.replicas.filter((r) => !snapshot.inSync.includes(r.nodeId)).map((r) => r.nodeId)
      if (missing.length > 0) throw pxdError('UNSATISFIABLE', `snapshot ${snap} has no copy on node ${missing.join(', ')}, which holds a replica of ${name} (made after the snapshot)`)
      await this.#o.withEngine(name, (engine) => engine.restore(snapshot.id))
      await this.#setFormatted(name, snapshot.formatted === true)
      this.#o.log.info({ volume: name, volumeId: record.id, snapshot: snap, snapId: snapshot.id }, 'volume restored from a snapshot')
      return this.#o.info((await this.#require(name)))
    })
  }

  /**
   * A new snapshot layer of the volume on every in-sync replica (every replica must be in
   * sync, and the volume attached nowhere else): through the engine it is mounted on here, or
   * one opened for the call. Layers left by a failure are dropped. Returns its id and nodes.
   */
  async #takeLayers(record: VolumeRecord, what: string, elsewhere: string, freeze: boolean): Promise<{ snapId: string; took: string[] }> {
    this.#checkAllInSync(record, what)
    const holder = await this.#o.attachedOn(record.name)
    if (holder !== null && holder !== this.#o.nodeId) throw pxdError('CONFLICT', `volume ${record.name} is attached on node ${holder}: ${elsewhere} (only that node can freeze its file system)`)
    const snapId = randomBytes(8).toString('hex')
    const local = this.#o.attached.get(record.name)
    try {
      const took = local ? await this.#takeMounted(local, snapId, freeze) : await this.#o.withEngine(record.name, (engine) => engine.snapshot(snapId))
      return { snapId, took }
    } catch (err) {
      await this.#o.dropLayers({ id: snapId, replicas: record.replicas })
      throw err
    }
  }

  async #takeMounted(local: LocalAttachment, snapId: string, freeze: boolean): Promise<string[]> {
    if (!freeze || local.mountpoint === null) return local.engine.snapshot(snapId)
    const mountpoint = local.mountpoint
    await freezeFilesystem(mountpoint)
    try {
      return await local.engine.snapshot(snapId)
    } finally {
      await thawFilesystem(mountpoint).catch((err) => this.#o.log.error({ err, mountpoint }, 'thawing the file system after a snapshot failed'))
    }
  }

  #checkAllInSync(record: VolumeRecord, what: string): void {
    const behind = record.replicas.map((r) => r.nodeId).filter((n) => !record.inSync.includes(n))
    if (behind.length > 0) throw pxdError('UNSATISFIABLE', `volume ${record.name} has a replica out of sync on node ${behind.join(', ')}; ${what} it once every replica is in sync`)
    if ((record.retiring ?? []).length > 0) throw pxdError('CONFLICT', `volume ${record.name} is moving replicas; ${what} it once that is done`)
  }

  /** The restored volume has a file system exactly when its snapshot had one. */
  async #setFormatted(name: string, formatted: boolean): Promise<void> {
    const entry = await this.#o.kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry || (entry.value.formatted === true) === formatted) return
    const { formatted: _f, ...rest } = entry.value
    const next: VolumeRecord = formatted ? { ...rest, formatted: true } : rest
    const ok = await this.#o.kvdb.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: next }] })
    if (!ok) throw pxdError('CONFLICT', `volume ${name} changed during the restore; check it with pxctl volume inspect`)
  }

  async #require(name: string): Promise<VolumeRecord> {
    const entry = await this.#o.kvdb.get<VolumeRecord>(keys.volume(name))
    if (!entry) throw pxdError('NOT_FOUND', `volume ${name} not found`)
    return entry.value
  }

  async #records(): Promise<VolumeRecord[]> {
    return (await this.#o.kvdb.list<VolumeRecord>(keys.volumes())).map((e) => e.value)
  }
}
