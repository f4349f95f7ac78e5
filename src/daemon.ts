/**
 * Wires one pxd node together and takes it apart again. Start order: the locks on the data
 * and run dirs (nothing in them is touched before), metadata store,
 * replica host, peer server and links, membership, frontend (cleanup of a crashed run,
 * FUSE mount), volume manager, plugin socket, API. Stop runs in reverse, so no request
 * arrives at a part that is already gone.
 *
 * A live restart (src/restart/) changes two steps of each: the successor adopts the FUSE
 * session instead of mounting one and resumes the volumes handed over before the volume
 * manager starts; the predecessor, stopping for a handoff, keeps those volumes mounted and
 * their attachments held, gives the session's descriptor away and keeps its node lease
 * (the successor renews the node's records before the lease runs out).
 */
import { promises as fs, constants as fsConstants } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Logger } from 'pino'
import { ApiServer, parseHostPort } from './api/server'
import { ensureTokenFile, tokenFileOf } from './api/token-file'
import { Membership } from './cluster/membership'
import { capacityOf } from './util/capacity'
import { lockDirs } from './util/dir-lock'
import { writeFileDurably } from './util/durable'
import { ReplicaDirectory } from './replicas/directory'
import { ReplicaHost } from './replicas/replica-host'
import { ReplicaService } from './replicas/replica-service'
import { NODE_ID_PATTERN } from './constants'
import { pxdError } from './errors'
import type { FuseServerKind } from './frontend/device-directory'
import { Frontend } from './frontend/frontend'
import type { Kvdb } from './kvdb/kvdb'
import { checkKvdbSettings, openKvdb } from './kvdb/open'
import type { KvdbSecuritySettings } from './kvdb/etcd-connection'
import { meteredDevices, Metrics, nodeReadiness, peerStates } from './metrics'
import { native } from './native/binding'
import { PluginServer } from './plugin/server'
import { loadPeerTls, PeerLinks, PeerServer, type PeerTlsFiles, type RequestHandler } from './replication'
import { ShareRegistry } from './shares/share-registry'
import { ShareService } from './shares/share-service'
import { ShareExecutor } from './shares/executor'
import { VolumeManager } from './volumes/manager'
import { FD_NAME, fromServiceManager, takeOver, type InheritedSession } from './restart/inherit'
import { HandoffServer } from './restart/handoff-server'
import { removeSession, SessionRecorder } from './restart/session-file'
import { finishHandoff, type Handed, type HandoffTarget } from './restart/finish-handoff'
import { KEYS_FD_NAME, KeysFile, type HandedKeys } from './restart/handed-keys'
import { spawnSuccessor } from './restart/successor'

/** How long a handoff waits for the FUSE requests already read to be answered. */
const HANDOFF_DRAIN_MS = 30_000


export interface DaemonConfig {
  dataDir: string
  runDir: string
  pluginSocket: string
  apiListen: string
  nodeId?: string
  version: string
  /** Undefined: the embedded single-node store; else etcd://host:port[,...]. */
  kvdb?: string
  /** TLS and auth for etcd (file paths). */
  kvdbSecurity?: KvdbSecuritySettings
  clusterId: string
  /** HOST:PORT the peer server listens on (needed with etcd). */
  peerListen?: string
  /** HOST:PORT other nodes reach this one at (default: peerListen). */
  advertise?: string
  secretFile?: string
  /** Where `secret_key=NAME` of a secure volume is read from (NAME is a file in it). */
  secretsDir?: string
  /** Mutual TLS for peer links: this node's certificate and key and the cluster CA, all three or none. */
  peerTls?: PeerTlsFiles
  /** Peer links without TLS when no certificates are given (benchmarks only): the default is TLS-PSK. */
  peerPlaintext?: boolean
  /** During a rolling upgrade from a release whose links were plain: accept and dial plain links too, beside TLS-PSK. */
  peerAcceptPlaintext?: boolean
  /** Seconds without a lease renewal after which a node counts as offline. */
  nodeTtl: number
  /** File holding the API token (default `<dataDir>/api-token`, made at first start); required when the API listens beyond loopback. */
  apiTokenFile?: string
  /** Background scrub of attached volumes every this many seconds (0: off), at this many bytes/s. */
  scrubInterval?: number
  scrubRate?: number
  /** Resync copies per second (all resyncs this node coordinates), resyncs at once, and when a lost node's replicas are replaced (ms, 0: never). */
  resyncRate?: number
  resyncConcurrency?: number
  replaceAfterMs?: number
  /** Who serves the FUSE device directory (default addon). */
  fuseServer?: FuseServerKind
  /** Seconds a FUSE request may wait for its answer before the kernel aborts the connection (0: no bound; default none). */
  fuseRequestTimeout?: number
  /** Take the FUSE session and mounted volumes over from the pxd running on these dirs (`--takeover`). */
  takeover?: boolean
  /** The service manager keeps descriptors for the next start ($FDSTORE): the FUSE session is stored there. */
  fdStore?: boolean
}

