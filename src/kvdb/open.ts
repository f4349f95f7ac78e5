/**
 * Turn the `--kvdb` setting into a store: nothing means the embedded single-node store
 * under the data dir; `etcd://host:port[,host:port...]` means etcd.
 */
import path from 'node:path'
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { EmbeddedKvdb } from './embedded'
import { EtcdKvdb } from './etcd'
import type { Kvdb } from './kvdb'

const ACCEPTED = 'accepted: empty (embedded store) or etcd://host:port[,host:port...]'
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])$/

export interface OpenKvdbOptions {
  dataDir: string
  clusterId: string
  log?: Logger
}

export async function openKvdb(spec: string | undefined, options: OpenKvdbOptions): Promise<Kvdb> {
  const trimmed = spec?.trim() ?? ''
  if (trimmed === '') return EmbeddedKvdb.open(path.join(options.dataDir, 'kvdb.json'))
  const endpoints = parseEtcdSpec(trimmed)
  return EtcdKvdb.open({ endpoints, clusterId: options.clusterId, ...(options.log ? { log: options.log } : {}) })
}

/** `etcd://a:2379,b:2379` -> `['http://a:2379', 'http://b:2379']`, or INVALID_ARGUMENT. */
export function parseEtcdSpec(spec: string): string[] {
  const match = /^etcd:\/\/(.*)$/i.exec(spec)
  if (!match) throw pxdError('INVALID_ARGUMENT', `unknown kvdb ${JSON.stringify(spec)}; ${ACCEPTED}`)
  const pieces = match[1]!.split(',').map((p) => p.trim())
  return pieces.map((piece) => {
    const hostPort = /^(.*):(\d{1,5})$/.exec(piece)
    const host = hostPort?.[1] ?? ''
    const port = Number(hostPort?.[2])
    if (!hostPort || !HOST.test(host) || !(port >= 1 && port <= 65535)) {
      throw pxdError('INVALID_ARGUMENT', `kvdb ${JSON.stringify(spec)}: ${JSON.stringify(piece)} is not host:port (port 1-65535); ${ACCEPTED}`)
    }
    return `http://${host}:${port}`
  })
}
