/**
 * What a live restart hands over of a shared volume that this node mounts as a client
 * (ShareMount.handOff, SharedVolumes.handOff): the FUSE connection itself travels as a
 * descriptor (named `pxd-share-<n>` in the handoff datagram or the service manager's fd
 * store), and this record, in the session file, says what it serves: the nodeid table the
 * kernel's nodeids mean, the locks held (to reclaim from a later server), the files whose
 * next fsync must fail, and the server it was talking to. Written only by a clean handoff:
 * after a crash the table is gone with the process, and so is the connection.
 *
 * A volume this node serves is not handed over: its clients find it again after the
 * restart (they wait for a server, as for a takeover) and reclaim their locks then.
 */
import path from 'node:path'
import type { KeyOptions } from '../volumes/keys'

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
}

export interface LiveShare {
  name: string
  mountpoint: string
  mountIds: string[]
  since: string
  /** How a secure volume's key opens here; a passphrase travels with the handed keys, never here. */
  keyOptions: Omit<KeyOptions, 'passphrase'>
  /** The name its descriptor came under. */
  fdname: string
  mount: HandedMount
}

const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string')

/** Whether `v` is a LiveShare as this version writes it. */
export function isLiveShare(v: unknown): v is LiveShare {
  const s = v as Partial<LiveShare> | null
  if (typeof s !== 'object' || s === null) return false
  const m = s.mount as Partial<HandedMount> | undefined
  const k = s.keyOptions as Partial<KeyOptions> | undefined
  return typeof s.name === 'string' && typeof s.mountpoint === 'string' && path.isAbsolute(s.mountpoint) && strings(s.mountIds) &&
    typeof s.since === 'string' && typeof s.fdname === 'string' && s.fdname.startsWith(SHARE_FD_PREFIX) &&
    typeof k === 'object' && k !== null && k.passphrase === undefined &&
    (k.secretKey === undefined || typeof k.secretKey === 'string') && (k.useClusterSecret === undefined || typeof k.useClusterSecret === 'boolean') &&
    typeof m === 'object' && m !== null && typeof m.table === 'string' && Number.isSafeInteger(m.nextNodeid) && (m.nextNodeid ?? 0) > 1 &&
    strings(m.locks) && strings(m.lost) && typeof m.server === 'string'
}
