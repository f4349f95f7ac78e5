/**
 * Where the copies of a new volume go: `repl` distinct online nodes with room for it,
 * least-allocated first so that volumes spread over the cluster.
 */
import { pxdError } from '../errors'
import type { NodeInfo } from '../cluster/membership'
import { formatSize } from '../util/size'

export interface PlacementInput {
  repl: number
  size: number
  nodes: NodeInfo[]
  /** Bytes already promised to volumes on each node (sum of their replicas' sizes). */
  allocated: Map<string, number>
}

export function placeReplicas({ repl, size, nodes, allocated }: PlacementInput): string[] {
  const online = nodes.filter((n) => n.online && n.capacity)
  const roomy = online.filter((n) => n.capacity!.free >= size)
  if (roomy.length >= repl) {
    return roomy
      .sort((a, b) => (allocated.get(a.nodeId) ?? 0) - (allocated.get(b.nodeId) ?? 0) || b.capacity!.free - a.capacity!.free || (a.nodeId < b.nodeId ? -1 : 1))
      .slice(0, repl)
      .map((n) => n.nodeId)
  }
  const offline = nodes.filter((n) => !n.online).map((n) => n.nodeId)
  const full = online.filter((n) => n.capacity!.free < size).map((n) => `${n.nodeId} (${formatSize(n.capacity!.free)} free)`)
  const parts = [`repl=${repl} needs ${repl} online node${repl === 1 ? '' : 's'} with ${formatSize(size)} free, but only ${roomy.length} ${roomy.length === 1 ? 'is' : 'are'} available`]
  if (roomy.length > 0) parts.push(`usable: ${roomy.map((n) => n.nodeId).join(', ')}`)
  if (full.length > 0) parts.push(`too full: ${full.join(', ')}`)
  if (offline.length > 0) parts.push(`offline: ${offline.join(', ')}`)
  if (nodes.length === 1) parts.push('this is a single-node pxd; join more nodes with --kvdb etcd://...')
  // Enough nodes, too little room: a space problem, not a cluster-size problem.
  throw pxdError(online.length >= repl ? 'NO_SPACE' : 'UNSATISFIABLE', parts.join('; '))
}
