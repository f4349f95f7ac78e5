/** The HTTP API as pxctl (and tests) call it. Errors come back as PxdError with the server's code. */
import { PxdError, pxdError, type ErrorCode, ErrorCodes } from '../errors'
import { discoverLocalToken } from './local-token'
import type { QuarantinedReplica } from '../replicas/replica-host'
import type { ClusterNodeInfo, VolumeInfo } from '../volumes/types'

export interface NodeStatus {
  nodeId: string
  version: string
  kvdb: string
  uptimeSeconds: number
  capacity: { total: number; free: number; used: number }
  cluster: { nodes: number; online: number }
  volumes: { total: number; attached: number; degraded: number }
}

/**
 * Changing calls carry the token given here; without one, the first changing call looks for
 * the daemon's own token file on this host (see local-token.ts), which works for root only.
 */
export class ApiClient {
  readonly #base: string
  #token: string | undefined
  #discovery: Promise<string | undefined> | undefined
  #noTokenReason = ''

  constructor(baseUrl: string, token?: string) {
    this.#base = baseUrl.replace(/\/+$/, '')
    this.#token = token
  }

  status(): Promise<NodeStatus> {
    return this.#call('GET', '/v1/status')
  }

  listNodes(): Promise<ClusterNodeInfo[]> {
    return this.#call('GET', '/v1/cluster/nodes')
  }

  listVolumes(): Promise<VolumeInfo[]> {
    return this.#call('GET', '/v1/volumes')
  }

  inspectVolume(name: string): Promise<VolumeInfo> {
    return this.#call('GET', `/v1/volumes/${encodeURIComponent(name)}`)
  }

  createVolume(name: string, options: Record<string, string>): Promise<VolumeInfo> {
    return this.#call('POST', '/v1/volumes', { name, options })
  }

  scrub(name: string): Promise<{ volume: string; checkedBlocks: number; badBlocks: number; repairedBlocks: number; unrecoverableBlocks: number }> {
    return this.#call('POST', `/v1/volumes/${encodeURIComponent(name)}/scrub`, {})
  }

  /** Grow a volume, mounted or not (`size` as the size option: "20G"). */
  resize(name: string, size: string): Promise<VolumeInfo> {
    return this.#call('POST', `/v1/volumes/${encodeURIComponent(name)}/size`, { size })
  }

  /** A point-in-time, read-only snapshot of a volume; `freeze: false` skips the fsfreeze of a mounted one. */
  createSnapshot(volume: string, name: string, freeze = true): Promise<VolumeInfo> {
    return this.#call('POST', '/v1/snapshots', { volume, name, freeze })
  }

  /** Snapshots of one volume, or of every volume. */
  listSnapshots(volume?: string): Promise<VolumeInfo[]> {
    return this.#call('GET', volume === undefined ? '/v1/snapshots' : `/v1/volumes/${encodeURIComponent(volume)}/snapshots`)
  }

  deleteSnapshot(name: string): Promise<void> {
    return this.#call('DELETE', `/v1/snapshots/${encodeURIComponent(name)}`)
  }

  /** A new writable volume `name` that reads as `source` (a volume or a snapshot) and shares its unchanged blocks. */
  clone(source: string, name: string, freeze = true): Promise<VolumeInfo> {
    return this.#call('POST', `/v1/volumes/${encodeURIComponent(source)}/clone`, { name, freeze })
  }

  /** The volume's contents become the snapshot's (refused while it is attached). */
  restore(volume: string, snapshot: string): Promise<VolumeInfo> {
    return this.#call('POST', `/v1/volumes/${encodeURIComponent(volume)}/restore`, { snapshot })
  }

  haUpdate(name: string, repl: number): Promise<VolumeInfo> {
    return this.#call('POST', `/v1/volumes/${encodeURIComponent(name)}/ha`, { repl })
  }

  drainNode(nodeId: string, cancel = false): Promise<{ node: string; draining: boolean; volumes: string[] }> {
    return this.#call('POST', `/v1/cluster/nodes/${encodeURIComponent(nodeId)}/drain`, { cancel })
  }

  /** Start a successor that takes this node's pxd over; its pid. */
  restartNode(): Promise<{ restarting: boolean; pid: number }> {
    return this.#call('POST', '/v1/node/restart', {})
  }

  removeNode(nodeId: string): Promise<{ removed: string }> {
    return this.#call('DELETE', `/v1/cluster/nodes/${encodeURIComponent(nodeId)}`)
  }

  rebalance(): Promise<{ move: { volume: string; from: string; to: string; size: number } | null; busy?: string }> {
    return this.#call('POST', '/v1/cluster/rebalance', {})
  }

  deleteVolume(name: string): Promise<void> {
    return this.#call('DELETE', `/v1/volumes/${encodeURIComponent(name)}`)
  }

  listQuarantined(): Promise<QuarantinedReplica[]> {
    return this.#call('GET', '/v1/quarantine')
  }

  purgeQuarantined(name: string): Promise<void> {
    return this.#call('DELETE', `/v1/quarantine/${encodeURIComponent(name)}`)
  }

  async #tokenFor(method: string): Promise<string | undefined> {
    if (this.#token !== undefined || method === 'GET') return this.#token
    this.#discovery ??= discoverLocalToken(this.#base, (p) => this.#call('GET', p)).then((found) => {
      if ('token' in found) return found.token
      this.#noTokenReason = found.reason
      return undefined
    }, (err: unknown) => {
      this.#noTokenReason = (err as Error).message
      return undefined
    })
    return this.#discovery
  }

  async #call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const token = await this.#tokenFor(method)
    let res: Response
    try {
      res = await fetch(this.#base + path, {
        method,
        headers: {
          ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
          ...(token ? { Authorization: `Bearer ${token}` } : {}),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(120_000),
      })
    } catch (err) {
      throw pxdError('KVDB_UNAVAILABLE', `cannot reach pxd at ${this.#base}: ${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}; is the daemon running?`, err)
    }
    const text = await res.text()
    let parsed: unknown
    try {
      parsed = text === '' ? undefined : JSON.parse(text)
    } catch {
      throw pxdError('MALFORMED_REQUEST', `pxd answered ${res.status} with a body that is not JSON`)
    }
    if (!res.ok) {
      const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error
      const code = e?.code && e.code in ErrorCodes ? (e.code as ErrorCode) : 'IO_ERROR'
      const hint = code === 'UNAUTHORIZED' && !token && this.#noTokenReason ? ` (${this.#noTokenReason}: run pxctl as root or give --api-token-file)` : ''
      throw new PxdError(code, (e?.message ?? `pxd answered ${res.status}`) + hint)
    }
    return parsed as T
  }
}
