/**
 * Where each replica of a volume is and how to reach it: the one place that decides
 * between this node's ReplicaHost and a peer's ReplicaService, resolves a node id to its
 * peer link (through the member records in the kvdb) and finds a volume by its id (what a
 * peer's request names). The volume manager and the daemon only ever ask it. A create,
 * clone or drop sent to a peer goes under a grant to this node (grants.ts): the peer serves
 * it only for the node the kvdb names.
 */
import { pxdError } from '../errors'
import { keys, type Kvdb } from '../kvdb/kvdb'
import { ReplicaGrants, type ReplicaGrant } from './grants'
import { LocalReplica } from './local-replica'
import type { PeerChannel } from './protocol'
import type { Replica } from './replica'
import { ReplicaClient } from './replica-client'
import type { ReplicaHost } from './replica-host'

/** Opens a peer link to a node at an address (the transport's link pool). */
export interface PeerDialer {
  link(nodeId: string, address: string): PeerChannel
}

/** The part of a volume record a replica needs (src/volumes/types.ts VolumeRecord has it). */
export interface PlacedVolume {
  id: string
  spec: { size: number }
  replicas: Array<{ nodeId: string }>
}

export interface ReplicaDirectoryOptions {
  nodeId: string
  host: ReplicaHost
  kvdb: Kvdb
  /** Absent on a node without peer links (a single node). */
  peers?: PeerDialer
}

export class ReplicaDirectory {
  readonly nodeId: string
  readonly #host: ReplicaHost
  readonly #kvdb: Kvdb
  readonly #peers: PeerDialer | undefined
  readonly #grants: ReplicaGrants

  constructor(o: ReplicaDirectoryOptions) {
    this.nodeId = o.nodeId
    this.#host = o.host
    this.#kvdb = o.kvdb
    this.#peers = o.peers
    this.#grants = new ReplicaGrants(o.kvdb, o.nodeId)
  }

  /** The copy of volume `volumeId` on `nodeId`, for a coordinator at `epoch`. */
  async replica(nodeId: string, volumeId: string, size: number, epoch: number): Promise<Replica> {
    const at = { volumeId, size, epoch }
    if (nodeId === this.nodeId) return new LocalReplica(nodeId, this.#host, at)
    return new ReplicaClient(nodeId, await this.channel(nodeId), at)
  }

  /** Make the (empty) replica of a volume that the kvdb places on `nodeId`. */
  async create(nodeId: string, volumeId: string, size: number): Promise<void> {
    if (nodeId === this.nodeId) return this.#host.create(volumeId, size)
    const link = await this.channel(nodeId)
    await this.#grants.around(volumeId, nodeId, 'create', () => ReplicaClient.create(nodeId, link, volumeId, size))
  }

  /** Make the replica of a new volume on `nodeId` as a clone of snapshot `snapId` there. */
  async clone(nodeId: string, volumeId: string, size: number, snapId: string): Promise<void> {
    if (nodeId === this.nodeId) return this.#host.layers.clone(volumeId, snapId, size)
    const link = await this.channel(nodeId)
    await this.#grants.around(volumeId, nodeId, 'create', () => ReplicaClient.clone(nodeId, link, volumeId, size, snapId))
  }

  /** Delete the replica of a volume on `nodeId`; the kvdb must no longer list it there. */
  async drop(nodeId: string, volumeId: string): Promise<void> {
    if (nodeId === this.nodeId) return this.#host.drop(volumeId)
    const link = await this.channel(nodeId)
    await this.#grants.around(volumeId, nodeId, 'drop', () => ReplicaClient.drop(nodeId, link, volumeId))
  }

  /** The grant for a create or drop of this node's replica of `volumeId`: whom the kvdb lets do it now. */
  grantHere(volumeId: string): Promise<ReplicaGrant | undefined> {
    return this.#grants.here(volumeId)
  }

  /** At start: the grants this node wrote before it stopped are void; deletes them, says how many. */
  forgetOwnGrants(): Promise<number> {
    return this.#grants.forgetOwn()
  }

  /** The peer link to a node, at the address its member record gives. */
  async channel(nodeId: string): Promise<PeerChannel> {
    const member = await this.#kvdb.get<{ peerAddress?: string | null }>(keys.member(nodeId))
    const address = member?.value.peerAddress
    if (!this.#peers || !address) throw pxdError('PEER_UNAVAILABLE', `node ${nodeId} has no known peer address`)
    return this.#peers.link(nodeId, address)
  }

  /** A volume by its id, as the kvdb has it now: what a peer's request names. */
  async volumeById(volumeId: string): Promise<{ size: number; replicas: string[] } | undefined> {
    const records = await this.#kvdb.list<PlacedVolume>(keys.volumes())
    const r = records.find((e) => e.value.id === volumeId)?.value
    return r ? { size: r.spec.size, replicas: r.replicas.map((p) => p.nodeId) } : undefined
  }
}
