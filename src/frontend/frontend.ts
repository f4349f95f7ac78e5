/**
 * How an attached volume reaches a container: device file on the node's FUSE mount ->
 * loop device -> file system (made on first use) -> <run-dir>/mounts/<volume-name>.
 * Attach builds the chain, detach takes it down in reverse, and start() first removes
 * whatever a crashed earlier run left mounted or attached under the run dir, except what a
 * live restart takes over (src/restart/): then the FUSE session is adopted, each volume
 * handed over is bound to its new engine (`resume`) before anything is served, and a
 * volume that could not be taken over is taken down (`abandon`). A
 * DeviceWrapper, if given, stands between each volume's device and the device directory
 * (metrics time every request that way: src/metrics/instrument.ts).
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { growFilesystem, growUnmounted, hasMkfs, listMounts, makeFilesystem, mountFilesystem, probeFilesystem, thawFilesystem, unmountFilesystem, type Filesystem } from './filesystem'
import { ADDON_MAX_REQUEST_BYTES, AddonFuseDevices } from './addon-fuse-devices'
import { ATTR_CACHE_MS, type BlockDevice, type DeviceDirectory, type FuseServerKind } from './device-directory'
import { FuseNativeDevices } from './fuse-native-devices'
import { attachLoop, detachLoop, listLoops, refreshLoopSize } from './loop'
import { run } from '../util/exec'
import type { InheritedSession } from '../restart/inherit'
import type { LiveVolume } from '../restart/session-file'
import type { FuseSessionTable } from '../native/binding'

export interface AttachRequest {
  id: string
  name: string
  fs: Filesystem
  blockSize: number
  device: BlockDevice
  /** The volume got its file system on an earlier attach: never run mkfs on it again. */
  formatted: boolean
  /** Told once mkfs made the file system, before it is mounted. */
  onFormatted?: () => Promise<void>
  /** A snapshot: a read-only loop device and mount; no mkfs, no grow. */
  readOnly?: boolean
  /**
   * Where to mount it, when not at mountpointOf(name): a shared volume taken over by a node
   * whose own users already have the client mount there is served from servedPathOf(name).
   */
  mountpoint?: string
}

/** A device served in place of a volume's own, and what to do once the volume no longer uses it. */
export interface WrappedDevice {
  readonly device: BlockDevice
  release(): void
}

/**
 * Called as each attach begins. Its `release` runs once: when that attach fails, or after
 * the volume's detach completes.
 */
export type DeviceWrapper = (name: string, device: BlockDevice) => WrappedDevice

interface Attached { id: string; name: string; loop: string; mountpoint: string }

export class Frontend {
  readonly runDir: string
  readonly #log: Logger
  readonly #devices: DeviceDirectory
  readonly #attached = new Map<string, Attached>()
  readonly #wrapDevice: DeviceWrapper | undefined
  /** The wrapped devices of attached volumes, by volume name. */
  readonly #wrapped = new Map<string, WrappedDevice>()

  /** `fuseRequestTimeout`: seconds a FUSE request may wait before the kernel aborts the connection (0: no bound). */
  constructor(runDir: string, log: Logger, fuseServer: FuseServerKind = 'addon', wrapDevice?: DeviceWrapper, fuseRequestTimeout = 0) {
    this.runDir = runDir
    this.#log = log
    this.#wrapDevice = wrapDevice
    const devDir = path.join(runDir, 'dev')
    this.#devices = fuseServer === 'addon'
      ? new AddonFuseDevices(devDir, log, ADDON_MAX_REQUEST_BYTES, fuseRequestTimeout)
      : new FuseNativeDevices(devDir, log, fuseRequestTimeout)
  }

  get mountsDir(): string {
    return path.join(this.runDir, 'mounts')
  }

  mountpointOf(name: string): string {
    return path.join(this.mountsDir, name)
  }

  /** Where a shared volume's file system is mounted on a node that serves it to others only. */
  get servedDir(): string {
    return path.join(this.runDir, 'served')
  }

  servedPathOf(name: string): string {
    return path.join(this.servedDir, name)
  }

  /** `inherited`: the FUSE session of a live restart, adopted instead of a new mount (serve it once its volumes are bound). */
  async start(inherited?: InheritedSession): Promise<void> {
    await fs.mkdir(this.mountsDir, { recursive: true, mode: 0o755 })
    await fs.mkdir(this.servedDir, { recursive: true, mode: 0o700 })
    await this.cleanupStale(inherited?.session.volumes, inherited?.session.shares?.flatMap((s) => [s.client?.mountpoint, s.served?.root].filter((m): m is string => m !== undefined)))
    if (inherited) this.#live().adopt({ ...inherited.session.fuse, fd: inherited.fd })
    else await this.#devices.mount()
  }

