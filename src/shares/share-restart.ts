/**
 * A live restart of the shared volumes on this node (what travels: share-handoff.ts).
 *
 * The old pxd (handOffShares): every client mount pauses its reader at once; then, volume
 * by volume, the client mount answers what it read, commits its writes and gives its
 * connection up, and an export stops taking requests (new ones get NOT_SERVING: their
 * clients look again and wait), answers those it took and closes, its reply cache kept.
 * A served volume stays attached and mounted: the volume manager hands it over with the
 * others. A client's registration is left to its lease for the successor to put again.
 *
 * The new pxd (resumeShares), after the volume manager resumed the volumes: each served
 * volume this node still holds gets an export again over the same file system, with the
 * reply cache, in a grace period; each client it had (this node's own client mount too)
 * must take its locks again first, since they were the old executor's (share-export.ts).
 * Then the client mounts are adopted.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { unmountFilesystem } from '../frontend/filesystem'
import type { LeasedKey } from '../kvdb/kvdb'
import { native } from '../native/binding'
import { ShareExport } from './share-export'
import { SHARE_FD_PREFIX, type LiveShare } from './share-handoff'
import { ShareMount } from './share-mount'
import type { Route } from './share-routes'
import { newState, type ShareState, type SharedVolumesOptions } from './share-state'

/** A volume handed over: its record, and its client connection if it has one. */
export interface HandedShare { share: LiveShare; fd?: number }

/** What SharedVolumes lends: its states, and how its client mounts route and register. */
export interface RestartHost {
  o: SharedVolumesOptions
  states: Map<string, ShareState>
  routeOf(name: string, stale: Route | undefined): Promise<Route>
  register(st: ShareState): Promise<LeasedKey>
  graceMs: number
}

export async function handOffShares(h: RestartHost, timeoutMs: number): Promise<HandedShare[]> {
  const states = [...h.states.values()]
  for (const st of states) st.client?.pause()
  const out: HandedShare[] = []
  let clients = 0
  for (const st of states) {
    const { passphrase: _secret, ...keyOptions } = st.keyOptions
    const share: LiveShare = { name: st.name, mountIds: [...st.mountIds], since: st.since, keyOptions }
    let fd: number | undefined
    if (st.client) {
      try {
        const handed = await st.client.handOff(timeoutMs)
        fd = handed.fd
        share.client = { mountpoint: st.client.mountpoint, fdname: `${SHARE_FD_PREFIX}${clients++}`, mount: handed.handed }
      } catch (err) {
        h.o.log.error({ err, volume: st.name }, 'the shared volume\'s client mount cannot be handed over: it is unmounted')
        if (!st.export) continue
        unmountQuietly(st.client, h.o.log)
      }
    }
    if (st.export) {
      const exp = st.export
      h.o.service.remove(exp)
      await exp.close()
      share.served = { root: exp.root, replies: await exp.savedReplies() }
      st.export = undefined
    }
    st.registration?.release()
    h.states.delete(st.name)
    out.push({ share, ...(fd !== undefined ? { fd } : {}) })
  }
  return out
}

/** A shared volume the volume manager resumed here: its file system's mountpoint and mount IDs. */
export interface ServedAttachment { name: string; mountpoint: string; mountIds: string[] }

/**
 * Each share under its volume's lock; a connection nobody names is closed. A shared volume
 * `attached` here that no share names (the predecessor crashed: it wrote none) is served
 * again all the same, without a reply cache; a client mount it had died with the process.
 */
export async function resumeShares(h: RestartHost, handed: readonly LiveShare[], fds: Map<string, number>, keys: Record<string, { passphrase?: string }>, attached: readonly ServedAttachment[]): Promise<void> {
  const named = new Set(handed.map((s) => s.name))
  const shares = [...handed, ...attached.filter((a) => !named.has(a.name)).map((a): LiveShare => ({
    name: a.name, mountIds: a.mountpoint === h.o.host.mountpointOf(a.name) ? a.mountIds : [], since: new Date().toISOString(), keyOptions: {}, served: { root: a.mountpoint, replies: [], crashed: true },
  }))]
  for (const share of shares) {
    const fd = share.client ? fds.get(share.client.fdname) : undefined
    if (share.client) fds.delete(share.client.fdname)
    await h.o.locks.run(share.name, () => resume(h, share, fd, keys[share.name]?.passphrase)).catch(async (err) => {
      h.o.log.error({ err, volume: share.name }, 'could not take over a shared volume the previous pxd had')
      if (share.client && fd === undefined) await unmountFilesystem(share.client.mountpoint, true).catch(() => undefined)
    })
  }
  for (const fd of fds.values()) native.closeDescriptor(fd)
  fds.clear()
}

async function resume(h: RestartHost, share: LiveShare, fd: number | undefined, passphrase: string | undefined): Promise<void> {
  const st = newState(share.name, '', { ...share.keyOptions, ...(passphrase !== undefined ? { passphrase } : {}) })
  st.mountIds = new Set(share.mountIds)
  st.since = share.since
  if (share.served) await serveAgain(h, st, share.served)
  if (share.client) {
    if (fd === undefined) throw pxdError('HANDOFF_FAILED', `the connection of ${share.client.fdname} did not come`)
    const { mountpoint, mount } = share.client
    try {
      st.client = ShareMount.adopt({ name: share.name, mountpoint, resolve: (stale) => h.routeOf(share.name, stale), log: h.o.log }, mount, fd)
    } catch (err) {
      await unmountFilesystem(mountpoint, true).catch(() => undefined)
      if (!st.export) throw err
      h.o.log.error({ err, volume: share.name }, 'could not take over the shared volume\'s client mount: it is unmounted; the volume is still served')
    }
  }
  if (!st.export && !st.client) return
  h.states.set(share.name, st)
  if (st.client && !st.export) {
    st.registration = await h.register(st).catch((err) => {
      h.o.log.warn({ err, volume: share.name }, 'could not register as a client of the shared volume again')
      return undefined
    })
  }
  h.o.log.info({ volume: share.name, served: st.export !== undefined, client: st.client?.mountpoint }, 'live restart: the shared volume was taken over')
}

/** The export again, if the volume manager resumed the attachment here. */
async function serveAgain(h: RestartHost, st: ShareState, served: NonNullable<LiveShare['served']>): Promise<void> {
  const holder = await h.o.host.holder(st.name)
  if (holder?.nodeId !== h.o.nodeId) {
    h.o.log.warn({ volume: st.name, holder: holder?.nodeId }, 'the shared volume is no longer attached here: not served again')
    return
  }
  const others = (await h.o.registry.others(st.name)).map((c) => c.nodeId)
  const reclaimFrom = [...others, h.o.nodeId]
  const volumeId = await h.o.host.volumeId(st.name)
  st.export = await ShareExport.open(h.o.executor, st.name, volumeId, served.root, h.o.log, h.graceMs, { replies: served.replies, crashed: served.crashed === true, reclaimFrom })
  st.epoch = holder.epoch
  h.o.service.add(st.export)
}

/** A lazy unmount of a client mount; a failure is logged, not thrown (the stop goes on). */
export function unmountQuietly(client: ShareMount, log: Logger): void {
  try {
    client.unmount(true)
  } catch (err) {
    log.error({ err, volume: client.name }, 'lazy unmount of a shared volume client failed')
  }
}
