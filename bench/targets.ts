/**
 * What the fio jobs run against: a 2-node pxd cluster on loopback (etcd + two daemons as
 * separate processes, from the test harness), a repl=1 volume held by node-a and a repl=2
 * volume on node-a + node-b, both mounted on node-a, and a plain file in node-a's data dir
 * as the host baseline; with --peers, GlusterFS beside them (gluster.ts). Everything made
 * here is undone by `teardown()`, which may be called at any point, more than once.
 */
import { existsSync, rmSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../src/api/client'
import { GlusterPeers, type PeerTarget, type PeerTargetId } from './gluster'
import type { VolumeInfo } from '../src/volumes/types'
import type { FuseServerKind } from '../src/frontend/device-directory'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../test/helpers/cluster'
import { leftoversUnder } from '../test/helpers/daemon'
import { pluginCall } from '../test/helpers/plugin-client'

export type TargetId = 'host' | 'repl1' | 'repl2'
/** pxd's targets and, with --peers, GlusterFS's. */
export type AnyTargetId = TargetId | PeerTargetId

export interface Target {
  id: TargetId
  label: string
  /** The node whose file system / mount the file is on. */
  nodeId: string
  /** The fio file. */
  file: string
  volume?: { name: string; id: string; mountpoint: string; replicas: string[] }
}

export const FIO_FILE = 'pxd-bench.fio'
const MOUNT_ID = 'pxd-bench'
const LOCAL_NODE = 'node-a'
const NODE_IDS = [LOCAL_NODE, 'node-b']

export type Log = (line: string) => void

export class BenchEnvironment {
  cluster: Cluster | undefined
  readonly targets: Target[] = []
  /** GlusterFS beside pxd (--peers). */
  peers: GlusterPeers | undefined
  /** Volumes created (name -> node whose socket created it), for teardown. */
  readonly #created = new Map<string, ClusterNode>()
  /** Volumes mounted (name -> node it is mounted on). */
  readonly #mounted = new Map<string, ClusterNode>()
  readonly #files: string[] = []
  #teardown: Promise<string[]> | undefined
  /** startCluster while it runs, so that a teardown meanwhile can wait for it and stop it. */
  #starting: Promise<Cluster> | undefined

  constructor(private readonly log: Log) {}

  get local(): ClusterNode {
    if (!this.cluster) throw new Error('the cluster is not running')
    return this.cluster.node(LOCAL_NODE)
  }

  /** pxd's targets, then Gluster's: what the fio jobs run on, in this order. */
  get fioTargets(): Array<Target | PeerTarget> {
    return [...this.targets, ...(this.peers?.targets ?? [])]
  }

  /** Start the cluster and create, place and mount the volumes; with `peers`, Gluster's too. */
  async setUp(volumeSize: number, fuseServer: FuseServerKind, peerPlaintext = false, peers = false): Promise<void> {
    const missing = peers ? await GlusterPeers.missing() : []
    if (missing.length > 0) throw new Error(`--peers: ${missing.join('; ')}`)
    this.log(`starting etcd and pxd ${NODE_IDS.join(', ')} on loopback (--fuse-server ${fuseServer}, peer links ${peerPlaintext ? 'plaintext' : 'TLS-PSK'})`)
    this.#starting = startCluster(NODE_IDS, { env: { PXD_FUSE_SERVER: fuseServer, ...(peerPlaintext ? { PXD_PEER_PLAINTEXT: '1' } : {}) } })
    this.cluster = await this.#starting
    if (this.#teardown) throw new Error('interrupted while the cluster started')
    const a = this.local
    const api = new ApiClient(a.apiUrl)
    await waitFor('both nodes online with a capacity', async () => {
      const nodes = await api.listNodes()
      return NODE_IDS.every((id) => nodes.some((n) => n.nodeId === id && n.online && n.capacity)) || undefined
    }, 30_000)

    const hostFile = path.join(a.dataDir, FIO_FILE)
    this.#files.push(hostFile)
    this.targets.push({ id: 'host', label: 'host', nodeId: LOCAL_NODE, file: hostFile })

    // repl=2 first: it takes both nodes, and a repl=1 volume then goes to the least
    // allocated one, which is decided by the replicas already placed.
    const r2 = await this.#createVolume(a, 'bench-r2', volumeSize, 2)
    if (r2.replicas.length !== 2) throw new Error(`bench-r2 has ${r2.replicas.length} replicas, not 2`)
    const r1 = await this.#createLocalRepl1(a, volumeSize)
    const holder = this.cluster.node(r1.replicas[0]!.nodeId)
    if (holder.nodeId !== LOCAL_NODE) this.log(`bench-r1 stays on ${holder.nodeId}; it is mounted there (same host file system)`)

    for (const [info, node, id, label] of [[r1, holder, 'repl1', 'repl=1'], [r2, a, 'repl2', 'repl=2']] as const) {
      const mountpoint = await this.#mount(node, info.name)
      const file = path.join(mountpoint, FIO_FILE)
      this.#files.push(file)
      this.targets.push({
        id, label, nodeId: node.nodeId, file,
        volume: { name: info.name, id: info.id, mountpoint, replicas: info.replicas.map((r) => r.nodeId) },
      })
      this.log(`${label}: volume ${info.name} (${info.id}) on ${info.replicas.map((r) => r.nodeId).join(' + ')}, mounted on ${node.nodeId} at ${mountpoint}`)
    }
    if (peers && !this.#teardown) {
      this.peers = new GlusterPeers(this.log, FIO_FILE)
      await this.peers.setUp()
    }
  }

  /** A daemon that exited while the benchmark ran; undefined while all live. */
  deadDaemon(): ClusterNode | undefined {
    return this.cluster?.nodes.find((n) => n.child.exitCode !== null || n.child.signalCode !== null)
  }

  async inspect(name: string): Promise<VolumeInfo> {
    return new ApiClient(this.local.apiUrl).inspectVolume(name)
  }

  /**
   * Remove fio files, unmount and remove volumes, stop daemons and etcd. Never throws;
   * returns what went wrong. A second call gets the first call's promise.
   */
  teardown(): Promise<string[]> {
    this.#teardown ??= this.#doTeardown()
    return this.#teardown
  }

  async #doTeardown(): Promise<string[]> {
    const problems: string[] = []
    if (!this.cluster && this.#starting) this.cluster = await this.#starting.catch(() => undefined)
    for (const file of this.#files) {
      try {
        rmSync(file, { force: true })
      } catch (err) {
        problems.push(`remove ${file}: ${(err as Error).message}`)
      }
    }
    // A daemon that got the same Ctrl-C is already unmounting everything itself; its
    // socket is gone then, which is not a problem. What counts is what is left at the end.
    const note = (what: string) => (err: Error) => {
      if (!/ENOENT|ECONNREFUSED|ECONNRESET|socket hang up/.test(err.message)) problems.push(`${what}: ${err.message}`)
    }
    for (const [name, node] of this.#mounted) {
      if (alive(node)) await plugin(node, '/VolumeDriver.Unmount', { Name: name, ID: MOUNT_ID }).catch(note(`unmount ${name}`))
    }
    for (const [name, node] of this.#created) {
      if (alive(node)) await plugin(node, '/VolumeDriver.Remove', { Name: name }).catch(note(`remove volume ${name}`))
    }
    if (this.cluster) {
      // stop(): SIGTERM each daemon (it unmounts and detaches what it still has), clean
      // what a daemon that did not stop left under its run dir, stop etcd, remove the dir
      // (kept only when something is still mounted or attached under it).
      await this.cluster.stop().catch((err: Error) => problems.push(`stop cluster: ${err.message}`))
      if (existsSync(this.cluster.dir)) {
        const left = leftoversUnder(this.cluster.dir)
        problems.push(`${this.cluster.dir} is left behind${left.length > 0 ? `: ${left.join(', ')}` : ''}`)
      }
    }
    if (this.peers) problems.push(...await this.peers.teardown())
    return problems
  }

  async #createVolume(node: ClusterNode, name: string, size: number, repl: number): Promise<VolumeInfo> {
    await plugin(node, '/VolumeDriver.Create', { Name: name, Opts: { size: String(size) + 'B', repl: String(repl) } })
    this.#created.set(name, node)
    return this.inspect(name)
  }

  async #removeVolume(node: ClusterNode, name: string): Promise<void> {
    await plugin(node, '/VolumeDriver.Remove', { Name: name })
    this.#created.delete(name)
  }

  /**
   * A repl=1 volume whose one replica is on node-a. Placement puts a new volume on the
   * least allocated node, so if one lands on node-b, a second one goes to node-a; the one
   * on node-b is then removed.
   */
  async #createLocalRepl1(a: ClusterNode, size: number): Promise<VolumeInfo> {
    const misplaced: string[] = []
    let chosen: VolumeInfo | undefined
    for (let attempt = 1; attempt <= 3 && !chosen; attempt++) {
      const name = attempt === 1 ? 'bench-r1' : `bench-r1-${attempt}`
      const info = await this.#createVolume(a, name, size, 1)
      if (info.replicas[0]?.nodeId === LOCAL_NODE) chosen = info
      else {
        this.log(`${name} was placed on ${info.replicas[0]?.nodeId ?? 'no node'}, not ${LOCAL_NODE}; trying again`)
        misplaced.push(name)
      }
    }
    if (!chosen) {
      // Keep the first and mount it where it lives; the others go.
      const keep = misplaced.shift()!
      for (const name of misplaced) await this.#removeVolume(a, name)
      return this.inspect(keep)
    }
    for (const name of misplaced) await this.#removeVolume(a, name)
    return chosen
  }

  async #mount(node: ClusterNode, name: string): Promise<string> {
    const reply = await plugin(node, '/VolumeDriver.Mount', { Name: name, ID: MOUNT_ID })
    this.#mounted.set(name, node)
    const mp = reply['Mountpoint']
    if (typeof mp !== 'string' || mp === '') throw new Error(`mount ${name} on ${node.nodeId} returned no mountpoint`)
    return mp
  }
}

function alive(node: ClusterNode): boolean {
  return node.child.exitCode === null && node.child.signalCode === null
}

/** A plugin call that fails on an error reply, and after `timeoutMs` (mkfs of a new volume is the slow one). */
async function plugin(node: ClusterNode, endpoint: string, body: unknown, timeoutMs = 120_000): Promise<Record<string, unknown>> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${endpoint} on ${node.nodeId} did not answer within ${timeoutMs / 1000} s`)), timeoutMs)
  })
  const reply = await Promise.race([pluginCall(node.pluginSocket, endpoint, body), timeout]).finally(() => clearTimeout(timer))
  const err = reply.body['Err']
  if (reply.status !== 200 || (typeof err === 'string' && err !== '')) {
    throw new Error(`${endpoint} on ${node.nodeId} answered ${reply.status}: ${typeof err === 'string' ? err : reply.raw}`)
  }
  return reply.body
}
