/**
 * A real cluster for tests: one etcd and N pxd daemons as separate processes, each with
 * its own data dir, run dir, plugin socket, API port and peer port, sharing a cluster
 * secret. On loopback by default; with `network` every node and etcd sit in network
 * namespaces of their own (network.ts), so single links can be cut; with `powerLoss` a
 * node's data dir is on the power-loss file system (power-loss.ts), so it can lose power.
 */
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { freePort, makeTempDir, removeDir, startDaemon, type Daemon } from './daemon'
import { startEtcd, type EtcdServer, type EtcdTls } from './etcd'
import { createNetwork, type Network } from './network'
import { startPowerLossFs, type PowerLossMount } from './power-loss'

export const TEST_NODE_TTL = 3

export interface ClusterNode extends Daemon {
  nodeId: string
  peerPort: number
  /** The node's disk, when its data dir is on the power-loss file system. */
  disk?: PowerLossMount
}

export interface Cluster {
  dir: string
  etcd: EtcdServer
  clusterId: string
  secretFile: string
  secret: Buffer
  nodes: ClusterNode[]
  node(id: string): ClusterNode
  /** Start (or start again, same dirs and ports) one node; `more` flags, another build, a pxd to take over from. */
  start(nodeId: string, more?: NodeStartOptions): Promise<ClusterNode>
  /**
   * The node loses power: kill -9, then its disk drops what was not durable (every dirty
   * page, or a random half of them with `seed`). Start it again with `start`.
   */
  powerLoss(nodeId: string, seed?: number): Promise<void>
  /** The namespaces and links, with `network`. */
  network?: Network
  /** The API token every node asks of changing calls, with `network` (its APIs are beyond loopback). */
  apiToken?: string
  stop(): Promise<void>
}

export interface NodeStartOptions {
  extraArgs?: string[]
  bin?: string
  after?: Daemon['child']
  env?: Record<string, string>
  /** Run the daemon under this (after the cluster's own prefix). */
  commandPrefix?: string[]
  inheritFds?: number[]
}

export interface ClusterOptions {
  /** etcd over https (and client certificates, with clientCertAuth); nodes dial https://. */
  etcdTls?: EtcdTls
  /** Runs once etcd is up, before any node (e.g. enable auth); what it returns goes to every node. */
  etcdSetup?: (etcd: EtcdServer, clusterId: string) => Promise<string[]>
  env?: Record<string, string>
  nodeArgs?: string[]
  /** More pxd flags for every node, or per node (e.g. its own TLS certificate). */
  extraArgs?: string[] | ((nodeId: string) => string[])
  /** Every node and etcd in its own network namespace. */
  network?: boolean
  /** Data dirs on the power-loss file system: every node's, or those named. */
  powerLoss?: boolean | string[]
  /** A node's plugin socket (default <node dir>/plugins/pxd.sock). */
  pluginSocket?: (nodeId: string) => string
  /**
   * Run a node's daemon under this (e.g. nsenter into a mount namespace of its own); with
   * `network` it comes after the network namespace's prefix.
   */
  commandPrefix?: (nodeId: string) => string[]
}

