/**
 * Shared volumes on this node: mounted on many nodes at once, served by one.
 *
 * The first node to mount attaches the volume as any other (claim, epoch, replicas, ext4
 * at the mountpoint) and serves its files (ShareExport); its own containers use the ext4
 * directly. Every other node registers as a client (share-registry.ts, under its lease)
 * and mounts the addon's FUSE client there (ShareMount), which sends each file operation
 * to the server. The server stays attached while it has local mounts or any live client.
 *
 * Failover: a client whose server went looks for the server again (route). While the
 * attachment names a live node, that node is the server. Once nobody holds it (released,
 * or the holder's lease expired), the client claims the volume itself, which fences the
 * old server with a new epoch, mounts its ext4 at the served path (its users already have
 * the FUSE mount at the mountpoint, whose requests now go to this node's own export) and
 * serves the others. Every state change runs under the volume's lock.
 */
import type { Logger } from 'pino'
import { codeOf, pxdError } from '../errors'
import { ShareExport } from './share-export'
import { ShareMount } from './share-mount'
import { localRoute, remoteRoute, type Route } from './share-routes'
import type { LiveShare } from './share-handoff'
import { handOffShares, resumeShares, unmountQuietly, type HandedShare, type RestartHost, type ServedAttachment } from './share-restart'
import type { ShareClientRecord } from './share-registry'
import { newState, type ShareState, type SharedVolumesOptions } from './share-state'
import type { KeyOptions } from '../volumes/keys'

/** How often a serving node checks its clients (lease expiries) and whether it may detach. */
export const CLIENT_CHECK_MS = 2_000
/**
 * How long a new server of a volume that has clients grants only reclaimed locks: clients
 * check their server every second while they hold locks (share-mount.ts), so a few
 * seconds cover a takeover; other lock requests wait meanwhile (they are asked again).
 */
export const GRACE_MS = 5_000

export class SharedVolumes {
  readonly #o: SharedVolumesOptions
  readonly #states = new Map<string, ShareState>()
  readonly #volumeIds = new Map<string, string>()
  /** Volumes whose lock the caller holds now (mount, unmount): a takeover they cause must not wait for it. */
  readonly #held = new Set<string>()
  #timer: NodeJS.Timeout | undefined
  #stopping = false

  constructor(o: SharedVolumesOptions) {
    this.#o = o
  }

