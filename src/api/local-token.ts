/**
 * How a client on the daemon's own host finds the API token without being told: it asks the
 * daemon where its token file is (an open GET) and reads it, but only when
 *   - the API address is loopback, and the socket listening on that port in this network
 *     namespace belongs to root (/proc/net/tcp{,6}): a local user who binds the port while
 *     pxd is down cannot collect root's token that way;
 *   - the file is a regular file owned by root that no group or other may read or write: a
 *     listener cannot point root's client at another file and have it sent back.
 * A user who cannot read the file (not root) gets no token, and the daemon's refusal.
 */
import { promises as fs } from 'node:fs'
import { codeOf } from '../errors'

const LISTEN = '0A'

/** Why discovery found no token, to put in the refusal's message. */
export type DiscoveryResult = { token: string } | { reason: string }

export async function discoverLocalToken(base: string, fetchJson: (path: string) => Promise<unknown>): Promise<DiscoveryResult> {
  let url: URL
  try {
    url = new URL(base)
  } catch {
    return { reason: `${base} is not a URL` }
  }
  const host = url.hostname.replace(/^\[|\]$/g, '')
  if (url.protocol !== 'http:' || !isLoopback(host)) return { reason: `the API at ${base} is not on loopback` }
  const port = Number(url.port || 80)
  const owners = await listenerUids(port)
  if (owners.length === 0) return { reason: `nothing listens on port ${port}` }
  if (owners.some((uid) => uid !== 0)) return { reason: `the listener on port ${port} is not root's` }
  const body = (await fetchJson('/v1/token-file')) as { path?: unknown } | undefined
  const file = body?.path
  if (typeof file !== 'string' || !file.startsWith('/')) return { reason: 'the daemon names no token file' }
  let st
  try {
    st = await fs.lstat(file)
  } catch (err) {
    return unreadable(file, err)
  }
  if (!st.isFile() || st.uid !== 0 || (st.mode & 0o077) !== 0) return { reason: `the token file ${file} is not a root-only regular file` }
  try {
    const token = (await fs.readFile(file, 'utf8')).trim()
    return token ? { token } : { reason: `the token file ${file} is empty` }
  } catch (err) {
    return unreadable(file, err)
  }
}

function unreadable(file: string, err: unknown): DiscoveryResult {
  return { reason: `cannot read the daemon's token file ${file} (${codeOf(err) ?? 'error'})` }
}

function isLoopback(host: string): boolean {
  return /^127\./.test(host) || host === 'localhost' || host === '::1'
}

/** The uids of the TCP sockets listening on `port` (any address) in this network namespace. */
export async function listenerUids(port: number): Promise<number[]> {
  const uids: number[] = []
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0')
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = await fs.readFile(table, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      if (f.length < 8) continue
      if (f[3] !== LISTEN) continue
      if (f[1]!.split(':')[1] !== hexPort) continue
      uids.push(Number(f[7]))
    }
  }
  return uids
}
