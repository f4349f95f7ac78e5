/**
 * What a live restart hands over of each shared volume on this node (share-restart.ts),
 * in the session file, written by a clean handoff only:
 * - a client mount: the FUSE connection itself travels as a descriptor (named
 *   `pxd-share-<n>` in the handoff datagram or the service manager's fd store); the record
 *   says what it serves: the nodeid table the kernel's nodeids mean, the locks held (to
 *   reclaim from a later server), the files whose next fsync must fail, and its server;
 * - a volume served here: it stays attached and mounted like any other volume (the session's
 *   volumes); the record names the export's root and its reply cache, so that an operation
 *   sent again after the restart is answered, not applied twice.
 * After a crash the nodeid tables are gone with the process, and so are the connections.
 */
import path from 'node:path'
import type { KeyOptions } from '../volumes/keys'
import type { SavedReply } from './share-export'

/** Descriptor names of handed-over client connections start with this. */
export const SHARE_FD_PREFIX = 'pxd-share-'

export interface HandedMount {
  /** The addon's nodeid table (native/share_client_handoff.cc), base64. */
  table: string
  nextNodeid: number
  /** Lock operations the server granted, as sent, base64 (held-locks.ts). */
  locks: string[]
  /** Files whose next fsync fails (unstable-writes.ts). */
  lost: string[]
  /** The server (`node@epoch`) it talked to last. */
  server: string
  /** Requests read and not answered (blocking locks still waiting), for the successor to answer, base64. */
  pending: string
}

export interface LiveShare {
  name: string
  mountIds: string[]
  since: string
  /** How a secure volume's key opens here; a passphrase travels with the handed keys, never here. */
  keyOptions: Omit<KeyOptions, 'passphrase'>
  /** This node's users reach it through the FUSE client mount at `mountpoint`, whose descriptor came as `fdname`. */
  client?: { mountpoint: string; fdname: string; mount: HandedMount }
  /** This node serves it from the file system at `root`; `crashed`: not handed over, its predecessor died (no reply cache). */
  served?: { root: string; replies: SavedReply[]; crashed?: boolean }
}

const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string')

const absolute = (v: unknown) => typeof v === 'string' && path.isAbsolute(v)

function isClient(v: unknown): boolean {
  const c = v as Partial<NonNullable<LiveShare['client']>> | null
  if (typeof c !== 'object' || c === null) return false
  const m = c.mount as Partial<HandedMount> | undefined
  return absolute(c.mountpoint) && typeof c.fdname === 'string' && c.fdname.startsWith(SHARE_FD_PREFIX) &&
    typeof m === 'object' && m !== null && typeof m.table === 'string' && Number.isSafeInteger(m.nextNodeid) && (m.nextNodeid ?? 0) > 1 &&
    strings(m.locks) && strings(m.lost) && typeof m.server === 'string' && typeof m.pending === 'string'
}

function isServed(v: unknown): boolean {
  const s = v as Partial<NonNullable<LiveShare['served']>> | null
  if (typeof s !== 'object' || s === null || !absolute(s.root) || !Array.isArray(s.replies) || (s.crashed !== undefined && typeof s.crashed !== 'boolean')) return false
  return s.replies.every((r) => Array.isArray(r) && r.length === 3 && typeof r[0] === 'string' && typeof r[1] === 'string' && Number.isFinite(r[2]))
}

/** Whether `v` is a LiveShare as this version writes it. */
export function isLiveShare(v: unknown): v is LiveShare {
  const s = v as Partial<LiveShare> | null
  if (typeof s !== 'object' || s === null) return false
  const k = s.keyOptions as Partial<KeyOptions> | undefined
  return typeof s.name === 'string' && strings(s.mountIds) && typeof s.since === 'string' &&
    typeof k === 'object' && k !== null && k.passphrase === undefined &&
    (k.secretKey === undefined || typeof k.secretKey === 'string') && (k.useClusterSecret === undefined || typeof k.useClusterSecret === 'boolean') &&
    (s.client !== undefined || s.served !== undefined) && (s.client === undefined || isClient(s.client)) && (s.served === undefined || isServed(s.served))
}