  /** A live restart: what each volume on this node hands over (share-restart.ts). */
  handOff(timeoutMs: number): Promise<HandedShare[]> {
    return handOffShares(this.#restartHost(), timeoutMs)
  }

  /** A live restart, before start: the volumes handed over (share-restart.ts). */
  resumeAll(shares: readonly LiveShare[], fds: Map<string, number>, keys: Record<string, { passphrase?: string }>, attached: readonly ServedAttachment[]): Promise<void> {
    return resumeShares(this.#restartHost(), shares, fds, keys, attached)
  }

  #restartHost(): RestartHost {
    return { o: this.#o, states: this.#states, routeOf: (name, stale) => this.#routeOf(name, stale), register: (st) => this.#o.registry.register(st.name, this.#record(st)), graceMs: GRACE_MS }
  }

  /** The passphrases of secure volumes mounted here as clients (kept for a takeover), for a successor only. */
  liveKeys(): Record<string, { passphrase: string }> {
    return Object.fromEntries([...this.#states.values()].filter((st) => st.client && !st.export && st.keyOptions.passphrase !== undefined).map((st) => [st.name, { passphrase: st.keyOptions.passphrase! }]))
  }

  start(): void {
    this.#timer = setInterval(() => void this.#checkClients(), CLIENT_CHECK_MS)
    this.#timer.unref()
  }

  /**
   * Under the volume's lock. Returns the mountpoint. A secure volume needs its key on every
   * node that mounts it, client or server: a client that has it can serve after a takeover,
   * and one without it never reads the volume through another node.
   */
  async mount(name: string, mountId: string, keyOptions: KeyOptions = {}): Promise<string> {
    this.#held.add(name)
    try {
      await this.#o.host.checkKey(name, keyOptions)
      return await this.#mount(name, mountId, keyOptions)
    } finally {
      this.#held.delete(name)
    }
  }

  async #mount(name: string, mountId: string, keyOptions: KeyOptions): Promise<string> {
    const st = this.#states.get(name)
    if (st && (st.client || st.export?.root === this.#o.host.mountpointOf(name))) {
      st.mountIds.add(mountId)
      await this.#publish(st)
      return this.#o.host.mountpointOf(name)
    }
    if (st?.export) {
      // Served from the served path with no local users: they get the client mount, routed here.
      st.client = this.#newClient(name)
      await st.client.mount()
      st.mountIds.add(mountId)
      return st.client.mountpoint
    }
    for (let attempt = 0; ; attempt++) {
      const holder = (await this.#o.host.holder(name))?.nodeId ?? null
      if (holder === null || holder === this.#o.nodeId || !(await this.#o.host.isOnline(holder))) {
        try {
          return await this.#serve(name, mountId, keyOptions)
        } catch (err) {
          // Another node attached it meanwhile: be its client.
          if (!(codeOf(err) === 'IN_USE' || codeOf(err) === 'CONFLICT') || attempt >= 3) throw err
          continue
        }
      }
      return this.#mountClient(name, mountId, keyOptions)
    }
  }

  /** Under the volume's lock. */
  async unmount(name: string, mountId: string): Promise<void> {
    this.#held.add(name)
    try {
      await this.#unmount(name, mountId)
    } finally {
      this.#held.delete(name)
    }
  }

  async #unmount(name: string, mountId: string): Promise<void> {
    const st = this.#states.get(name)
    if (!st || !st.mountIds.has(mountId)) return
    if (st.mountIds.size > 1) {
      st.mountIds.delete(mountId)
      await this.#publish(st)
      return
    }
    if (st.client) {
      st.client.unmount(false)
      st.client = undefined
      await st.registration?.revoke().catch(() => undefined)
      st.registration = undefined
    }
    st.mountIds.delete(mountId)
    if (st.export && (await this.#o.registry.others(name)).length === 0) await this.#stopServing(st)
    if (!st.export) this.#states.delete(name)
  }

  has(name: string): boolean {
    return this.#states.has(name)
  }

  path(name: string): string | null {
    const st = this.#states.get(name)
    if (!st || st.mountIds.size === 0) return null
    return this.#o.host.mountpointOf(name)
  }

  /** This node's mounts of the volume, for inspect. */
  mounted(name: string): { mountpoint: string; mountIds: ReadonlySet<string> } | undefined {
    const st = this.#states.get(name)
    if (!st || st.mountIds.size === 0) return undefined
    return { mountpoint: this.#o.host.mountpointOf(name), mountIds: st.mountIds }
  }

  /** Refuses (IN_USE) while any node has the volume mounted as a client. */
  async checkUnmounted(name: string): Promise<void> {
    const clients = await this.#o.registry.clients(name)
    if (clients.length > 0) throw pxdError('IN_USE', `shared volume ${name} is mounted on node(s) ${clients.map((c) => c.nodeId).join(', ')}`)
  }

  /** What this node knows of a volume it has: role, server, per-client counters when it serves. */
  local(name: string): { server: string | undefined; mounts: number; counters?: Record<string, { ops: number; bytes: number }> } | undefined {
    const st = this.#states.get(name)
    if (!st) return undefined
    const server = st.export ? this.#o.nodeId : st.client?.server?.split('@')[0]
    const counters = st.export ? Object.fromEntries(st.export.counters()) : undefined
    return { server, mounts: st.mountIds.size, ...(counters ? { counters } : {}) }
  }

  /** Every export with its per-client counters, for /metrics. */
  exports(): Array<{ name: string; counters: ReadonlyMap<string, { ops: number; bytes: number }> }> {
    return [...this.#states.values()].filter((s) => s.export).map((s) => ({ name: s.name, counters: s.export!.counters() }))
  }

  /** The volume was fenced here: from now on no reply of its export counts. */
  fence(name: string): void {
    this.#states.get(name)?.export?.fence()
  }

  /** The manager tore down the attachment (fenced): stop serving without detaching again. */
  async fenced(name: string): Promise<void> {
    const st = this.#states.get(name)
    if (!st?.export) return
    const exp = st.export
    exp.fence()
    st.export = undefined
    this.#o.service.remove(exp)
    await exp.close()
    if (!st.client) this.#states.delete(name)
  }

  /** The daemon stops: client mounts go lazily, exports close; the manager then detaches. */
  async stop(): Promise<void> {
    this.#stopping = true
    clearInterval(this.#timer)
    for (const st of this.#states.values()) {
      if (st.client) unmountQuietly(st.client, this.#o.log)
      await st.registration?.revoke().catch(() => undefined)
      if (st.export) {
        this.#o.service.remove(st.export)
        await st.export.close()
      }
    }
    this.#states.clear()
  }

  async #serve(name: string, mountId: string, keyOptions: KeyOptions): Promise<string> {
    const st = newState(name, mountId, keyOptions)
    const { mountpoint, volumeId } = await this.#export(st)
    this.#states.set(name, st)
    this.#o.log.info({ volume: name, volumeId, epoch: st.epoch }, 'serving shared volume')
    return mountpoint
  }

  /** Attach here (file system at `at`, default the mountpoint) and serve it: the state gets the export and its epoch. */
  async #export(st: ShareState, at?: string): Promise<{ mountpoint: string; volumeId: string }> {
    const { mountpoint, volumeId, epoch } = await this.#o.host.attach(st.name, at, st.keyOptions)
    try {
      st.export = await ShareExport.open(this.#o.executor, st.name, volumeId, mountpoint, this.#o.log, await this.#graceFor(st.name))
    } catch (err) {
      await this.#o.host.detach(st.name)
      throw err
    }
    st.epoch = epoch
    this.#o.service.add(st.export)
    return { mountpoint, volumeId }
  }

  async #mountClient(name: string, mountId: string, keyOptions: KeyOptions): Promise<string> {
    const st = newState(name, mountId, keyOptions)
    st.registration = await this.#o.registry.register(name, this.#record(st))
    try {
      st.client = this.#newClient(name)
      // The state is visible before the root is asked for: a takeover during the mount finds it.
      this.#states.set(name, st)
      await st.client.mount()
      return st.client.mountpoint
    } catch (err) {
      this.#states.delete(name)
      await st.registration.revoke().catch(() => undefined)
      if (st.export) await this.#stopServing(st).catch(() => undefined)
      throw err
    }
  }

  #newClient(name: string): ShareMount {
    return new ShareMount({ name, mountpoint: this.#o.host.mountpointOf(name), resolve: (stale) => this.#routeOf(name, stale), log: this.#o.log })
  }

  /** The serving node now; when nobody holds the volume, this node takes it over. */
  async #routeOf(name: string, _stale: Route | undefined): Promise<Route> {
    const holder = await this.#o.host.holder(name)
    if (holder !== null && holder.nodeId !== this.#o.nodeId && (await this.#o.host.isOnline(holder.nodeId))) {
      // A node that served the volume (and so was no client) is one again.
      const st = this.#states.get(name)
      if (st && !st.export && !st.registration) st.registration = await this.#o.registry.register(name, this.#record(st))
      return remoteRoute(await this.#o.host.channel(holder.nodeId), await this.#volumeIdOf(name), holder.nodeId, holder.epoch)
    }
    const serveHere = async () => {
      const st = this.#states.get(name)
      if (!st || this.#stopping) throw pxdError('ABORTED', `shared volume ${name} is no longer mounted here`)
      if (!st.export) await this.#takeOver(st)
      return localRoute(this.#o.nodeId, st.export!, st.epoch)
    }
    const current = this.#states.get(name)?.export
    if (current && !current.closed) return serveHere()
    return this.#held.has(name) ? serveHere() : this.#o.locks.run(name, serveHere)
  }

  async #takeOver(st: ShareState): Promise<void> {
    this.#o.log.warn({ volume: st.name }, 'no node serves shared volume; taking it over')
    const { volumeId } = await this.#export(st, this.#o.host.servedPathOf(st.name))
    // A server is no client of its own.
    await st.registration?.revoke().catch(() => undefined)
    st.registration = undefined
    this.#o.log.info({ volume: st.name, volumeId }, 'serving shared volume after a takeover')
  }

  /** A new server with clients (whose locks the last one held) grants only their reclaims at first. */
  async #graceFor(name: string): Promise<number> {
    return (await this.#o.registry.others(name)).length > 0 ? GRACE_MS : 0
  }

  async #volumeIdOf(name: string): Promise<string> {
    const known = this.#volumeIds.get(name)
    if (known) return known
    const volumeId = await this.#o.host.volumeId(name)
    this.#volumeIds.set(name, volumeId)
    return volumeId
  }

  async #stopServing(st: ShareState): Promise<void> {
    const exp = st.export
    if (!exp) return
    st.export = undefined
    this.#o.service.remove(exp)
    await exp.close()
    await this.#o.host.detach(st.name)
    this.#o.log.info({ volume: st.name }, 'stopped serving shared volume')
  }

  #record(st: ShareState): Omit<ShareClientRecord, 'nodeId'> {
    return { mounts: st.mountIds.size, ops: st.client?.ops ?? 0, bytes: st.client?.bytes ?? 0, since: st.since }
  }

  async #publish(st: ShareState): Promise<void> {
    await st.registration?.update({ nodeId: this.#o.nodeId, ...this.#record(st) }).catch((err) => this.#o.log.warn({ err, volume: st.name }, 'could not update this client\'s share record'))
  }

  /** Drops clients whose records are gone and detaches served volumes nobody uses any more. */
  async #checkClients(): Promise<void> {
    for (const st of [...this.#states.values()]) {
      if (this.#stopping) return
      try {
        if (st.registration && st.client) await this.#publish(st)
        const exp = st.export
        if (!exp) continue
        const live = new Set((await this.#o.registry.others(st.name)).map((c) => c.nodeId))
        for (const client of exp.clients()) {
          if (client === this.#o.nodeId || live.has(client)) continue
          exp.dropClient(client)
          this.#o.service.forget(exp.volumeId, client)
        }
        if (live.size === 0 && st.mountIds.size === 0) {
          await this.#o.locks.run(st.name, async () => {
            if (st.export !== exp || st.mountIds.size > 0 || (await this.#o.registry.others(st.name)).length > 0) return
            await this.#stopServing(st)
            if (!st.client) this.#states.delete(st.name)
          })
        }
      } catch (err) {
        this.#o.log.warn({ err, volume: st.name }, 'checking a shared volume\'s clients failed')
      }
    }
  }
}
