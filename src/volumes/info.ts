/**
 * What inspect and list show of a volume: its record, where it is attached, and the state
 * of each replica (in sync, resyncing with its percent and eta, out of sync, offline),
 * from the kvdb and membership so that every node shows the same; the mountpoint and
 * mount count are this node's.
 */
import type { Membership, NodeInfo } from '../cluster/membership'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { ShareClientRecord } from '../shares/share-registry'
import { replacementDueAt, type ClusterView } from './healing-plan'
import type { AttachmentRecord, ReplicaInfo, ResyncRecord, VolumeInfo, VolumeRecord } from './types'

/** What the view needs of a volume mounted here. */
export interface MountedVolume {
  /** null: held here for healing only (no mount). */
  mountpoint: string | null
  mountIds: ReadonlySet<string>
}

export interface InfoViewOptions {
  kvdb: Kvdb
  membership: Pick<Membership, 'nodes'>
  /** The volumes attached here, by name (the manager's map, read only). */
  attached: ReadonlyMap<string, MountedVolume>
  /** A shared volume's mounts on this node (they are counted apart from the attachment). */
  shared?: (name: string) => MountedVolume | undefined
  /** Membership with offline marks, draining nodes and --replace-after (why a volume is degraded), read together. */
  healing?: () => Promise<{ nodes: NodeInfo[]; view: ClusterView }>
}

export class InfoView {
  readonly #o: InfoViewOptions

  constructor(o: InfoViewOptions) {
    this.#o = o
  }

  /** `nodes` (and `healing`): as already read (list reads them once for every volume). */
  async info(record: VolumeRecord, nodes?: NodeInfo[], healing?: ClusterView, all?: readonly VolumeRecord[]): Promise<VolumeInfo> {
    const cluster = nodes ? Promise.resolve({ nodes, view: healing })
      : this.#o.healing ? this.#o.healing()
        : this.#o.membership.nodes().then((n) => ({ nodes: n, view: undefined }))
    const [attachment, { nodes: known, view }, resyncs, clients, records] = await Promise.all([
      this.#o.kvdb.get<AttachmentRecord>(keys.attachment(record.name)),
      cluster,
      this.#o.kvdb.list<ResyncRecord>(keys.resyncs(record.name)),
      record.spec.shared ? this.#o.kvdb.list<ShareClientRecord>(keys.shareClients(record.name)) : Promise.resolve([]),
      all ?? (record.snapshotOf ? [] : this.#o.kvdb.list<VolumeRecord>(keys.volumes()).then((es) => es.map((e) => e.value))),
    ])
    const snapshots = records.filter((r) => r.snapshotOf?.id === record.id).sort((a, b) => a.createdAt.localeCompare(b.createdAt))
    const online = new Set(known.filter((n) => n.online).map((n) => n.nodeId))
    const local = record.spec.shared ? this.#o.shared?.(record.name) : this.#o.attached.get(record.name)
    const att = attachment?.value
    const byNode = new Map(resyncs.map((e) => [e.value.nodeId, e.value]))
    const allocated = new Map(known.map((n) => [n.nodeId, n.allocated]))
    const replicas = record.replicas.map(({ nodeId }) => replicaInfo(nodeId, record, online.has(nodeId), byNode.get(nodeId), Date.now(), allocated.get(nodeId)?.[record.id] ?? null))
    // The latest of them (by its last update): running, or the last one that ended.
    const last = resyncs.map((e) => e.value).sort((a, b) => Date.parse(b.updatedAt) - Date.parse(a.updatedAt))[0]
    const health = view ? healthOf(record, replicas, view) : { degraded: replicas.filter((r) => r.inSync && r.online).length < record.spec.repl, since: record.degradedSince ?? null, reasons: [] }
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
      degraded: health.degraded,
      degradedSince: health.since,
      degradedReasons: health.reasons,
      attachedOn: att?.nodeId ?? null,
      attachedFor: att?.nodeId ? (att.purpose === 'resync' ? 'healing' : 'mount') : null,
      epoch: att?.epoch ?? 0,
      mountpoint: local?.mountpoint ?? null,
      mounts: local?.mountIds.size ?? 0,
      replicas,
      lastResync: last ?? null,
      createdAt: record.createdAt,
      parent: record.snapshotOf?.name ?? record.clonedFrom?.name ?? null,
      readOnly: record.snapshotOf !== undefined,
      snapshots: snapshots.map((r) => ({ name: r.name, createdAt: r.createdAt })),
      ...(record.spec.shared ? {
        sharing: {
          server: att?.nodeId ?? null,
          clients: clients.map(({ value: c }) => ({ nodeId: c.nodeId, mounts: c.mounts, ops: c.ops, bytes: c.bytes, since: c.since })),
        },
      } : {}),
    }
  }
}

/**
 * Whether a volume is short of in-sync copies on online nodes, since when, and why, one
 * reason per replica that is not an online in-sync one or is on its way out.
 */
export function healthOf(record: VolumeRecord, replicas: ReplicaInfo[], view: ClusterView): { degraded: boolean; since: string | null; reasons: string[] } {
  const degraded = replicas.filter((r) => r.inSync && r.online).length < record.spec.repl
  const retiring = new Set(record.retiring ?? [])
  const reasons: string[] = []
  let since = record.degradedSince ? Date.parse(record.degradedSince) : Infinity
  for (const r of replicas) {
    const off = view.offlineSince.get(r.nodeId)
    let why: string | undefined
    if (!r.online) {
      const offText = off === undefined ? 'node offline' : `node offline since ${new Date(off).toISOString()}`
      if (off !== undefined && r.inSync) since = Math.min(since, off)
      const due = replacementDueAt(r.nodeId, view)
      why = retiring.has(r.nodeId) ? `${offText}; a replacement is being resynced`
        : due === undefined ? `${offText}; not replaced (--replace-after 0)`
        : due <= view.now ? `${offText}; replacement due now (waiting for an online node with room)`
        : `${offText}; replacement due at ${new Date(due).toISOString()}`
    } else if (retiring.has(r.nodeId)) {
      why = view.draining.has(r.nodeId) ? 'node draining; moves off once its replacement is in sync' : 'moving to another node; dropped once its replacement is in sync'
    } else if (r.state === 'resyncing' && r.resync) {
      why = `resync running, ${r.resync.percent}%`
    } else if (!r.inSync) {
      why = 'out of sync; its resync starts as soon as a resync slot is free'
    }
    if (why) reasons.push(`${r.nodeId}: ${why}`)
  }
  return { degraded, since: degraded && Number.isFinite(since) ? new Date(since).toISOString() : null, reasons }
}

/** One replica's state; a running resync's eta is from its pace since it started (`now`: for tests). */
export function replicaInfo(nodeId: string, record: Pick<VolumeRecord, 'inSync' | 'retiring'>, online: boolean, resync: ResyncRecord | undefined, now = Date.now(), allocatedBytes: number | null = null): ReplicaInfo {
  const inSync = record.inSync.includes(nodeId)
  const base = { nodeId, inSync, online, ...(record.retiring?.includes(nodeId) ? { retiring: true } : {}), allocatedBytes }
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
