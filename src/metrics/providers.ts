/** State providers for Metrics built from the daemon's parts, so daemon.ts only wires them. */
import type { NodeInfo } from '../cluster/membership'
import type { LinkState } from '../replication'
import type { PeerState } from './metrics'

/** What the peer gauges need of a link (PeerLink fits). */
export interface LinkView {
  readonly state: LinkState
  readonly rttMs: number | undefined
}

export interface PeerStatesOptions {
  /** This node, left out of its own peers. */
  nodeId: string
  nodes: () => Promise<NodeInfo[]>
  /** This node's link to a peer, if one was made (PeerLinks.get). */
  link: (peer: string) => LinkView | undefined
}

/** Every other node: online from its lease, link state and round trip from this node's link to it. */
export function peerStates(o: PeerStatesOptions): () => Promise<PeerState[]> {
  return async () => (await o.nodes())
    .filter((n) => n.nodeId !== o.nodeId)
    .map((n) => {
      const link = o.link(n.nodeId)
      return { peer: n.nodeId, online: n.online, link: link?.state ?? 'none', rttMs: link?.rttMs }
    })
}
