/**
 * What the pieces of the engine outside the data path (resync, scrub, repair) may reach of
 * it: the membership, the writes in flight, the hooks and whether it is fenced or closing.
 * The engine builds one and passes it; nothing here is public API.
 */
import type { ReplicaSet } from '../replicas/replica-set'
import type { InflightWrites } from './inflight'

export interface EngineEvents {
  checksumFailure(): void
  repaired(): void
}

/** Told of a block range rewritten by repair, or of a failed repair (with `error`). */
export type RepairListener = (nodeId: string, offset: number, length: number, error?: unknown, badBlock?: number) => void

export interface EngineCore {
  readonly volumeId: string
  readonly size: number
  readonly epoch: number
  readonly members: ReplicaSet
  readonly writes: InflightWrites
  readonly events: EngineEvents | undefined
  readonly onRepair: RepairListener | undefined
  /** Reads the volume's in-sync set from the kvdb (a commit whose outcome is unknown is read back). */
  readonly readInSync: (() => Promise<string[]>) | undefined
  /** How long to wait before reading back again when a read back failed. */
  readonly readBackRetryMs: number
  /** Requests from the volume's user (reads, writes, flushes) so far: a resync yields while it grows. */
  readonly foreground: { requests: number }
  /** Whether close() has been called. */
  readonly closing: boolean
  /** Whether the engine has been fenced. */
  readonly fenced: boolean
  /** A copy (resync, reconcile, repair) wrote [offset, offset + length): unflushed on the members until a flush that starts after it. */
  copied(offset: number, length: number): void
  /** Throws the engine's FENCED error once it has been fenced. */
  checkFenced(): void
}
