/**
 * The last step of a stop for a live restart, once the volume manager handed over: the
 * session file a last time (what each descriptor serves), then the descriptors to whoever
 * takes them, the FUSE session's and each shared volume's client connection: to the
 * successor over the handoff socket, or into the service manager's fd store. A failure
 * stops the FUSE session as at a plain stop (the volumes served here go with it) and
 * detaches the client mounts, which nobody serves any more.
 */
import type { Logger } from 'pino'
import type { Frontend } from '../frontend/frontend'
import { unmountFilesystem } from '../frontend/filesystem'
import { native } from '../native/binding'
import type { HandedShare } from '../shares/share-restart'
import type { HandedKeys } from './handed-keys'
import { FD_NAME, type NamedFd } from './inherit'
import { sessionOf, writeSession, type LiveVolume } from './session-file'

/** Where a stopping pxd sends its FUSE session: to a successor, or nowhere (the service manager's fd store has it). */
export type HandoffTarget = { send(fds: NamedFd[], keys: HandedKeys): void } | 'fd-store'

export interface Handed {
  volumes: Array<Omit<LiveVolume, 'loop' | 'mountpoint'>>
  shares: HandedShare[]
}

export interface FinishOptions {
  frontend: Frontend
  target: HandoffTarget
  handed: Handed
  keys: HandedKeys
  runDir: string
  version: string
  log: Logger
  /** A message to the service manager with descriptors (the fd store). */
  notify: (state: string, fds: number[]) => void
}

/** Resolves with the failure, if any: the FUSE session is then stopped as at a plain stop, and the shared client mounts, which nobody serves any more, are detached. */
export async function finishHandoff(o: FinishOptions): Promise<Error | undefined> {
  const { shares, volumes } = o.handed
  try {
    const live = o.frontend.liveState()!
    await writeSession(o.runDir, sessionOf(process.pid, o.version, true, live.fuse, live.attached, volumes, shares.map((s) => s.share)))
    const fd = o.frontend.handOff()
    const clients = shares.flatMap((s) => (s.fd !== undefined && s.share.client ? [{ name: s.share.client.fdname, fd: s.fd }] : []))
    try {
      if (o.target === 'fd-store') for (const c of clients) o.notify(`FDSTORE=1\nFDNAME=${c.name}`, [c.fd])
      else o.target.send([{ name: FD_NAME, fd }, ...clients], o.keys)
    } finally {
      native.closeDescriptor(fd)
      for (const c of clients) native.closeDescriptor(c.fd)
    }
    o.log.info({ volumes: volumes.length, sharedClients: shares.length }, 'FUSE session handed over; every volume stays mounted')
    return undefined
  } catch (err) {
    o.log.error({ err }, 'the handoff failed: stopping as usual')
    await o.frontend.stop()
    for (const s of shares) if (s.share.client) await unmountFilesystem(s.share.client.mountpoint, true).catch(() => undefined)
    return err as Error
  }
}
