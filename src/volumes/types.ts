import type { WrappedKey } from './keys'
import type { NodeInfo } from '../cluster/membership'
import type { VolumeSpec } from './options'

/** A volume as kvdb stores it. */
export interface VolumeRecord {
  id: string
  name: string
  spec: VolumeSpec
  createdAt: string
  /** Nodes holding a full copy. */
  replicas: Array<{ nodeId: string }>
  /**
   * Replicas known to hold every acknowledged write. Only these may serve reads or be the
   * source after a failover; a replica that misses a write leaves this set before the
   * write is acknowledged.
   */
  inSync: string[]
  /** A secure volume's data key, wrapped (keys.ts); never the key itself. */
  encryption?: WrappedKey
  /** mkfs ran on the first attach; from then on a missing file system is damage, not a new volume. */
  formatted?: boolean
  /**
   * Replicas on their way out (their node is lost, drained, or a rebalance moves them): each
   * has a newer replica to take its place, and it is dropped from the record once the
   * replicas that stay hold `repl` in-sync copies.
   */
  retiring?: string[]
  /** Since when the volume has had fewer in-sync replicas than repl (set by a demotion or a new replica). */
  degradedSince?: string
  /**
   * A snapshot: a read-only point-in-time copy of that volume, held as a layer of the
   * volume's replicas on `replicas` (its own id names the layer). Never healed or moved.
   */
  snapshotOf?: { id: string; name: string }
  /** A clone: the volume or snapshot it was made from (its replicas share that one's blocks). */
  clonedFrom?: { id: string; name: string }
}

/** Where a volume is attached; the epoch only ever grows (attach bumps it). */
export interface AttachmentRecord {
  nodeId: string | null
  epoch: number
  /** The last holder died or was cut off while attached: replicas may differ in unacknowledged writes. */
  unclean?: boolean
  /**
   * 'resync': held by a background resync (no mount). A mount anywhere takes the volume over
   * from it (a new claim, a newer epoch, the copy continues under the new holder).
   */
  purpose?: 'resync'
}

export type VolumeState = 'detached' | 'attached'

/** Progress of the latest resync of a volume, as its coordinator publishes it. */
export interface ResyncRecord {
  nodeId: string
  method: 'dirty-map' | 'checksum-scan'
  totalBytes: number
  scannedBytes: number
  copiedBytes: number
  state: 'running' | 'done' | 'failed'
  startedAt: string
  updatedAt: string
  epoch: number
  /** The node that ran this attempt. */
  coordinator?: string
  /** Bytes copied to this replica by earlier attempts that did not finish (the copy then resumed). */
  copiedBefore?: number
  /** Attempts so far at this replica (1 for the first). */
  attempt?: number
  error?: string
}

export interface ReplicaInfo {
  nodeId: string
  inSync: boolean
  online: boolean
  state: 'in-sync' | 'resyncing' | 'out-of-sync' | 'offline'
  /** On its way out: a newer replica takes its place (replacement, drain, rebalance). */
  retiring?: boolean
  resync?: { percent: number; bytesToGo: number; copiedBytes: number; etaSeconds: number | null }
  /** Host bytes the replica's files take on its node (discards give them back), as the node last reported (every few seconds); null when unknown. */
  allocatedBytes: number | null
}

/** What inspect and list show; JSON output uses it as is (sizes in bytes). */
export interface VolumeInfo {
  name: string
  id: string
  size: number
  repl: number
  fs: string
  blockSize: number
  shared: boolean
  options: Record<string, string>
  state: VolumeState
  /** Fewer in-sync replicas on online nodes than repl. */
  degraded: boolean
  /** Since when it has been degraded (null: it is not, or nobody knows). */
  degradedSince: string | null
  /** Why, one line per replica that is not an online in-sync one or is on its way out. */
  degradedReasons: string[]
  attachedOn: string | null
  /** Why it is attached: a mount, or healing only (a background resync or replacement, no mount). */
  attachedFor: 'mount' | 'healing' | null
  epoch: number
  mountpoint: string | null
  mounts: number
  replicas: ReplicaInfo[]
  /** The latest resync (running or finished) with the bytes it compared and copied. */
  lastResync: ResyncRecord | null
  createdAt: string
  /** A shared volume: the node serving it and the nodes that have it mounted as clients. */
  sharing?: SharingInfo
  /** A snapshot: the volume it was taken of; a clone: the volume or snapshot it was made from; else null. Snapshots are read-only. */
  parent: string | null
  readOnly: boolean
  /** A volume's snapshots, oldest first. */
  snapshots: Array<{ name: string; createdAt: string }>
}

export interface SharingInfo {
  server: string | null
  /** Each client node's mounts and the file operations and bytes it sent (as it last published them). */
  clients: Array<{ nodeId: string; mounts: number; ops: number; bytes: number; since: string }>
}

/** A node as pxctl cluster list shows it: membership, and what healing knows of it. */
export interface ClusterNodeInfo extends NodeInfo {
  /** pxctl cluster drain: takes no new replica, and every one it holds is being replaced. */
  draining: boolean
  /** When it was first seen offline (while it is). */
  offlineSince?: string
}
