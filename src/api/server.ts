/**
 * The daemon's HTTP JSON API, which pxctl speaks. Errors are
 * {"error": {"code": "...", "message": "..."}} with an HTTP status that fits the code.
 *
 * Beside /v1, for supervisors and monitoring on the same listener:
 *   GET /healthz  200 "ok" while the process serves HTTP
 *   GET /readyz   200 when every readiness check passes, else 503; JSON naming the checks
 *   GET /metrics  Prometheus text exposition of the node's own registry
 *
 * Every call that changes something (anything but GET) needs `Authorization: Bearer <token>`,
 * on loopback too; GET /v1/token-file names the file the token is in (only root can read it).
 */
import { timingSafeEqual } from 'node:crypto'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { isPxdError, messageOf, pxdError, type ErrorCode } from '../errors'
import { createBoundedServer, readJsonObject, requiredString, sendJson } from '../util/http'
import { Metrics } from '../metrics/metrics'
import { readinessOf, type Readiness, type ReadinessReport } from '../metrics/readiness'
import type { VolumeManager } from '../volumes/manager'

export const API_VERSION = 'v1'

const STATUS_OF: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  MALFORMED_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  IN_USE: 409,
  CONFLICT: 409,
  READ_ONLY: 409,
  BODY_TOO_LARGE: 413,
  UNSATISFIABLE: 422,
  NO_SPACE: 507,
  DAEMON_STOPPING: 503,
  KVDB_UNAVAILABLE: 503,
}

export interface StatusSource {
  nodeId: string
  version: string
  kvdb: string
  startedAt: Date
}

export interface ApiServerOptions {
  /** POST /v1/node/restart: start a successor that takes this pxd over (every volume stays mounted). */
  restart?: () => Promise<{ pid: number }>
  /**
   * The node's metrics. Providers it lacks for volumes and capacity are taken from the
   * manager. Default: a Metrics of this server's own (process metrics and volume state,
   * no I/O counters, since nothing on the data path records into it).
   */
  metrics?: Metrics
  /** What /readyz and status report. Default: only whether the metadata store answers. */
  readiness?: Readiness
  /**
   * When set, every call that changes something (not GET) must carry
   * `Authorization: Bearer <token>`; the daemon always sets one.
   */
  token?: string
  /** Where the token is kept, for GET /v1/token-file (clients on this host read it from there). */
  tokenFile?: string
}

/** A reply that is not JSON (/healthz, /metrics). */
class TextReply {
  constructor(readonly status: number, readonly text: string, readonly contentType: string) {}
}

type Route = (req: IncomingMessage, params: string[]) => Promise<[number, unknown] | TextReply>

export class ApiServer {
  readonly #manager: VolumeManager
  readonly #log: Logger
  readonly #status: StatusSource
  readonly #metrics: Metrics
  readonly #readiness: Readiness
  readonly #server: http.Server
  readonly #token: Buffer | undefined
  readonly #restart: (() => Promise<{ pid: number }>) | undefined
  readonly #tokenFile: string | undefined
  readonly #routes: Array<[string, RegExp, Route]>

  constructor(manager: VolumeManager, status: StatusSource, log: Logger, options: ApiServerOptions = {}) {
    this.#manager = manager
    this.#status = status
    this.#log = log
    this.#metrics = options.metrics ?? new Metrics({ log })
    this.#metrics.provideMissing({ volumes: () => manager.list(), capacity: () => manager.capacity() })
    this.#metrics.setInfo({ node: status.nodeId, version: status.version, kvdb: status.kvdb })
    this.#readiness = options.readiness ?? readinessOf({ kvdb: () => manager.nodes() })
    this.#token = options.token === undefined ? undefined : Buffer.from(options.token)
    this.#tokenFile = options.tokenFile
    this.#restart = options.restart
    this.#routes = this.#makeRoutes()
    this.#server = createBoundedServer((req, res) => void this.#handle(req, res))
  }

