/**
 * A real cluster for tests: one etcd and N pxd daemons as separate processes on
 * loopback, each with its own data dir, run dir, plugin socket, API port and peer port,
 * sharing a cluster secret.
 */
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { freePort, makeTempDir, removeDir, startDaemon, type Daemon } from './daemon'
import { startEtcd, type EtcdServer } from './etcd'

export const TEST_NODE_TTL = 3

export interface ClusterNode extends Daemon {
  nodeId: string
  peerPort: number
}

export interface Cluster {
  dir: string
  etcd: EtcdServer
  clusterId: string
  secretFile: string
  secret: Buffer
  nodes: ClusterNode[]
  node(id: string): ClusterNode
  /** Start (or start again, same dirs and ports) one node. */
  start(nodeId: string): Promise<ClusterNode>
  stop(): Promise<void>
}

export interface ClusterOptions {
  env?: Record<string, string>
  nodeArgs?: string[]
  /** More pxd flags for every node, or per node (e.g. its own TLS certificate). */
  extraArgs?: string[] | ((nodeId: string) => string[])
}

export async function startCluster(nodeIds: string[], options: ClusterOptions = {}): Promise<Cluster> {
  const dir = makeTempDir('pxd-cluster-')
  const etcd = await startEtcd({ dir: path.join(dir, 'etcd') })
  const secret = randomBytes(32)
  const secretFile = path.join(dir, 'secret')
  writeFileSync(secretFile, secret.toString('hex'), { mode: 0o600 })
  const clusterId = `test-${randomBytes(4).toString('hex')}`
  const ports = new Map<string, { api: number; peer: number }>()
  const nodes: ClusterNode[] = []

  const start = async (nodeId: string): Promise<ClusterNode> => {
    let p = ports.get(nodeId)
    if (!p) {
      p = { api: await freePort(), peer: await freePort() }
      ports.set(nodeId, p)
    }
    const daemon = await startDaemon({
      dir: path.join(dir, nodeId),
      nodeId,
      apiPort: p.api,
      ...(options.env ? { env: options.env } : {}),
      ...(options.nodeArgs ? { nodeArgs: options.nodeArgs } : {}),
      extraArgs: [
        '--kvdb', `etcd://${etcd.endpoint}`,
        '--cluster-id', clusterId,
        '--peer-listen', `127.0.0.1:${p.peer}`,
        '--cluster-secret-file', secretFile,
        '--node-ttl', String(TEST_NODE_TTL),
        ...(typeof options.extraArgs === 'function' ? options.extraArgs(nodeId) : options.extraArgs ?? []),
      ],
    })
    const node: ClusterNode = Object.assign(daemon, { nodeId, peerPort: p.peer })
    const i = nodes.findIndex((n) => n.nodeId === nodeId)
    if (i >= 0) nodes[i] = node
    else nodes.push(node)
    return node
  }

  const cluster: Cluster = {
    dir, etcd, clusterId, secretFile, nodes,
    // The peer secret is the file's text, as the daemon reads it.
    secret: Buffer.from(secret.toString('hex'), 'utf8'),
    node: (id) => {
      const n = nodes.find((x) => x.nodeId === id)
      if (!n) throw new Error(`no node ${id}`)
      return n
    },
    start,
    stop: async () => {
      for (const n of nodes) await n.stop().catch(() => undefined)
      await etcd.stop().catch(() => undefined)
      removeDir(dir)
    },
  }
  try {
    for (const id of nodeIds) await start(id)
  } catch (err) {
    await cluster.stop()
    throw err
  }
  return cluster
}

/** Wait for a condition, polling; fail with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await fn()
      if (v !== undefined && v !== false) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}
