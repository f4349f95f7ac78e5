import type { ReplicaStore } from '../store/replica-store'

/**
 * What the engine needs of one copy of a volume, wherever it lives. The local copy is a
 * ReplicaStore; remote copies (over peer links) implement the same interface.
 */
export interface Replica {
  /** The node that holds this copy. */
  readonly nodeId: string
  write(offset: number, data: Uint8Array): Promise<void>
  read(offset: number, into: Uint8Array): Promise<void>
  flush(): Promise<void>
  close(): Promise<void>
}

export class LocalReplica implements Replica {
  readonly nodeId: string
  readonly #store: ReplicaStore

  constructor(nodeId: string, store: ReplicaStore) {
    this.nodeId = nodeId
    this.#store = store
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#store.write(offset, data)
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#store.read(offset, into)
  }

  flush(): Promise<void> {
    return this.#store.flush()
  }

  close(): Promise<void> {
    return this.#store.close()
  }
}
