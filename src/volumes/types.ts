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
}

/** Where a volume is attached; the epoch only ever grows (attach bumps it). */
export interface AttachmentRecord {
  nodeId: string | null
  epoch: number
}

export type VolumeState = 'detached' | 'attached'

export interface ReplicaInfo {
  nodeId: string
  inSync: boolean
  online: boolean
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
  createdAt: string
}
