/**
 * The cluster's metadata store. One interface, two implementations: an embedded
 * single-node store (a file under the data dir) and etcd for a real cluster.
 * Values are JSON documents. Every change that depends on what was read goes through
 * `txn`, a compare-and-swap on modification revisions, so two writers never both win.
 */
export interface KvEntry<T = unknown> {
  key: string
  value: T
  /** Revision of the store at the entry's last change; 0 compares as "absent". */
  modRevision: number
}

export interface KvCompare {
  key: string
  /** Expected modRevision; 0 means the key must not exist. */
  modRevision: number
}

export interface KvTxn {
  compares?: KvCompare[]
  puts?: Array<{ key: string; value: unknown }>
  deletes?: string[]
}

export interface Kvdb {
  get<T>(key: string): Promise<KvEntry<T> | undefined>
  list<T>(prefix: string): Promise<Array<KvEntry<T>>>
  /** Apply puts and deletes atomically if every compare holds; false when one did not. */
  txn(txn: KvTxn): Promise<boolean>
  put(key: string, value: unknown): Promise<void>
  delete(key: string): Promise<void>
  /**
   * Put a key that lives only as long as this process keeps renewing it (an etcd lease
   * of `ttlSeconds`): a node's liveness. If the lease is lost (the store was unreachable
   * for longer than the TTL) the key is gone; the store keeps trying to grant a new lease
   * and puts the latest value again when it succeeds.
   */
  putLeased(key: string, value: unknown, ttlSeconds: number): Promise<LeasedKey>
  /** Where the store is, for messages and status: "embedded" or "etcd://host:port,...". */
  readonly description: string
  /** Idempotent. After close every call fails with KVDB_UNAVAILABLE. */
  close(): Promise<void>
}

export interface LeasedKey {
  /** Replace the value, keeping it under the lease. */
  update(value: unknown): Promise<void>
  /** Called when the lease is lost, and again (with `undefined`) when a new one holds the key. */
  onChange(listener: (lost: Error | undefined) => void): void
  /** Delete the key and revoke the lease. Idempotent. */
  revoke(): Promise<void>
  /**
   * Stop renewing and let go, leaving the key to its lease: it lasts until the TTL runs out
   * unless a successor (a live restart) puts it again first. The store's close no longer
   * revokes it. Idempotent.
   */
  release(): void
}

/** Key layout, in one place, so both stores and every caller agree. */
export const keys = {
  volume: (name: string) => `volumes/${name}`,
  volumes: () => 'volumes/',
  attachment: (name: string) => `attachments/${name}`,
  attachments: () => 'attachments/',
  /** The latest resync of one replica of a volume and its progress. */
  resync: (name: string, nodeId: string) => `resync/${name}/${nodeId}`,
  resyncs: (name: string) => `resync/${name}/`,
  /** A node's durable membership record (address, first seen). */
  member: (id: string) => `members/${id}`,
  members: () => 'members/',
  /** A node's liveness and capacity, under its lease: absent means offline. */
  alive: (id: string) => `alive/${id}`,
  alives: () => 'alive/',
  /** When a node was first seen offline (written by whoever saw it; the node deletes it when it starts). */
  offlineSince: (id: string) => `offline/${id}`,
  offlineSinces: () => 'offline/',
  /** A node being drained: no new replicas go there, and every replica it holds moves off it. */
  draining: (id: string) => `draining/${id}`,
  drainings: () => 'draining/',
  /** A node that has a shared volume mounted as a client, under that node's lease. */
  shareClient: (name: string, nodeId: string) => `shares/${name}/${nodeId}`,
  shareClients: (name: string) => `shares/${name}/`,
  /** Which node may create or drop the replica of volume (or snapshot layer) `volumeId` on `nodeId` now (replicas/grants.ts). */
  replicaGrant: (volumeId: string, nodeId: string) => `grants/${volumeId}/${nodeId}`,
  replicaGrants: () => 'grants/',
} as const
