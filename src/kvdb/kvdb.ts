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
  /** Idempotent. After close every call fails with KVDB_UNAVAILABLE. */
  close(): Promise<void>
}

/** Key layout, in one place, so both stores and every caller agree. */
export const keys = {
  volume: (name: string) => `volumes/${name}`,
  volumes: () => 'volumes/',
  attachment: (name: string) => `attachments/${name}`,
  attachments: () => 'attachments/',
  node: (id: string) => `nodes/${id}`,
  nodes: () => 'nodes/',
} as const
