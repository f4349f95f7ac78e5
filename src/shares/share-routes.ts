/**
 * How a client mount's requests reach a shared volume's server (a Route, which
 * share-mount.ts asks a RouteResolver for): this node's own export, or a peer's over the
 * peer channel.
 */
import { pxdError } from '../errors'
import type { PeerChannel } from '../replicas/protocol'
import type { ShareExport } from './share-export'
import { Op } from './wire'

/** How a request reaches the node serving the volume now. */
export interface Route {
  /** The serving node and its attach epoch: another epoch is another server, even on the same node. */
  readonly server: string
  /** `reclaim`: a lock this client held from the previous server. */
  send(xid: number, request: Uint8Array, timeoutMs: number, reclaim?: boolean): Promise<Uint8Array>
  cancel(xid: number): void
}

/** Finds the serving node (taking the volume over if nobody serves it); `stale` is the route that just failed. */
export type RouteResolver = (stale: Route | undefined) => Promise<Route>

/** Codes that mean "this server is gone or is not the server": look again and resend. */
export const REROUTE = ['IN_GRACE', 'SERVER_RESTARTED', 'SERVER_RECOVERED', 'NOT_SERVING', 'NOT_A_CLIENT', 'LINK_CLOSED', 'PEER_UNAVAILABLE', 'PEER_TIMEOUT', 'SHUTTING_DOWN', 'PEER_MISMATCH', 'KVDB_UNAVAILABLE', 'CONFLICT', 'IN_USE'] as const

/** Failures after which a request may have been applied all the same (it got no answer). */
export const NO_ANSWER: ReadonlySet<string> = new Set(['LINK_CLOSED', 'PEER_TIMEOUT', 'PEER_UNAVAILABLE'])

/** A ROOT request: what a mount asks first, and what tells a server this client is there. */
export function rootRequest(): Buffer {
  const root = Buffer.alloc(32)
  root.writeUInt32LE(Op.ROOT, 0)
  return root
}

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
