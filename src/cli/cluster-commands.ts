/**
 * pxctl's cluster commands that move replicas: drain, remove, rebalance. Drain and rebalance
 * only change records (the daemons do the copying, mounted or not); these commands follow
 * the moves until they are done and print each one. Ctrl-C stops following, not the move.
 */
import type { ApiClient } from '../api/client'
import { formatSize } from '../util/size'

type Out = (line: string) => void

const POLL_MS = 1_000
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Mark a node draining and, with `wait`, follow until no volume has a replica on it. */
export async function drainCommand(client: ApiClient, nodeId: string, o: { cancel: boolean; wait: boolean; out: Out }): Promise<{ node: string; draining: boolean; left: string[] }> {
  const r = await client.drainNode(nodeId, o.cancel)
  if (o.cancel) {
    o.out(`Node ${nodeId}: drain cancelled; it takes new replicas again\n`)
    return { node: nodeId, draining: false, left: r.volumes }
  }
  o.out(`Node ${nodeId}: draining; ${r.volumes.length} volume(s) have a replica on it${r.volumes.length ? `: ${r.volumes.join(', ')}` : ''}\n`)
  let left = r.volumes
  while (o.wait && left.length > 0) {
    await sleep(POLL_MS)
    const now = (await client.listVolumes()).filter((v) => v.replicas.some((p) => p.nodeId === nodeId)).map((v) => v.name)
    for (const name of left.filter((n) => !now.includes(n))) o.out(`${new Date().toISOString()} ${name}: moved off ${nodeId}\n`)
    left = now
  }
  if (o.wait) o.out(`Node ${nodeId}: drained (it holds no replica; remove it with: pxctl cluster remove ${nodeId})\n`)
  return { node: nodeId, draining: true, left }
}

/** Start moves one at a time, each followed until its old replica is gone; returns what moved. */
export async function rebalanceCommand(client: ApiClient, o: { out: Out; maxMoves?: number }): Promise<Array<{ volume: string; from: string; to: string; size: number }>> {
  const moved: Array<{ volume: string; from: string; to: string; size: number }> = []
  let waitingFor: string | undefined
  while (moved.length < (o.maxMoves ?? 100)) {
    const r = await client.rebalance()
    if (r.busy) {
      if (waitingFor !== r.busy) o.out(`waiting for ${r.busy} to finish its resync or move first\n`)
      waitingFor = r.busy
      await sleep(POLL_MS)
      continue
    }
    waitingFor = undefined
    if (!r.move) break
    const m = r.move
    o.out(`${new Date().toISOString()} moving ${m.volume} (${formatSize(m.size)}) from ${m.from} to ${m.to}\n`)
    for (;;) {
      await sleep(POLL_MS)
      const v = await client.inspectVolume(m.volume)
      if (!v.replicas.some((p) => p.nodeId === m.from) && v.replicas.every((p) => p.inSync)) break
    }
    o.out(`${new Date().toISOString()} moved ${m.volume} from ${m.from} to ${m.to}\n`)
    moved.push(m)
  }
  o.out(moved.length === 0 ? 'Balanced: no move would even out the nodes\n' : `Rebalanced: ${moved.length} replica(s) moved\n`)
  return moved
}
