/**
 * What inspect and list show of a volume: its record, where it is attached, and the state
 * of each replica (in sync, resyncing with its percent and eta, out of sync, offline),
 * from the kvdb and membership so that every node shows the same; the mountpoint and
 * mount count are this node's.
 */
import type { Membership, NodeInfo } from '../cluster/membership'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { ShareClientRecord } from '../shares/share-registry'
import type { AttachmentRecord, ReplicaInfo, ResyncRecord, VolumeInfo, VolumeRecord } from './types'

/** What the view needs of a volume mounted here. */
export interface MountedVolume {
  mountpoint: string
  mountIds: ReadonlySet<string>
}

export interface InfoViewOptions {
  kvdb: Kvdb
  membership: Pick<Membership, 'nodes'>
  /** The volumes attached here, by name (the manager's map, read only). */
  attached: ReadonlyMap<string, MountedVolume>
  /** A shared volume's mounts on this node (they are counted apart from the attachment). */
  shared?: (name: string) => MountedVolume | undefined
}

export class InfoView {
  readonly #o: InfoViewOptions

  constructor(o: InfoViewOptions) {
    this.#o = o
  }

  /** `nodes`: membership as already read (list reads it once for every volume). */
  async info(record: VolumeRecord, nodes?: NodeInfo[]): Promise<VolumeInfo> {
    const [attachment, known, resync, clients] = await Promise.all([
      this.#o.kvdb.get<AttachmentRecord>(keys.attachment(record.name)),
      nodes ?? this.#o.membership.nodes(),
      this.#o.kvdb.get<ResyncRecord>(keys.resync(record.name)),
      record.spec.shared ? this.#o.kvdb.list<ShareClientRecord>(keys.shareClients(record.name)) : Promise.resolve([]),
    ])
    const online = new Set(known.filter((n) => n.online).map((n) => n.nodeId))
    const local = record.spec.shared ? this.#o.shared?.(record.name) : this.#o.attached.get(record.name)
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
      ...(record.spec.shared ? {
        sharing: {
          server: att?.nodeId ?? null,
          clients: clients.map(({ value: c }) => ({ nodeId: c.nodeId, mounts: c.mounts, ops: c.ops, bytes: c.bytes, since: c.since })),
        },
      } : {}),
    }
  }
}

/** One replica's state; a running resync's eta is from its pace since it started (`now`: for tests). */
export function replicaInfo(nodeId: string, record: Pick<VolumeRecord, 'inSync'>, online: boolean, resync: ResyncRecord | undefined, now = Date.now()): ReplicaInfo {
  const inSync = record.inSync.includes(nodeId)
  const base = { nodeId, inSync, online }
  if (inSync) return { ...base, state: 'in-sync' }
  if (!online) return { ...base, state: 'offline' }
  if (resync?.nodeId === nodeId && resync.state === 'running') {
    const elapsed = (now - Date.parse(resync.startedAt)) / 1000
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