export async function startCluster(nodeIds: string[], options: ClusterOptions = {}): Promise<Cluster> {
  const dir = makeTempDir('pxd-cluster-')
  const network = options.network ? createNetwork(['etcd', ...nodeIds]) : undefined
  const disks = new Map<string, PowerLossMount>()
  const clusterId = `test-${randomBytes(4).toString('hex')}`
  let etcd: EtcdServer
  try {
    etcd = await startEtcd({ dir: path.join(dir, 'etcd'), ...(options.etcdTls ? { tls: options.etcdTls } : {}), ...(network ? { host: network.ip('etcd'), commandPrefix: network.enter('etcd') } : {}) })
  } catch (err) {
    network?.destroy()
    removeDir(dir)
    throw err
  }
  let etcdArgs: string[] = []
  try {
    etcdArgs = options.etcdSetup ? await options.etcdSetup(etcd, clusterId) : []
  } catch (err) {
    await etcd.stop().catch(() => undefined)
    network?.destroy()
    removeDir(dir)
    throw err
  }
  const secret = randomBytes(32)
  const secretFile = path.join(dir, 'secret')
  writeFileSync(secretFile, secret.toString('hex'), { mode: 0o600 })
  const apiToken = network ? randomBytes(16).toString('hex') : undefined
  const tokenFile = path.join(dir, 'api-token')
  if (apiToken) writeFileSync(tokenFile, apiToken, { mode: 0o600 })
  const onPowerLossFs = (nodeId: string) => options.powerLoss === true || (Array.isArray(options.powerLoss) && options.powerLoss.includes(nodeId))
  const ports = new Map<string, { api: number; peer: number }>()
  const nodes: ClusterNode[] = []

  const start = async (nodeId: string, more: NodeStartOptions = {}): Promise<ClusterNode> => {
    let p = ports.get(nodeId)
    if (!p) {
      p = { api: await freePort(), peer: await freePort() }
      ports.set(nodeId, p)
    }
    const nodeDir = path.join(dir, nodeId)
    let disk = disks.get(nodeId)
    if (!disk && onPowerLossFs(nodeId)) {
      disk = await startPowerLossFs(path.join(nodeDir, 'disk'), path.join(nodeDir, 'data'))
      disks.set(nodeId, disk)
    }
    const host = network ? network.ip(nodeId) : '127.0.0.1'
    const prefix = [...(network ? network.enter(nodeId) : []), ...(options.commandPrefix?.(nodeId) ?? []), ...(more.commandPrefix ?? [])]
    const daemon = await startDaemon({
      dir: nodeDir,
      nodeId,
      apiPort: p.api,
      ...(network ? { apiHost: host } : {}),
      ...(prefix.length > 0 ? { commandPrefix: prefix } : {}),
      ...(options.pluginSocket ? { pluginSocket: options.pluginSocket(nodeId) } : {}),
      ...(options.env || more.env ? { env: { ...options.env, ...more.env } } : {}),
      ...(more.inheritFds ? { inheritFds: more.inheritFds } : {}),
      ...(options.nodeArgs ? { nodeArgs: options.nodeArgs } : {}),
      extraArgs: [
        '--kvdb', `${etcd.tls ? 'https' : 'etcd'}://${etcd.endpoint}`,
        ...etcdArgs,
        '--cluster-id', clusterId,
        '--peer-listen', `${host}:${p.peer}`,
        ...(apiToken ? ['--api-token-file', tokenFile] : []),
        '--cluster-secret-file', secretFile,
        '--node-ttl', String(TEST_NODE_TTL),
        ...(typeof options.extraArgs === 'function' ? options.extraArgs(nodeId) : options.extraArgs ?? []),
        ...(more.extraArgs ?? []),
      ],
      ...(more.bin ? { bin: more.bin } : {}),
      ...(more.after ? { after: more.after } : {}),
    })
    const node: ClusterNode = Object.assign(daemon, { nodeId, peerPort: p.peer }, disk ? { disk } : {})
    const i = nodes.findIndex((n) => n.nodeId === nodeId)
    if (i >= 0) nodes[i] = node
    else nodes.push(node)
    return node
  }

  const cluster: Cluster = {
    dir, etcd, clusterId, secretFile, nodes,
    ...(network ? { network } : {}),
    ...(apiToken ? { apiToken } : {}),
    // The peer secret is the file's text, as the daemon reads it.
    secret: Buffer.from(secret.toString('hex'), 'utf8'),
    node: (id) => {
      const n = nodes.find((x) => x.nodeId === id)
      if (!n) throw new Error(`no node ${id}`)
      return n
    },
    start,
    powerLoss: async (nodeId, seed) => {
      const n = cluster.node(nodeId)
      if (!n.disk) throw new Error(`node ${nodeId} is not on a power-loss file system (startCluster's powerLoss option)`)
      await n.kill()
      await n.disk.cut(seed)
    },
    stop: async () => {
      network?.heal()
      for (const n of nodes) await n.stop().catch(() => undefined)
      for (const d of disks.values()) await d.stop().catch(() => undefined)
      await etcd.stop().catch(() => undefined)
      network?.destroy()
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
