/**
 * The two ways a client mount's requests reach a shared volume's server (share-mount.ts
 * Route): this node's own export, or a peer's over the peer channel.
 */
import { pxdError } from '../errors'
import type { PeerChannel } from '../replicas/protocol'
import type { ShareExport } from './share-export'
import type { Route } from './share-mount'

/** To the export on this node (`self`), attached at `epoch`. */
export function localRoute(self: string, exp: ShareExport, epoch: number): Route {
  return {
    server: `${self}@${epoch}`,
    send: async (xid, request, _timeoutMs, reclaim) => {
      if (exp.closed) throw pxdError('NOT_SERVING', `shared volume ${exp.name} is no longer served here`)
      return exp.exec(self, xid, request, reclaim === true)
    },
    cancel: (xid) => exp.cancel(self, xid),
  }
}

/** To node `server`, which attached the volume (`vol`: its id) at `epoch`. */
export function remoteRoute(channel: PeerChannel, vol: string, server: string, epoch: number): Route {
  return {
    server: `${server}@${epoch}`,
    send: async (xid, data, timeoutMs, reclaim) => {
      const reply = await channel.request({ t: 'fsop', vol, xid, data, ...(reclaim ? { reclaim: true as const } : {}) }, { timeoutMs })
      if (!reply) throw pxdError('IO_ERROR', `node ${server} answered a file operation with no reply`)
      return reply
    },
    cancel: (xid) => void channel.request({ t: 'fscancel', vol, xid }).catch(() => undefined),
  }
}
