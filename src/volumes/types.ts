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
  /** mkfs ran on the first attach; from then on a missing file system is damage, not a new volume. */
  formatted?: boolean
}

/** Where a volume is attached; the epoch only ever grows (attach bumps it). */
export interface AttachmentRecord {
  nodeId: string | null
  epoch: number
  /** The last holder died or was cut off while attached: replicas may differ in unacknowledged writes. */
  unclean?: boolean
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
  error?: string
}

export interface ReplicaInfo {
  nodeId: string
  inSync: boolean
  online: boolean
  state: 'in-sync' | 'resyncing' | 'out-of-sync' | 'offline'
  resync?: { percent: number; bytesToGo: number; copiedBytes: number; etaSeconds: number | null }
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
  /** Fewer in-sync replicas than repl. */
  degraded: boolean
  attachedOn: string | null
  epoch: number
  mountpoint: string | null
  mounts: number
  replicas: ReplicaInfo[]
  /** The latest resync (running or finished) with the bytes it compared and copied. */
  lastResync: ResyncRecord | null
  createdAt: string
  /** A shared volume: the node serving it and the nodes that have it mounted as clients. */
  sharing?: SharingInfo
}

export interface SharingInfo {
  server: string | null
  /** Each client node's mounts and the file operations and bytes it sent (as it last published them). */
  clients: Array<{ nodeId: string; mounts: number; ops: number; bytes: number; since: string }>
}