  async listen(hostPort: string): Promise<string> {
    const { host, port } = parseHostPort(hostPort)
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(port, host, () => {
        this.#server.off('error', reject)
        resolve()
      })
    })
    const addr = this.#server.address() as AddressInfo
    const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`
    this.#log.info({ url }, 'API listening')
    return url
  }

  async close(): Promise<void> {
    if (!this.#server.listening) return
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeIdleConnections()
    })
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = (req.url ?? '/').split('?')[0] ?? '/'
    try {
      if (this.#token && req.method !== 'GET' && !this.#authorized(req)) {
        req.resume()
        throw pxdError('UNAUTHORIZED', 'this call changes state and needs the API token (Authorization: Bearer ...; pxctl --api-token-file)')
      }
      for (const [method, pattern, route] of this.#routes) {
        const m = pattern.exec(url)
        if (!m) continue
        if (req.method !== method) continue
        const reply = await route(req, m.slice(1).map((s) => decodeURIComponent(s)))
        if (reply instanceof TextReply) return sendText(res, reply)
        return sendJson(res, reply[0], reply[1])
      }
      req.resume()
      sendJson(res, 404, { error: { code: 'NOT_FOUND', message: `no API endpoint ${req.method} ${url}` } })
    } catch (err) {
      const code: ErrorCode = isPxdError(err) ? err.code : 'IO_ERROR'
      const status = STATUS_OF[code] ?? 500
      if (status >= 500) this.#log.error({ err, url }, 'API request failed')
      if (!res.headersSent) sendJson(res, status, { error: { code, message: messageOf(err) } })
      if (status === 413) req.destroy()
    }
  }

  #authorized(req: IncomingMessage): boolean {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')
    if (!m || !this.#token) return false
    const given = Buffer.from(m[1]!)
    return given.length === this.#token.length && timingSafeEqual(given, this.#token)
  }

  #makeRoutes(): Array<[string, RegExp, Route]> {
    const m = this.#manager
    return [
      ['GET', /^\/healthz$/, async () => new TextReply(200, 'ok\n', 'text/plain; charset=utf-8')],
      ['GET', /^\/readyz$/, async () => {
        const report = await this.#readiness()
        return [report.ready ? 200 : 503, report]
      }],
      ['GET', /^\/metrics$/, async () => new TextReply(200, await this.#metrics.text(), this.#metrics.contentType)],
      ['GET', /^\/v1\/token-file$/, async () => {
        if (!this.#tokenFile) throw pxdError('NOT_FOUND', 'this daemon keeps no API token file')
        return [200, { path: this.#tokenFile }]
      }],
      ['GET', /^\/v1\/status$/, async () => [200, await this.#statusBody()]],
      ['GET', /^\/v1\/cluster\/nodes$/, async () => [200, await m.nodes()]],
      ['POST', /^\/v1\/cluster\/nodes\/([^/]+)\/drain$/, async (req, [node]) => {
        const body = await readJsonObject(req)
        if (body.cancel !== undefined && typeof body.cancel !== 'boolean') throw pxdError('MALFORMED_REQUEST', 'field "cancel" must be true or false')
        return [200, await m.moves.drain(node!, body.cancel === true)]
      }],
      ['DELETE', /^\/v1\/cluster\/nodes\/([^/]+)$/, async (_req, [node]) => {
        await m.moves.removeNode(node!)
        return [200, { removed: node }]
      }],
      ['POST', /^\/v1\/cluster\/rebalance$/, async (req) => {
        req.resume()
        return [200, await m.moves.rebalance()]
      }],
      ['GET', /^\/v1\/volumes$/, async () => [200, await m.list()]],
      ['POST', /^\/v1\/volumes$/, async (req) => {
        const body = await readJsonObject(req)
        const name = requiredString(body, 'name')
        const options = body.options ?? {}
        if (typeof options !== 'object' || options === null || Array.isArray(options)) throw pxdError('MALFORMED_REQUEST', 'field "options" must be an object')
        const merged: Record<string, unknown> = { ...(options as Record<string, unknown>) }
        for (const key of ['size', 'repl', 'fs'] as const) {
          const value = body[key]
          if (value === undefined || value === null) continue
          if (typeof value !== 'string' && typeof value !== 'number') throw pxdError('MALFORMED_REQUEST', `field "${key}" must be a string or number`)
          merged[key] = String(value)
        }
        return [201, await m.create(name, merged)]
      }],
      ['GET', /^\/v1\/volumes\/([^/]+)$/, async (_req, [name]) => [200, await m.inspect(name!)]],
      ['POST', /^\/v1\/volumes\/([^/]+)\/scrub$/, async (req, [name]) => {
        req.resume()
        return [200, await m.scrub(name!)]
      }],
      ['POST', /^\/v1\/volumes\/([^/]+)\/ha$/, async (req, [name]) => {
        const body = await readJsonObject(req)
        const repl = body.repl
        if (typeof repl !== 'number' && typeof repl !== 'string') throw pxdError('MALFORMED_REQUEST', 'field "repl" is required (a number from 1 to 3)')
        return [200, await m.moves.haUpdate(name!, Number(repl))]
      }],
      ['POST', /^\/v1\/volumes\/([^/]+)\/size$/, async (req, [name]) => {
        const body = await readJsonObject(req)
        const size = body.size
        if (typeof size !== 'number' && typeof size !== 'string') throw pxdError('MALFORMED_REQUEST', 'field "size" is required (e.g. "20G")')
        return [200, await m.resizes.resize(name!, String(size))]
      }],
      ['GET', /^\/v1\/snapshots$/, async () => [200, await m.snapshots.list()]],
      ['GET', /^\/v1\/volumes\/([^/]+)\/snapshots$/, async (_req, [name]) => [200, await m.snapshots.list(name!)]],
      ['POST', /^\/v1\/snapshots$/, async (req) => {
        const body = await readJsonObject(req)
        if (body.freeze !== undefined && typeof body.freeze !== 'boolean') throw pxdError('MALFORMED_REQUEST', 'field "freeze" must be true or false')
        return [201, await m.snapshots.create(requiredString(body, 'volume'), requiredString(body, 'name'), { freeze: body.freeze !== false })]
      }],
      ['DELETE', /^\/v1\/snapshots\/([^/]+)$/, async (_req, [name]) => {
        await m.snapshots.requireSnapshot(name!)
        await m.remove(name!)
        return [200, { removed: name }]
      }],
      ['POST', /^\/v1\/volumes\/([^/]+)\/clone$/, async (req, [source]) => {
        const body = await readJsonObject(req)
        if (body.freeze !== undefined && typeof body.freeze !== 'boolean') throw pxdError('MALFORMED_REQUEST', 'field "freeze" must be true or false')
        return [201, await m.snapshots.clone(source!, requiredString(body, 'name'), { freeze: body.freeze !== false })]
      }],
      ['POST', /^\/v1\/volumes\/([^/]+)\/restore$/, async (req, [name]) => {
        const body = await readJsonObject(req)
        return [200, await m.snapshots.restore(name!, requiredString(body, 'snapshot'))]
      }],
      ['POST', /^\/v1\/node\/restart$/, async (req) => {
        req.resume()
        if (!this.#restart) throw pxdError('PRECONDITION', 'this pxd cannot restart itself')
        return [202, { restarting: true, ...(await this.#restart()) }]
      }],
      ['GET', /^\/v1\/quarantine$/, async () => [200, await m.quarantined()]],
      ['DELETE', /^\/v1\/quarantine\/([^/]+)$/, async (_req, [name]) => {
        await m.purgeQuarantined(name!)
        return [200, { purged: name }]
      }],
      ['DELETE', /^\/v1\/volumes\/([^/]+)$/, async (_req, [name]) => {
        await m.remove(name!)
        return [200, { removed: name }]
      }],
    ]
  }

  /**
   * This node at a glance. Capacity is local and always there; what needs the metadata
   * store (cluster, volumes) is null when it cannot be read, with the reason in `errors`,
   * so that status still answers when things are broken.
   */
  async #statusBody(): Promise<StatusBody> {
    const [volumes, capacity, nodes, health] = await Promise.allSettled([
      this.#manager.list(), this.#manager.capacity(), this.#manager.nodes(), this.#readiness(),
    ])
    const errors: string[] = []
    const value = <T>(r: PromiseSettledResult<T>, what: string): T | null => {
      if (r.status === 'fulfilled') return r.value
      errors.push(`${what}: ${messageOf(r.reason)}`)
      return null
    }
    const vols = value(volumes, 'volumes')
    const cap = value(capacity, 'capacity')
    const known = value(nodes, 'cluster')
    const ready = value(health, 'readiness')
    const degraded = vols?.filter((v) => v.degraded).length ?? 0
    return {
      nodeId: this.#status.nodeId,
      version: this.#status.version,
      kvdb: this.#status.kvdb,
      uptimeSeconds: Math.round((Date.now() - this.#status.startedAt.getTime()) / 1000),
      health: ready ?? { ready: false, notReady: ['readiness'], checks: {} },
      capacity: cap && { total: cap.total, free: cap.free, used: cap.total - cap.free },
      cluster: known && { nodes: known.length, online: known.filter((n) => n.online).length },
      volumes: vols && {
        total: vols.length,
        attached: vols.filter((v) => v.state === 'attached').length,
        degraded,
        healthy: vols.length - degraded,
      },
      degradedVolumes: vols && vols.filter((v) => v.degraded || v.degradedReasons.length > 0)
        .map((v) => ({ name: v.name, degraded: v.degraded, since: v.degradedSince, reasons: v.degradedReasons })),
      ...(errors.length > 0 ? { errors } : {}),
    }
  }
}

/** GET /v1/status. Sizes in bytes. */
export interface StatusBody {
  nodeId: string
  version: string
  kvdb: string
  uptimeSeconds: number
  health: ReadinessReport
  capacity: { total: number; free: number; used: number } | null
  cluster: { nodes: number; online: number } | null
  volumes: { total: number; attached: number; degraded: number; healthy: number } | null
  /** Volumes short of copies, or with replicas resyncing or moving, and why. */
  degradedVolumes: Array<{ name: string; degraded: boolean; since: string | null; reasons: string[] }> | null
  /** What could not be read, when something could not. */
  errors?: string[]
}

function sendText(res: ServerResponse, reply: TextReply): void {
  res.writeHead(reply.status, { 'Content-Type': reply.contentType, 'Content-Length': Buffer.byteLength(reply.text) })
  res.end(reply.text)
}

export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text)
  if (!m) throw pxdError('INVALID_ARGUMENT', `invalid listen address "${text}": expected HOST:PORT`)
  const port = Number(m[3])
  if (port > 65535) throw pxdError('INVALID_ARGUMENT', `invalid port in "${text}"`)
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port }
}
