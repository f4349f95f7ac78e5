/**
 * Where the copies of a volume go: `repl` distinct online nodes with room for it, none draining,
 * least-allocated first so that volumes spread over the cluster; which copies go first
 * when replication is lowered; and making and dropping the copies on their nodes.
 */
import type { Logger } from 'pino'
import { messageOf, pxdError } from '../errors'
import type { Membership, NodeInfo } from '../cluster/membership'
import { keys, type Kvdb } from '../kvdb/kvdb'
import type { ReplicaDirectory } from '../replicas/directory'
import { formatSize } from '../util/size'
import type { VolumeRecord } from './types'

export interface PlacementInput {
  repl: number
  size: number
  nodes: NodeInfo[]
  /** Bytes already promised to volumes on each node (sum of their replicas' sizes): see allocatedBytes. */
  allocated: Map<string, number>
}

/** Bytes promised to volumes on each node: the sizes of the replicas the records place there. */
export function allocatedBytes(records: ReadonlyArray<Pick<VolumeRecord, 'spec' | 'replicas' | 'snapshotOf'>>): Map<string, number> {
  const allocated = new Map<string, number>()
  // A snapshot's blocks are counted by the host's free space, not promised here.
  for (const r of records) for (const p of r.snapshotOf ? [] : r.replicas) allocated.set(p.nodeId, (allocated.get(p.nodeId) ?? 0) + r.spec.size)
  return allocated
}

export function placeReplicas({ repl, size, nodes, allocated }: PlacementInput): string[] {
  const online = nodes.filter((n) => n.online && n.capacity)
  const roomy = online.filter((n) => n.capacity!.free >= size)
  if (roomy.length >= repl) {
    return roomy
      .sort((a, b) => (allocated.get(a.nodeId) ?? 0) - (allocated.get(b.nodeId) ?? 0) || b.capacity!.free - a.capacity!.free || (a.nodeId < b.nodeId ? -1 : 1))
      .slice(0, repl)
      .map((n) => n.nodeId)
  }
  const offline = nodes.filter((n) => !n.online).map((n) => n.nodeId)
  const full = online.filter((n) => n.capacity!.free < size).map((n) => `${n.nodeId} (${formatSize(n.capacity!.free)} free)`)
  const parts = [`repl=${repl} needs ${repl} online node${repl === 1 ? '' : 's'} with ${formatSize(size)} free, but only ${roomy.length} ${roomy.length === 1 ? 'is' : 'are'} available`]
  if (roomy.length > 0) parts.push(`usable: ${roomy.map((n) => n.nodeId).join(', ')}`)
  if (full.length > 0) parts.push(`too full: ${full.join(', ')}`)
  if (offline.length > 0) parts.push(`offline: ${offline.join(', ')}`)
  if (nodes.length === 1) parts.push('this is a single-node pxd; join more nodes with --kvdb etcd://...')
  // Enough nodes, too little room: a space problem, not a cluster-size problem.
  throw pxdError(online.length >= repl ? 'NO_SPACE' : 'UNSATISFIABLE', parts.join('; '))
}

/** The `count` replicas to drop when lowering replication: out of sync first, then not the coordinator's, then in record order. */
export function replicasToDrop(record: Pick<VolumeRecord, 'replicas' | 'inSync'>, attachedOn: string | null | undefined, count: number): string[] {
  const rank = (nodeId: string) => (!record.inSync.includes(nodeId) ? 0 : nodeId === attachedOn ? 2 : 1)
  return record.replicas.map((r) => r.nodeId).sort((x, y) => rank(x) - rank(y)).slice(0, count)
}

export interface ReplicaPlacementOptions {
  kvdb: Kvdb
  membership: Pick<Membership, 'nodes'>
  replicas: Pick<ReplicaDirectory, 'create' | 'drop'>
  log: Logger
}

export class ReplicaPlacement {
  readonly #o: ReplicaPlacementOptions

  constructor(o: ReplicaPlacementOptions) {
    this.#o = o
  }

  /** `count` nodes for new replicas of `size` bytes, none of them in `except`, given what every volume has placed. */
  async place(count: number, size: number, except: readonly string[] = []): Promise<string[]> {
    const [nodes, records, drains] = await Promise.all([this.#o.membership.nodes(), this.#o.kvdb.list<VolumeRecord>(keys.volumes()), this.#o.kvdb.list(keys.drainings())])
    const allocated = allocatedBytes(records.map((e) => e.value))
    // A draining node takes no new replica.
    const draining = new Set(drains.map((d) => d.key.slice(keys.drainings().length)))
    return placeReplicas({ repl: count, size, nodes: nodes.filter((n) => !except.includes(n.nodeId) && !draining.has(n.nodeId)), allocated })
  }

  /**
   * The record with `repl` replicas: raising places new (empty, out of sync) ones; lowering
   * drops replicasToDrop's and refuses to leave no in-sync replica.
   */
  async replan(record: VolumeRecord, repl: number, attachedOn: string | null | undefined): Promise<{ next: VolumeRecord; added: string[]; removed: string[] }> {
    const current = record.replicas.map((r) => r.nodeId)
    if (repl > current.length) {
      const added = await this.place(repl - current.length, record.spec.size, current)
      return { next: { ...record, spec: { ...record.spec, repl }, replicas: [...record.replicas, ...added.map((nodeId) => ({ nodeId }))] }, added, removed: [] }
    }
    const removed = replicasToDrop(record, attachedOn, current.length - repl)
    const keep = current.filter((n) => !removed.includes(n))
    const inSync = record.inSync.filter((n) => keep.includes(n))
    if (inSync.length === 0) throw pxdError('UNSATISFIABLE', `lowering ${record.name} to repl=${repl} would leave no in-sync replica`)
    return { next: { ...record, spec: { ...record.spec, repl }, replicas: keep.map((nodeId) => ({ nodeId })), inSync }, added: [], removed }
  }

  /** Create the (empty) replicas of a volume on `nodeIds`, all at once; says which failed and why. */
  async create(nodeIds: readonly string[], record: Pick<VolumeRecord, 'id' | 'spec'>): Promise<string[]> {
    const results = await Promise.allSettled(nodeIds.map((nodeId) => this.#o.replicas.create(nodeId, record.id, record.spec.size)))
    return results.flatMap((r, i) => (r.status === 'rejected' ? [`${nodeIds[i]}: ${messageOf(r.reason)}`] : []))
  }

  /** Best effort: a node that is away deletes the replica itself when it starts. */
  async drop(record: Pick<VolumeRecord, 'id' | 'replicas'>): Promise<void> {
    await Promise.all(record.replicas.map(async ({ nodeId }) => {
      try {
        await this.#o.replicas.drop(nodeId, record.id)
      } catch (err) {
        this.#o.log.warn({ err, volumeId: record.id, replica: nodeId }, 'could not drop a replica now; its node will when it starts')
      }
    }))
  }
}
