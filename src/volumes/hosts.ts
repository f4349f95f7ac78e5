/**
 * What the volume manager lends the sub-modules that call back into it: shared volumes
 * (ShareHost, share-state.ts) and the healer (HealerHost, healer.ts). A shared volume is
 * attached and detached here like any other (local-volumes.ts), its server is whoever
 * holds its attachment (attachments.ts), its peers are reached through the replica
 * directory's channels; the healer holds volumes here with no mount and starts their
 * resyncs (resyncs.ts). Nothing is kept here: each call reads the manager's state.
 */
import type { Membership } from '../cluster/membership'
import type { Frontend } from '../frontend/frontend'
import type { KvEntry } from '../kvdb/kvdb'
import type { ReplicaDirectory } from '../replicas/directory'
import type { ShareHost } from '../shares/share-state'
import type { SharedVolumes } from '../shares/shared-volumes'
import type { Attachments } from './attachments'
import type { HealerHost } from './healer'
import type { LocalVolumes } from './local-volumes'
import type { Resyncs } from './resyncs'
import type { VolumeRecord } from './types'

export interface ShareHostOptions {
  local: Pick<LocalVolumes, 'map' | 'attachHere' | 'checkKey' | 'detach'>
  attachments: Pick<Attachments, 'get'>
  membership: Pick<Membership, 'isOnline'>
  replicas: Pick<ReplicaDirectory, 'channel'>
  frontend: Pick<Frontend, 'mountpointOf' | 'servedPathOf'>
  /** The volume's record; NOT_FOUND when there is none. */
  requireRecord: (name: string) => Promise<KvEntry<VolumeRecord>>
}

export function shareHost(o: ShareHostOptions): ShareHost {
  return {
    attach: (name, mountpoint, keyOptions) => o.local.attachHere(name, mountpoint, keyOptions),
    checkKey: (name, keyOptions) => o.local.checkKey(name, keyOptions),
    detach: async (name) => o.local.map.has(name) && o.local.detach(name, o.local.map.get(name)!, false),
    // A node holding it for healing only serves nothing: the mount takes it over.
    holder: async (name) => {
      const att = (await o.attachments.get(name))?.value
      return att?.nodeId && att.purpose !== 'resync' ? { nodeId: att.nodeId, epoch: att.epoch } : null
    },
    isOnline: (nodeId) => o.membership.isOnline(nodeId),
    channel: (nodeId) => o.replicas.channel(nodeId),
    volumeId: async (name) => (await o.requireRecord(name)).value.id,
    mountpointOf: (name) => o.frontend.mountpointOf(name),
    servedPathOf: (name) => o.frontend.servedPathOf(name),
  }
}

export interface HealerHostOptions {
  local: Pick<LocalVolumes, 'map' | 'healing' | 'dropHealing' | 'attachForHealing' | 'releaseHealing'>
  /** A shared volume is never taken for healing while this node has it as a share. */
  shares: Pick<SharedVolumes, 'has'>
  resyncs: Pick<Resyncs, 'check' | 'running'>
}

export function healerHost(o: HealerHostOptions): HealerHost {
  return {
    attached: (name) => {
      const local = o.local.map.get(name)
      return local && { epoch: local.epoch, background: local.mountpoint === null }
    },
    healing: () => o.local.healing(),
    dropHealing: (name, epoch) => o.local.dropHealing(name, epoch),
    attachForHealing: (name) => o.local.attachForHealing(name, () => o.shares.has(name)),
    releaseHealing: (name) => o.local.releaseHealing(name),
    retire: async (name, nodeIds) => {
      const local = o.local.map.get(name)
      for (const nodeId of nodeIds) await local?.engine.retire(nodeId)
    },
    resyncCheck: (name) => o.resyncs.check(name),
    resyncRunning: (name) => o.resyncs.running(name),
  }
}