export class Daemon {
  readonly #config: DaemonConfig
  readonly #log: Logger
  readonly #stopSteps: Array<[string, () => Promise<void>]> = []
  #stopping: Promise<void> | undefined
  #handoff: HandoffTarget | undefined
  apiUrl = ''
  nodeId = ''

  constructor(config: DaemonConfig, log: Logger) {
    this.#config = config
    this.#log = log
  }

  async start(): Promise<void> {
    const c = this.#config
    const clustered = Boolean(c.kvdb)
    checkKvdbSettings(c.kvdb, c.kvdbSecurity)
    if (clustered && !c.peerListen) throw pxdError('INVALID_ARGUMENT', 'a cluster node (--kvdb etcd://...) needs --peer-listen HOST:PORT')
    if (c.peerListen && !c.advertise && /^(0\.0\.0\.0|::|\[::\]|):/.test(c.peerListen)) {
      throw pxdError('INVALID_ARGUMENT', `--peer-listen ${c.peerListen} listens on every address; say which one other nodes should dial with --advertise HOST:PORT`)
    }
    if (clustered && !c.secretFile) throw pxdError('INVALID_ARGUMENT', 'a cluster node (--kvdb etcd://...) needs --cluster-secret-file FILE')
    const apiHost = parseHostPort(c.apiListen).host
    const loopbackApi = /^(127\.|localhost$|::1$)/.test(apiHost)
    if (!loopbackApi && !c.apiTokenFile) {
      throw pxdError('INVALID_ARGUMENT', `the API would listen on ${c.apiListen}, beyond loopback: give it a token with --api-token-file FILE`)
    }
    await checkPreconditions()
    // Before the dir locks: the running pxd lets go of them once it handed over.
    let inherited: InheritedSession | undefined = c.takeover ? await takeOver(c.runDir, c.version, this.#log) : undefined
    // The operator's token file is checked before anything changes; the data dir's own is made under its lock.
    const apiTokenFile = tokenFileOf(c.dataDir, c.apiTokenFile)
    let apiToken = c.apiTokenFile ? (await readSecret(c.apiTokenFile, this.#log)).toString('utf8') : undefined
    const secret = c.secretFile ? await readSecret(c.secretFile, this.#log) : undefined
    await fs.mkdir(c.dataDir, { recursive: true, mode: 0o700 })
    await fs.chmod(c.dataDir, 0o700)
    await fs.mkdir(c.runDir, { recursive: true, mode: 0o755 })
    // Before anything in either dir is touched: a second pxd on them stops here.
    const locks = lockDirs([c.dataDir, c.runDir])
    this.#onStop('dir locks', async () => locks.release())
    if (apiToken === undefined) {
      if (await ensureTokenFile(apiTokenFile)) this.#log.info({ file: apiTokenFile }, 'made the API token file; changing API calls need this token')
      apiToken = (await readSecret(apiTokenFile, this.#log)).toString('utf8')
    }
    inherited ??= await fromServiceManager(c.runDir, this.#log, () => {
      // A kept session this start cannot serve: the store lets go of it too.
      notifyServiceManager(`FDSTOREREMOVE=1\nFDNAME=${FD_NAME}`, this.#log)
      notifyServiceManager(`FDSTOREREMOVE=1\nFDNAME=${KEYS_FD_NAME}`, this.#log)
    }, (names) => { for (const name of names) notifyServiceManager(`FDSTOREREMOVE=1\nFDNAME=${name}`, this.#log) })
    this.nodeId = await resolveNodeId(c.dataDir, c.nodeId)
    const log = this.#log.child({ node: this.nodeId })

    const kvdb: Kvdb = await openKvdb(c.kvdb, { dataDir: c.dataDir, clusterId: c.clusterId, ...(c.kvdbSecurity ? { security: c.kvdbSecurity } : {}), log: log.child({ component: 'kvdb' }) })
    this.#onStop('metadata store', () => kvdb.close())

    const host = new ReplicaHost(c.dataDir, log.child({ component: 'replicas' }))
    this.#onStop('replicas', () => host.close())

    let peerAddress: string | null = null
    let links: PeerLinks | undefined
    const tls = await loadPeerTls(c.peerTls ?? {}, this.nodeId, log)
    if (tls && !(secret && c.peerListen)) throw pxdError('INVALID_ARGUMENT', '--peer-tls-* secure peer links: they need a cluster node (--kvdb, --peer-listen, --cluster-secret-file)')
    let replicas = new ReplicaDirectory({ nodeId: this.nodeId, host, kvdb })
    const shareRegistry = new ShareRegistry(kvdb, this.nodeId, c.nodeTtl)
    // Membership starts after the peer server: the handler asks it only once frames arrive.
    let isMember = async (_nodeId: string) => false
    const shareService = new ShareService(shareRegistry, (nodeId) => isMember(nodeId))
    const shareExecutor = new ShareExecutor(log.child({ component: 'share-executor' }))
    this.#onStop('share executor', () => shareExecutor.stop())
    if (secret && c.peerListen) {
      const service = new ReplicaService({
        nodeId: this.nodeId, host, log: log.child({ component: 'replica-service' }),
        lookup: (volumeId) => replicas.volumeById(volumeId),
        grant: (volumeId) => replicas.grantHere(volumeId),
      })
      // Replica frames to the replicas, a shared volume's file operations to its export.
      const handler: RequestHandler = {
        handle: (peer, req, protocol) => (req.t === 'fsop' || req.t === 'fscancel' ? shareService.handle(peer, req, protocol) : service.handle(peer, req)),
      }
      const server = new PeerServer({
        nodeId: this.nodeId, clusterId: c.clusterId, secret, handler, log: log.child({ component: 'peer-server' }), version: c.version,
        releaseBuffer: native.releaseArrayBuffer, ...(tls ? { tls } : {}), psk: !c.peerPlaintext, acceptPlaintext: c.peerAcceptPlaintext === true, peekByte: native.peekByte,
      })
      if (!tls && c.peerPlaintext) log.warn('PXD_PEER_PLAINTEXT=1: peer links are not encrypted (for benchmarks only)')
      this.#onStop('peer server', () => server.close())
      const listen = parseHostPort(c.peerListen)
      const bound = await server.listen(listen.host, listen.port)
      peerAddress = c.advertise ?? `${bound.host}:${bound.port}`
      links = new PeerLinks({ nodeId: this.nodeId, clusterId: c.clusterId, secret, version: c.version, log: log.child({ component: 'peer-links' }), ...(tls ? { tls } : {}), psk: !c.peerPlaintext, plaintextFallback: c.peerAcceptPlaintext === true })
      const pool = links
      this.#onStop('peer links', () => pool.close())
      replicas = new ReplicaDirectory({ nodeId: this.nodeId, host, kvdb, peers: pool })
      const stale = await replicas.forgetOwnGrants()
      if (stale > 0) log.info({ grants: stale }, 'deleted replica grants this node left when it stopped')
    }

    const membership = new Membership({
      kvdb,
      self: { nodeId: this.nodeId, peerAddress, apiUrl: '', version: c.version },
      ttlSeconds: c.nodeTtl,
      capacity: () => capacityOf(c.dataDir),
      allocated: () => host.allocated(),
      log: log.child({ component: 'membership' }),
    })
    this.#onStop('membership', () => membership.stop({ keepLease: this.#handoff !== undefined }))
    await membership.start()
    isMember = (nodeId) => membership.isOnline(nodeId)

    const metrics = new Metrics({ log: log.child({ component: 'metrics' }) })
    const frontend = new Frontend(c.runDir, log.child({ component: 'frontend' }), c.fuseServer, meteredDevices(metrics), c.fuseRequestTimeout)
    let manager: VolumeManager | undefined
    const session = new SessionRecorder(c.runDir, c.version, { frontend: () => frontend.liveState(), volumes: () => manager?.liveVolumes() ?? [] })
    // Under the fd store, the passphrases of mounted volumes sit beside the session, in memory only.
    const keysFile = c.fdStore ? (inherited?.keysFile ?? KeysFile.create()) : undefined
    const recordSession = async () => {
      await session.changed().catch((err) => log.warn({ err }, 'could not write the live session file'))
      if (keysFile && manager) keysFile.write(manager.liveKeys())
    }
    manager = new VolumeManager({
      nodeId: this.nodeId, dataDir: c.dataDir, kvdb, frontend, host, membership, replicas, log: log.child({ component: 'volumes' }),
      shares: { registry: shareRegistry, service: shareService, executor: shareExecutor, log: log.child({ component: 'shares' }) },
      engineEvents: (name) => metrics.volume(name),
      ...(c.scrubInterval ? { scrubIntervalSeconds: c.scrubInterval } : {}),
      ...(c.scrubRate ? { scrubBytesPerSecond: c.scrubRate } : {}),
      ...(c.resyncRate ? { resyncBytesPerSecond: c.resyncRate } : {}),
      ...(c.resyncConcurrency ? { resyncConcurrency: c.resyncConcurrency } : {}),
      ...(c.replaceAfterMs !== undefined ? { replaceAfterMs: c.replaceAfterMs } : {}),
      keySources: { ...(secret ? { clusterSecret: secret } : {}), ...(c.secretsDir ? { secretsDir: c.secretsDir } : {}) },
      changed: recordSession,
    })
    const volumes = manager
    let handedOver: Handed = { volumes: [], shares: [] }
    let handedKeys: HandedKeys = {}
    this.#onStop('frontend', async () => {
      if (this.#handoff && frontend.live) {
        this.#handoffError = await finishHandoff({ frontend, target: this.#handoff, handed: handedOver, keys: handedKeys, runDir: c.runDir, version: c.version, log, notify: (state, fds) => notifyServiceManager(state, log, fds) })
        return
      }
      await frontend.stop()
      await removeSession(c.runDir)
      if (c.fdStore) {
        notifyServiceManager(`FDSTOREREMOVE=1\nFDNAME=${FD_NAME}`, log)
        notifyServiceManager(`FDSTOREREMOVE=1\nFDNAME=${KEYS_FD_NAME}`, log)
      }
    })
    await frontend.start(inherited)
    let kept = new Set<string>()
    if (inherited) {
      const failed = await volumes.resume(inherited.session.volumes, inherited.clean, inherited.keys)
      await volumes.resumeShares(inherited.session.shares ?? [], inherited.shareFds, inherited.keys, inherited.session.volumes.filter((v) => !failed.includes(v)))
      // Always asked: a predecessor that died left requests it read and never answered.
      const resent = frontend.serve(true)
      for (const v of failed) await frontend.abandon(v)
      kept = new Set(inherited.session.volumes.filter((v) => !failed.includes(v)).map((v) => v.name))
      log.info({ from: inherited.from, clean: inherited.clean, volumes: kept.size, failed: failed.length, resent }, 'live restart: the FUSE session and its volumes were taken over')
    }
    if (c.fdStore && inherited?.from !== 'fd-store') {
      const live = frontend.liveState()
      if (live) notifyServiceManager(`FDSTORE=1\nFDNAME=${FD_NAME}`, log, [live.fuse.fd])
    }
    if (keysFile && inherited?.keysFile === undefined) notifyServiceManager(`FDSTORE=1\nFDNAME=${KEYS_FD_NAME}`, log, [keysFile.fd])

    this.#onStop('volumes', async () => {
      if (!this.#handoff) return volumes.stop()
      try {
        handedKeys = volumes.liveKeys()
        handedOver = await volumes.handOff(() => frontend.drain(HANDOFF_DRAIN_MS))
      } catch (err) {
        this.#handoffError = err as Error
        this.#handoff = undefined
        log.error({ err }, 'the handoff failed: stopping as usual')
        await volumes.stop()
      }
    })
    await volumes.start(kept)
    await recordSession()

    const plugin = new PluginServer(c.pluginSocket, manager, log.child({ component: 'plugin' }))
    this.#onStop('plugin socket', () => plugin.close())
    await plugin.listen()

    const peerLinks = links
    metrics.provide({ shares: async () => manager.shareClients() })
    metrics.provide({ healing: async () => ({ replacements: manager.replacements, replicaWrittenBytes: host.writtenBytes }) })
    metrics.provide({ peers: peerStates({ nodeId: this.nodeId, nodes: () => membership.nodes(), link: (peer) => peerLinks?.get(peer) }) })
    const readiness = nodeReadiness({ nodeId: this.nodeId, kvdb, dataDir: c.dataDir, fuseMountpoint: path.join(c.runDir, 'dev') })
    const api = new ApiServer(manager, { nodeId: this.nodeId, version: c.version, kvdb: kvdb.description, startedAt: new Date() }, log.child({ component: 'api' }), { metrics, readiness, token: apiToken, tokenFile: apiTokenFile, restart: async () => spawnSuccessor(frontend.live, log) })
    this.#onStop('API', () => api.close())
    this.apiUrl = await api.listen(c.apiListen)
    if (frontend.live) {
      const handoff = new HandoffServer(c.runDir, log.child({ component: 'handoff' }), (req) => this.handOff(req))
      this.#onStop('handoff socket', () => handoff.close())
      await handoff.listen()
    }
    log.info({ dataDir: c.dataDir, runDir: c.runDir, pluginSocket: c.pluginSocket, api: this.apiUrl, kvdb: kvdb.description, peer: peerAddress }, 'pxd ready')
  }

  /**
   * Stop for a live restart: every volume stays mounted, and the FUSE session goes to
   * `target`. Fails (and then stops as usual) when the stop had begun already.
   */
  async handOff(target: HandoffTarget): Promise<void> {
    if (this.#stopping) throw pxdError('DAEMON_STOPPING', 'pxd is already stopping')
    this.#handoff = target
    await this.stop()
    const failed = this.#handoffError
    // A failure is told to the successor before the process goes.
    setTimeout(() => this.onHandedOff?.(failed === undefined), failed ? 200 : 0)
    if (failed) throw failed
  }

  /** Called once a stop for a handoff is over, handed over or not (the process should exit now). */
  onHandedOff: ((handedOver: boolean) => void) | undefined

  #handoffError: Error | undefined

  /** Idempotent: every started part is stopped once, in reverse order, even when one fails. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      for (const [name, step] of this.#stopSteps.reverse()) {
        try {
          await step()
        } catch (err) {
          this.#log.error({ err, part: name }, 'stop step failed')
        }
      }
      this.#log.info('pxd stopped')
    })()
    return this.#stopping
  }

  #onStop(name: string, step: () => Promise<void>): void {
    this.#stopSteps.push([name, step])
  }
}

/** A message to the service manager ($NOTIFY_SOCKET, Type=notify), descriptors attached; nothing without one; a failure is logged. */
export function notifyServiceManager(state: string, log: Logger, fds?: number[]): void {
  try {
    native.serviceNotify(state, fds)
  } catch (err) {
    log.warn({ err }, 'could not notify the service manager')
  }
}

async function checkPreconditions(): Promise<void> {
  if (process.getuid?.() !== 0) throw pxdError('PRECONDITION', 'pxd must run as root: it mounts FUSE, attaches loop devices and mounts file systems')
  try {
    await fs.access('/dev/fuse', fsConstants.R_OK | fsConstants.W_OK)
  } catch {
    throw pxdError('PRECONDITION', '/dev/fuse is missing: load the fuse module (modprobe fuse) or pass --device /dev/fuse to the container')
  }
}

/** A secret from a file (cluster secret, API token): at least 16 bytes; a file others can read is a warning. */
async function readSecret(file: string, log: Logger): Promise<Buffer> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
    const st = await fs.stat(file)
    if (st.mode & 0o004) log.warn({ file }, 'the secret file is world-readable; chmod 600 it')
  } catch (err) {
    throw pxdError('INVALID_ARGUMENT', `cannot read the secret file ${file}: ${(err as Error).message}`, err)
  }
  const secret = Buffer.from(text.trim(), 'utf8')
  if (secret.length < 16) throw pxdError('INVALID_ARGUMENT', `the secret in ${file} is shorter than 16 bytes`)
  return secret
}

/** The node id: the flag, else the one this data dir was first started with, else the host name. */
async function resolveNodeId(dataDir: string, requested: string | undefined): Promise<string> {
  const file = path.join(dataDir, 'node-id')
  let stored: string | undefined
  try {
    stored = (await fs.readFile(file, 'utf8')).trim()
  } catch {
    stored = undefined
  }
  const nodeId = requested ?? stored ?? os.hostname()
  if (!NODE_ID_PATTERN.test(nodeId)) throw pxdError('INVALID_ARGUMENT', `invalid node id "${nodeId}": use letters, digits, "_", "." and "-"`)
  if (stored !== nodeId) await writeFileDurably(file, nodeId + '\n')
  return nodeId
}
