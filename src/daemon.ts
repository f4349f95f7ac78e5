/**
 * Wires one pxd node together and takes it apart again. Start order: metadata store,
 * frontend (cleanup of a crashed run, FUSE mount), volume manager, plugin socket, API.
 * Stop runs in reverse, so no request arrives at a part that is already gone.
 */
import { promises as fs, constants as fsConstants } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Logger } from 'pino'
import { ApiServer } from './api/server'
import { pxdError } from './errors'
import { Frontend } from './frontend/frontend'
import { EmbeddedKvdb } from './kvdb/embedded'
import type { Kvdb } from './kvdb/kvdb'
import { PluginServer } from './plugin/server'
import { VolumeManager } from './volumes/manager'

export interface DaemonConfig {
  dataDir: string
  runDir: string
  pluginSocket: string
  apiListen: string
  nodeId?: string
  version: string
}

export class Daemon {
  readonly #config: DaemonConfig
  readonly #log: Logger
  readonly #stopSteps: Array<[string, () => Promise<void>]> = []
  #stopping: Promise<void> | undefined
  apiUrl = ''
  nodeId = ''

  constructor(config: DaemonConfig, log: Logger) {
    this.#config = config
    this.#log = log
  }

  async start(): Promise<void> {
    const c = this.#config
    await checkPreconditions()
    await fs.mkdir(c.dataDir, { recursive: true, mode: 0o700 })
    await fs.chmod(c.dataDir, 0o700)
    await fs.mkdir(c.runDir, { recursive: true, mode: 0o755 })
    this.nodeId = await resolveNodeId(c.dataDir, c.nodeId)
    const log = this.#log.child({ node: this.nodeId })

    const kvdb: Kvdb = await EmbeddedKvdb.open(path.join(c.dataDir, 'kvdb.json'))
    this.#onStop('metadata store', () => kvdb.close())

    const frontend = new Frontend(c.runDir, log.child({ component: 'frontend' }))
    this.#onStop('frontend', () => frontend.stop())
    await frontend.start()

    const manager = new VolumeManager({ nodeId: this.nodeId, dataDir: c.dataDir, kvdb, frontend, log: log.child({ component: 'volumes' }) })
    this.#onStop('volumes', () => manager.stop())
    await manager.start()

    const plugin = new PluginServer(c.pluginSocket, manager, log.child({ component: 'plugin' }))
    this.#onStop('plugin socket', () => plugin.close())
    await plugin.listen()

    const api = new ApiServer(manager, { nodeId: this.nodeId, version: c.version, kvdb: 'embedded', startedAt: new Date() }, log.child({ component: 'api' }))
    this.#onStop('API', () => api.close())
    this.apiUrl = await api.listen(c.apiListen)
    log.info({ dataDir: c.dataDir, runDir: c.runDir, pluginSocket: c.pluginSocket, api: this.apiUrl }, 'pxd ready')
  }

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

async function checkPreconditions(): Promise<void> {
  if (process.getuid?.() !== 0) throw pxdError('PRECONDITION', 'pxd must run as root: it mounts FUSE, attaches loop devices and mounts file systems')
  try {
    await fs.access('/dev/fuse', fsConstants.R_OK | fsConstants.W_OK)
  } catch {
    throw pxdError('PRECONDITION', '/dev/fuse is missing: load the fuse module (modprobe fuse) or pass --device /dev/fuse to the container')
  }
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
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(nodeId)) throw pxdError('INVALID_ARGUMENT', `invalid node id "${nodeId}": use letters, digits, "_", "." and "-"`)
  if (stored !== nodeId) await fs.writeFile(file, nodeId + '\n', { mode: 0o600 })
  return nodeId
}