  /**
   * Unmount what an earlier run left under the run dir, detach its loops, drop its FUSE
   * mount; with `kept` (a live restart), that session's mount and the volumes it hands over
   * stay, and so do the shared volumes' client mounts at `keptShares`.
   */
  async cleanupStale(kept?: LiveVolume[], keptShares: string[] = []): Promise<void> {
    const devDir = this.#devices.mountpoint
    const mounts = await listMounts()
    const keptMounts = new Set([...(kept?.map((v) => v.mountpoint) ?? []), ...keptShares])
    const keptLoops = new Set(kept?.map((v) => v.loop))
    const ours = (target: string) => !keptMounts.has(target) && (target.startsWith(this.mountsDir + '/') || target.startsWith(this.servedDir + '/'))
    for (const m of mounts.filter((m) => ours(m.target)).reverse()) {
      this.#log.warn({ mountpoint: m.target }, 'unmounting a file system left by an earlier run')
      // A run killed during a snapshot left it frozen: a frozen file system never finishes
      // its (lazy) unmount, and its loop device stays attached for good. Not frozen: refused, harmless.
      await thawFilesystem(m.target).catch(() => undefined)
      await unmountFilesystem(m.target, true).catch((err) => this.#log.error({ err, mountpoint: m.target }, 'stale unmount failed'))
    }
    for (const loop of await listLoops()) {
      if (!loop.backingFile.startsWith(devDir + '/') || keptLoops.has(loop.device)) continue
      this.#log.warn({ loop: loop.device, file: loop.backingFile }, 'detaching a loop device left by an earlier run')
      await detachLoop(loop.device).catch((err) => this.#log.error({ err, loop: loop.device }, 'stale loop detach failed'))
    }
    if (kept === undefined && mounts.some((m) => m.target === devDir)) {
      this.#log.warn({ mountpoint: devDir }, 'removing a FUSE mount left by an earlier run')
      await run('umount', ['--lazy', devDir]).catch((err) => this.#log.error({ err }, 'stale FUSE unmount failed'))
    }
  }

  /** Build the chain for one volume; on any failure, undo what was done. Returns the mountpoint. */
  async attach(req: AttachRequest): Promise<string> {
    if (this.#wrapDevice === undefined) return this.#attach(req)
    const wrapped = this.#wrapDevice(req.name, req.device)
    try {
      const mountpoint = await this.#attach({ ...req, device: wrapped.device })
      this.#wrapped.set(req.name, wrapped)
      return mountpoint
    } catch (err) {
      wrapped.release()
      throw err
    }
  }

  async #attach(req: AttachRequest): Promise<string> {
    if (this.#attached.has(req.name)) throw pxdError('CONFLICT', `volume ${req.name} is already attached on this node`)
    if (req.fs !== 'ext4' && !(await hasMkfs(req.fs))) {
      throw pxdError('PRECONDITION', `fs=${req.fs} needs mkfs.${req.fs}, which is not installed on this node`)
    }
    const undo: Array<() => Promise<void>> = []
    try {
      this.#devices.add(req.id, req.device)
      undo.push(async () => this.#devices.remove(req.id))
      const loop = await attachLoop(this.#devices.pathOf(req.id), req.readOnly)
      undo.push(() => detachLoop(loop))
      const existing = await probeFilesystem(loop)
      if (existing === undefined && req.readOnly) {
        throw pxdError('IO_ERROR', `snapshot ${req.name} holds no file system that can be read (its volume had none when it was taken)`)
      } else if (existing === undefined) {
        // blkid also finds nothing when it cannot read the device: only a volume that
        // was never formatted may get mkfs, or a damaged one would be formatted over.
        if (req.formatted) {
          throw pxdError('IO_ERROR', `volume ${req.name} was formatted before, but no file system can be read on it; refusing to run mkfs over its data`)
        }
        this.#log.info({ volume: req.name, volumeId: req.id, fs: req.fs, loop }, 'making a file system on first use')
        await makeFilesystem(loop, req.fs, req.blockSize, req.name)
        await req.onFormatted?.()
      } else if (existing !== req.fs) {
        throw pxdError('CONFLICT', `volume ${req.name} holds a ${existing} file system, not ${req.fs}`)
      } else if (!req.formatted) {
        // mkfs ran on an earlier attach whose record of it failed: record it now, or the
        // guard against formatting over the data would never hold.
        await req.onFormatted?.()
      }
      if (!req.readOnly && existing !== undefined && (await growUnmounted(loop, existing, req.device.size))) {
        this.#log.info({ volume: req.name, volumeId: req.id, loop }, 'file system grown to the volume\'s size before the mount')
      }
      const mountpoint = req.mountpoint ?? this.mountpointOf(req.name)
      await mountFilesystem(loop, mountpoint, req.fs, req.readOnly)
      if (req.fs === 'xfs' && !req.readOnly) await growFilesystem(loop, mountpoint, 'xfs')
      this.#attached.set(req.name, { id: req.id, name: req.name, loop, mountpoint })
      this.#log.info({ volume: req.name, volumeId: req.id, loop, mountpoint }, 'volume attached')
      return mountpoint
    } catch (err) {
      for (const step of undo.reverse()) await step().catch((e) => this.#log.error({ err: e, volume: req.name, volumeId: req.id }, 'rollback step failed'))
      throw err
    }
  }

  /**
   * After an attached volume's device grew: its device file, then its loop device, then its
   * file system take the new size, while it stays mounted.
   */
  async grew(name: string, type: Filesystem): Promise<void> {
    const a = this.#attached.get(name)
    if (!a) throw pxdError('NOT_FOUND', `volume ${name} is not attached on this node`)
    this.#devices.resized(a.id)
    // The kernel asks for the file's size again once its cached attributes expired, on the next stat.
    await new Promise((resolve) => setTimeout(resolve, ATTR_CACHE_MS + 100))
    await fs.stat(this.#devices.pathOf(a.id))
    await refreshLoopSize(a.loop)
    await growFilesystem(a.loop, a.mountpoint, type)
    this.#log.info({ volume: name, volumeId: a.id, loop: a.loop, mountpoint: a.mountpoint }, 'file system grown to the volume\'s new size')
  }

  /** Unmount, detach the loop, drop the device file. `lazy` when shutting down: never hang on a busy mount. */
  async detach(name: string, lazy = false): Promise<void> {
    await this.#detach(name, lazy)
    const wrapped = this.#wrapped.get(name)
    if (wrapped === undefined) return
    this.#wrapped.delete(name)
    wrapped.release()
  }

  async #detach(name: string, lazy: boolean): Promise<void> {
    const a = this.#attached.get(name)
    if (!a) return
    await unmountFilesystem(a.mountpoint, lazy)
    this.#attached.delete(name)
    await detachLoop(a.loop)
    this.#devices.remove(a.id)
    await fs.rmdir(a.mountpoint).catch(() => undefined)
    this.#log.info({ volume: name, volumeId: a.id }, 'volume detached')
  }

  /** A volume handed over by a live restart is served by `device` (its loop and mount stay as they are). */
  resume(v: LiveVolume, device: BlockDevice): void {
    const wrapped = this.#wrapDevice?.(v.name, device)
    this.#live().bind(v.volumeId, wrapped?.device ?? device)
    if (wrapped) this.#wrapped.set(v.name, wrapped)
    this.#attached.set(v.name, { id: v.volumeId, name: v.name, loop: v.loop, mountpoint: v.mountpoint })
    this.#log.info({ volume: v.name, volumeId: v.volumeId, loop: v.loop, mountpoint: v.mountpoint }, 'volume taken over: its mount stayed up')
  }

  /** A volume handed over that could not be taken over: its mount and loop go (after `serve`: its file answers EIO then). */
  async abandon(v: LiveVolume): Promise<void> {
    this.#log.warn({ volume: v.name, volumeId: v.volumeId, mountpoint: v.mountpoint }, 'taking down a mount the previous pxd left that this one cannot serve')
    await thawFilesystem(v.mountpoint).catch(() => undefined)
    await unmountFilesystem(v.mountpoint, true).catch((err) => this.#log.error({ err, mountpoint: v.mountpoint }, 'unmount failed'))
    await detachLoop(v.loop).catch((err) => this.#log.error({ err, loop: v.loop }, 'loop detach failed'))
    await fs.rmdir(v.mountpoint).catch(() => undefined)
  }

  /** Serve an adopted session; `resend`: the kernel sends again what a dead predecessor read and never answered. */
  serve(resend: boolean): boolean {
    return this.#live().serve(resend)
  }

  /** Whether a live restart can hand this session over: the addon's server serves the device directory. */
  get live(): boolean {
    return this.#devices instanceof AddonFuseDevices && this.#devices.mounted
  }

  /** What a successor adopts (the device files by nodeid), and the loop and mount of each attached volume; undefined without the addon's server. */
  liveState(): { fuse: FuseSessionTable; attached: Array<{ name: string; loop: string; mountpoint: string }> } | undefined {
    if (!this.live) return undefined
    return { fuse: this.#live().table(), attached: [...this.#attached.values()] }
  }

  /** Stop taking requests and wait for those read to be answered (a handoff; the kernel queues the rest). */
  drain(timeoutMs: number): Promise<void> {
    return this.#live().drain(timeoutMs)
  }

  /** The end of a handoff: the session's descriptor, now the caller's; every mount stays. */
  handOff(): number {
    for (const wrapped of this.#wrapped.values()) wrapped.release()
    this.#wrapped.clear()
    this.#attached.clear()
    return this.#live().export()
  }

  #live(): AddonFuseDevices {
    if (!(this.#devices instanceof AddonFuseDevices)) throw pxdError('PRECONDITION', 'a live restart needs the addon\'s FUSE server (--fuse-server addon)')
    return this.#devices
  }

  async stop(): Promise<void> {
    for (const name of [...this.#attached.keys()]) {
      await this.detach(name, true).catch((err) => this.#log.error({ err, volume: name }, 'detach at shutdown failed'))
    }
    await this.#devices.unmount(true)
  }
}
