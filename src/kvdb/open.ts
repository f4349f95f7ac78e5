/**
 * Turn the `--kvdb` setting into a store: nothing means the embedded single-node store
 * under the data dir; `etcd://host:port[,host:port...]` means etcd, and
 * `https://host:port[,host:port...]` etcd over TLS (as do etcd:// endpoints with any
 * --kvdb-ca/--kvdb-cert setting; see etcd-connection.ts).
 */
import path from 'node:path'
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { EmbeddedKvdb } from './embedded'
import { EtcdKvdb } from './etcd'
import { loadEtcdSecurity, type EtcdSecurity, type KvdbSecuritySettings } from './etcd-connection'
import type { Kvdb } from './kvdb'

const ACCEPTED = 'accepted: empty (embedded store), etcd://host:port[,host:port...] or https://host:port[,host:port...]'
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])$/

export interface OpenKvdbOptions {
  dataDir: string
  clusterId: string
  log?: Logger
  /** TLS and auth for etcd (file paths); INVALID_ARGUMENT with the embedded store. */
  security?: KvdbSecuritySettings
}

export async function openKvdb(spec: string | undefined, options: OpenKvdbOptions): Promise<Kvdb> {
  const etcd = checkKvdbSettings(spec, options.security)
  if (!etcd) return EmbeddedKvdb.open(path.join(options.dataDir, 'kvdb.json'))
  return EtcdKvdb.open({ ...etcd, clusterId: options.clusterId, ...(options.log ? { log: options.log } : {}) })
}

/**
 * Check the --kvdb setting and its TLS/auth files without connecting, so the daemon
 * can refuse a bad one before it creates or locks anything. Returns etcd's endpoints and
 * the files' contents, or undefined for the embedded store.
 */
export function checkKvdbSettings(spec: string | undefined, security: KvdbSecuritySettings = {}): { endpoints: string[]; security: EtcdSecurity } | undefined {
  const trimmed = spec?.trim() ?? ''
  const secured = Object.values(security).some((v) => v !== undefined && v !== '')
  if (trimmed === '') {
    if (secured) throw pxdError('INVALID_ARGUMENT', '--kvdb-ca/--kvdb-cert/--kvdb-key/--kvdb-username/--kvdb-password-file are for etcd: they need --kvdb')
    return undefined
  }
  return { endpoints: parseEtcdSpec(trimmed), security: loadEtcdSecurity(security) }
}

/** `etcd://a:2379,b:2379` -> `['http://a:2379', 'http://b:2379']` (https:// stays https), or INVALID_ARGUMENT. */
export function parseEtcdSpec(spec: string): string[] {
  const match = /^(etcd|https):\/\/(.*)$/i.exec(spec)
  if (!match) throw pxdError('INVALID_ARGUMENT', `unknown kvdb ${JSON.stringify(spec)}; ${ACCEPTED}`)
  const scheme = match[1]!.toLowerCase() === 'https' ? 'https' : 'http'
  const pieces = match[2]!.split(',').map((p) => p.trim())
  return pieces.map((piece) => {
    const hostPort = /^(.*):(\d{1,5})$/.exec(piece)
    const host = hostPort?.[1] ?? ''
    const port = Number(hostPort?.[2])
    if (!hostPort || !HOST.test(host) || !(port >= 1 && port <= 65535)) {
      throw pxdError('INVALID_ARGUMENT', `kvdb ${JSON.stringify(spec)}: ${JSON.stringify(piece)} is not host:port (port 1-65535); ${ACCEPTED}`)
    }
    return `${scheme}://${host}:${port}`
  })
}
