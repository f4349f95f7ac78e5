/**
 * Creating a volume: parse the name and options (inline `name=v,repl=2`, Docker `--opt`,
 * Mesos driver options), accept an existing volume when nothing requested contradicts it,
 * place the replicas, and write the record before any replica exists (a node creates a
 * replica only for a volume that names it); a replica that cannot be made undoes it all.
 *
 * A secure volume gets its random data key here, recorded only wrapped (keys.ts). The key
 * options (passphrase, secret_key, use_cluster_secret) are taken out before the spec is
 * built, so a passphrase is neither recorded nor logged.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { KeyedMutex } from '../util/mutex'
import { newVolumeKey, takeKeyOptions, type KeyOptions, type KeySources } from './keys'
import { buildSpec, flattenOptions, mergeOptions, parseVolumeRef, specConflicts } from './options'
import type { ReplicaPlacement } from './placement'
import type { VolumeInfo, VolumeRecord } from './types'

export interface CreationOptions {
  kvdb: Kvdb
  locks: KeyedMutex
  placement: ReplicaPlacement
  log: Logger
  keySources: KeySources
  info: (record: VolumeRecord) => Promise<VolumeInfo>
  checkRunning: () => void
  /** Docker's `--opt parent=VOL`: the new volume is a snapshot of VOL (snapshots.ts). */
  createAsSnapshot: (parent: string, name: string, options: Record<string, string>) => Promise<VolumeInfo>
}

export class VolumeCreation {
  readonly #o: CreationOptions

  constructor(o: CreationOptions) {
    this.#o = o
  }

  async create(requestedName: string, opts?: unknown): Promise<VolumeInfo> {
    const o = this.#o
    const ref = parseVolumeRef(requestedName)
    const { parent, ...options } = mergeOptions(ref.inline, flattenOptions(opts))
    const keyOptions = takeKeyOptions(options)
    const keyed = keyOptions.passphrase !== undefined || keyOptions.secretKey !== undefined || keyOptions.useClusterSecret === true
    if (keyed && options.secure === undefined) options.secure = 'true'
    if (parent !== undefined) return o.createAsSnapshot(parent, ref.name, options)
    const spec = buildSpec(options)
    return o.locks.run(ref.name, async () => {
      o.checkRunning()
      const existing = await o.kvdb.get<VolumeRecord>(keys.volume(ref.name))
      if (existing) {
        const conflicts = specConflicts(existing.value.spec, options)
        if (conflicts.length > 0) {
          throw pxdError('ALREADY_EXISTS', `volume ${ref.name} already exists with a different spec (${conflicts.join('; ')})`)
        }
        return o.info(existing.value)
      }
      const secure = spec.extra.secure === 'true'
      if (keyed && !secure) throw pxdError('INVALID_ARGUMENT', 'passphrase, secret_key and use_cluster_secret need secure=true')
      const placed = await o.placement.place(spec.repl, spec.size)
      const id = randomBytes(8).toString('hex')
      const encryption = secure ? this.#newKey(id, keyOptions) : undefined
      const record: VolumeRecord = {
        id,
        name: ref.name,
        spec,
        createdAt: new Date().toISOString(),
        replicas: placed.map((nodeId) => ({ nodeId })),
        inSync: placed,
        ...(encryption ? { encryption } : {}),
      }
      const created = await o.kvdb.txn({
        compares: [{ key: keys.volume(ref.name), modRevision: 0 }],
        puts: [{ key: keys.volume(ref.name), value: record }],
      })
      if (!created) throw pxdError('CONFLICT', `volume ${ref.name} was created concurrently; retry`)
      const failed = await o.placement.create(placed, record)
      if (failed.length > 0) {
        await o.kvdb.txn({ deletes: [keys.volume(ref.name)] }).catch(() => undefined)
        await o.placement.drop(record)
        throw pxdError('UNSATISFIABLE', `could not create the replicas of ${ref.name}: ${failed.join('; ')}`)
      }
      o.log.info({ volume: ref.name, volumeId: record.id, spec, replicas: placed }, 'volume created')
      return o.info(record)
    })
  }

  /** A secure volume's new data key, wrapped; the key itself is dropped (a mount unwraps it). */
  #newKey(volumeId: string, keyOptions: KeyOptions) {
    const { key, wrapped } = newVolumeKey(volumeId, keyOptions, this.#o.keySources)
    key.fill(0)
    return wrapped
  }
}
