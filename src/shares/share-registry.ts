/**
 * Which nodes have a shared volume mounted as clients: one kvdb key per (volume, client
 * node), under a lease of that node's, so a client that dies or is cut off drops out by
 * itself once its lease expires. The client keeps its mount count and what it sent in the
 * value; the serving node reads the set to know when it may detach, and inspect shows it.
 */
import { keys, type Kvdb, type LeasedKey } from '../kvdb/kvdb'

export interface ShareClientRecord {
  nodeId: string
  /** Mounts of the volume on that node (Docker mount IDs, anonymous ones). */
  mounts: number
  /** File operations and payload bytes the node sent since it mounted. */
  ops: number
  bytes: number
  since: string
}

export class ShareRegistry {
  readonly #kvdb: Kvdb
  readonly #nodeId: string
  readonly #ttlSeconds: number

  constructor(kvdb: Kvdb, nodeId: string, ttlSeconds: number) {
    this.#kvdb = kvdb
    this.#nodeId = nodeId
    this.#ttlSeconds = ttlSeconds
  }

  /** This node's record for the volume, under a lease of its own. */
  register(name: string, record: Omit<ShareClientRecord, 'nodeId'>): Promise<LeasedKey> {
    return this.#kvdb.putLeased(keys.shareClient(name, this.#nodeId), { nodeId: this.#nodeId, ...record } satisfies ShareClientRecord, this.#ttlSeconds)
  }

  /** Live client records of a volume (expired leases are gone). */
  async clients(name: string): Promise<ShareClientRecord[]> {
    return (await this.#kvdb.list<ShareClientRecord>(keys.shareClients(name))).map((e) => e.value)
  }

  /** Clients other than this node. */
  async others(name: string): Promise<ShareClientRecord[]> {
    return (await this.clients(name)).filter((c) => c.nodeId !== this.#nodeId)
  }
}
