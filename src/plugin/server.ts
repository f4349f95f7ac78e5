/**
 * The Docker volume plugin protocol (what Docker, dvdcli and the Mesos docker/volume
 * isolator speak) on a unix socket. Every call is POST with a JSON body (Docker sends no
 * Content-Type); replies are `application/vnd.docker.plugins.v1+json`; errors are
 * {"Err": "..."}. This layer holds no state: it validates the request and asks the
 * volume manager.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import net from 'node:net'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import { isPxdError, messageOf, pxdError } from '../errors'
import { createBoundedServer, optionalString, readJsonObject, requiredString, sendJson } from '../util/http'
import type { VolumeManager } from '../volumes/manager'
import type { VolumeInfo } from '../volumes/types'

export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json'

type Handler = (body: Record<string, unknown>) => Promise<Record<string, unknown>>

export class PluginServer {
  readonly socketPath: string
  readonly #manager: VolumeManager
  readonly #log: Logger
  readonly #server: http.Server
  readonly #routes: Record<string, Handler>

  constructor(socketPath: string, manager: VolumeManager, log: Logger) {
    this.socketPath = socketPath
    this.#manager = manager
    this.#log = log
    this.#routes = this.#makeRoutes()
    this.#server = createBoundedServer((req, res) => void this.#handle(req, res))
  }

  async listen(): Promise<void> {
    await fs.mkdir(path.dirname(this.socketPath), { recursive: true, mode: 0o755 })
    await removeStaleSocket(this.socketPath)
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(this.socketPath, () => {
        this.#server.off('error', reject)
        resolve()
      })
    })
    // Only root (and the group that runs Docker) may talk to the plugin.
    await fs.chmod(this.socketPath, 0o660)
    this.#log.info({ socket: this.socketPath }, 'plugin socket listening')
  }

  async close(): Promise<void> {
    if (!this.#server.listening) return
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeIdleConnections()
    })
    await fs.rm(this.socketPath, { force: true })
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const endpoint = (req.url ?? '').split('?')[0] ?? ''
    const log = this.#log.child({ endpoint })
    const route = this.#routes[endpoint]
    if (!route) {
      req.resume()
      return sendJson(res, 404, { Err: `unknown endpoint ${endpoint}` }, PLUGIN_CONTENT_TYPE)
    }
    if (req.method !== 'POST') {
      req.resume()
      return sendJson(res, 405, { Err: `${endpoint} takes POST, not ${req.method}` }, PLUGIN_CONTENT_TYPE)
    }
    try {
      const body = await readJsonObject(req)
      log.debug({ body }, 'plugin request')
      sendJson(res, 200, await route(body), PLUGIN_CONTENT_TYPE)
    } catch (err) {
      const status = isPxdError(err, 'BODY_TOO_LARGE') ? 413 : isPxdError(err, 'MALFORMED_REQUEST') ? 400 : 500
      if (isPxdError(err) && err.code !== 'IO_ERROR' && err.code !== 'COMMAND_FAILED') log.info({ code: err.code, msg: err.message }, 'plugin request refused')
      else log.error({ err }, 'plugin request failed')
      if (!res.headersSent) sendJson(res, status, { Err: messageOf(err) }, PLUGIN_CONTENT_TYPE)
      if (status === 413) req.destroy()
    }
  }

  #makeRoutes(): Record<string, Handler> {
    const m = this.#manager
    const name = (body: Record<string, unknown>) => requiredString(body, 'Name')
    return {
      '/Plugin.Activate': async () => ({ Implements: ['VolumeDriver'] }),
      '/VolumeDriver.Capabilities': async () => ({ Capabilities: { Scope: 'global' } }),
      '/VolumeDriver.Create': async (body) => {
        const opts = body.Opts
        if (opts !== undefined && opts !== null && (typeof opts !== 'object' || Array.isArray(opts))) {
          throw pxdError('MALFORMED_REQUEST', 'field "Opts" must be an object of strings')
        }
        await m.create(name(body), opts)
        return { Err: '' }
      },
      '/VolumeDriver.Remove': async (body) => {
        await m.remove(name(body))
        return { Err: '' }
      },
      '/VolumeDriver.Mount': async (body) => ({ Mountpoint: await m.mount(name(body), optionalString(body, 'ID')), Err: '' }),
      '/VolumeDriver.Unmount': async (body) => {
        await m.unmount(name(body), optionalString(body, 'ID'))
        return { Err: '' }
      },
      '/VolumeDriver.Path': async (body) => ({ Mountpoint: (await m.path(name(body))) ?? '', Err: '' }),
      '/VolumeDriver.Get': async (body) => {
        const requested = name(body)
        return { Volume: dockerVolume(requested, await m.inspect(requested)), Err: '' }
      },
      '/VolumeDriver.List': async () => ({ Volumes: (await m.list()).map((v) => dockerVolume(v.name, v)), Err: '' }),
    }
  }
}

/** Docker knows a volume by the name it asked with (an inline spec stays the full string). */
function dockerVolume(requestedName: string, v: VolumeInfo) {
  return {
    Name: requestedName,
    Mountpoint: v.mountpoint ?? '',
    CreatedAt: v.createdAt,
    Status: { id: v.id, size: v.size, repl: v.repl, fs: v.fs, state: v.state, attachedOn: v.attachedOn ?? '' },
  }
}

/** A socket file nobody answers on is left from a crash: remove it. One that answers is another pxd. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  try {
    await fs.lstat(socketPath)
  } catch {
    return
  }
  const alive = await new Promise<boolean>((resolve) => {
    const conn = net.connect(socketPath)
    conn.once('connect', () => { conn.destroy(); resolve(true) })
    conn.once('error', () => resolve(false))
  })
  if (alive) throw pxdError('PRECONDITION', `another process is serving the plugin socket ${socketPath}; is pxd already running?`)
  await fs.rm(socketPath, { force: true })
}
