/**
 * What the engine needs of one copy of a volume, wherever it lives: `LocalReplica` (this
 * node's ReplicaHost) and `ReplicaClient` (another node's, over the peer link) both are
 * one. Every request carries the coordinator's epoch, so a fenced coordinator's requests
 * are refused the same way by both.
 */
export interface Replica {
  /** The node that holds this copy. */
  readonly nodeId: string
  /** Open the copy at the coordinator's epoch (fences older coordinators); resolves to the epoch it was at before. */
  open(): Promise<number>
  write(offset: number, data: Uint8Array, seq: number): Promise<void>
  /** The range reads back as zeros from now on and its space goes back to the host; ordered and numbered like a write. */
  discard(offset: number, length: number, seq: number): Promise<void>
  read(offset: number, into: Uint8Array): Promise<void>
  flush(): Promise<void>
  /** Stored crc32c of each block in the range (scrub counts written blocks by them); see src/constants.ts. */
  digest(offset: number, length: number): Promise<Uint8Array>
  /**
   * A hash (HASH_BYTES) of each block's data in the range, 0 for one never written: resync
   * compares these, never crcs (any two blocks ending in their own crc32c share a crc32c).
   */
  hashes(offset: number, length: number): Promise<Uint8Array>
  /**
   * A copy on this node only: reads the range (block-aligned) into `into`, checked as read
   * checks it, and resolves to its hashes, in one pass over the disk (a resync's source).
   */
  readHashed?(offset: number, into: Uint8Array): Promise<Uint8Array>
  /** Open the copy again, at the same epoch, at a larger size (the volume grew): the copy grows first. */
  grow(size: number): Promise<void>
  /** Freeze the copy's contents as snapshot layer `snapId` (no data copied); the coordinator holds and flushes its writes first. */
  snapshot(snapId: string): Promise<void>
  /** The copy's contents become snapshot `snapId`'s. */
  restore(snapId: string): Promise<void>
  /** Flush and let go; the copy itself stays on its node. */
  close(): Promise<void>
}

/** Which copy of a volume a coordinator speaks to, and at which attach epoch. */
export interface ReplicaAt {
  readonly volumeId: string
  /** The volume's size: a replica of another size refuses the open. */
  readonly size: number
  readonly epoch: number
}
