/**
 * The parts of shared-volumes.ts that are only shapes: what the volume manager lends it
 * (ShareHost), what it is built with, and what it knows of each volume on this node.
 */
import type { Logger } from 'pino'
import type { LeasedKey } from '../kvdb/kvdb'
import type { PeerChannel } from '../replicas/protocol'
import type { KeyedMutex } from '../util/mutex'
import type { KeyOptions } from '../volumes/keys'
import type { ShareExecutor } from './executor'
import type { ShareExport } from './share-export'
import type { ShareMount } from './share-mount'
import type { ShareRegistry } from './share-registry'
import type { ShareService } from './share-service'

/** What the volume manager lends: attach and detach as for any volume, and who holds what. */
export interface ShareHost {
  /** Claim and attach here, the file system mounted at `mountpoint` (default: the volume's mountpoint); a secure volume opens with `keyOptions`. */
  attach(name: string, mountpoint?: string, keyOptions?: KeyOptions): Promise<{ mountpoint: string; volumeId: string; epoch: number }>
  /** KEY_REQUIRED or BAD_KEY unless `keyOptions` open a secure volume's key (nothing for a plain one). */
  checkKey(name: string, keyOptions: KeyOptions): Promise<void>
  detach(name: string): Promise<unknown>
  /** The node holding the volume's attachment now and its epoch, or null. */
  holder(name: string): Promise<{ nodeId: string; epoch: number } | null>
  isOnline(nodeId: string): Promise<boolean>
  channel(nodeId: string): Promise<PeerChannel>
  /** The volume's id (what peer frames name). */
  volumeId(name: string): Promise<string>
  mountpointOf(name: string): string
  servedPathOf(name: string): string
}

export interface ShareState {
  name: string
  since: string
  mountIds: Set<string>
  /** This node's users reach the volume through the FUSE client. */
  client: ShareMount | undefined
  registration: LeasedKey | undefined
  /** This node serves the volume, attached at this epoch. */
  export: ShareExport | undefined
  epoch: number
  /** What opens a secure volume's key here: a client keeps it for a takeover. */
  keyOptions: KeyOptions
}

export interface SharedVolumesOptions {
  nodeId: string
  host: ShareHost
  registry: ShareRegistry
  service: ShareService
  executor: ShareExecutor
  locks: KeyedMutex
  log: Logger
}


export function newState(name: string, mountId: string, keyOptions: KeyOptions): ShareState {
  return { name, since: new Date().toISOString(), mountIds: new Set([mountId]), client: undefined, registration: undefined, export: undefined, epoch: 0, keyOptions }
}
