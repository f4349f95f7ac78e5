/**
 * The device directory served by libfuse 2 through fuse-native (`--fuse-server fuse-native`).
 * fuse-native hands every request to the JS thread, and libfuse 2 caps requests at 128 KiB
 * and never negotiates asynchronous direct I/O: the kernel sends one request at a time.
 * fuse-native does not ask libfuse 2 for big writes; its fsname option is passed through
 * verbatim, which is how big_writes and max_write reach the kernel (128 KiB requests
 * instead of 4 KiB ones).
 */
import { constants } from 'node:os'
import type Fuse from 'fuse-native'
import type { Logger } from 'pino'
import { errnoOf, type BlockDevice, type DeviceDirectory } from './device-directory'
import { pxdError } from '../errors'

/** Largest request libfuse 2 can pass (its buffer is 128 KiB + header). */
export const LIBFUSE2_MAX_REQUEST_BYTES = 128 * 1024
const FUSE_OPTIONS = `pxd,big_writes,max_write=${LIBFUSE2_MAX_REQUEST_BYTES},max_read=${LIBFUSE2_MAX_REQUEST_BYTES}`

const E = constants.errno
const OK = 0

export class FuseNativeDevices implements DeviceDirectory {
  readonly mountpoint: string
  readonly #log: Logger
  readonly #devices = new Map<string, BlockDevice>()
  readonly #handles = new Map<number, BlockDevice>()
  #nextHandle = 1
  #fuse: Fuse | undefined
  readonly #mountedAt = Math.floor(Date.now() / 1000) * 1000

  readonly #requestTimeout: number

  /** `requestTimeout`: what --fuse-request-timeout asked for; libfuse 2 cannot ask the kernel for it. */
  constructor(mountpoint: string, log: Logger, requestTimeout = 0) {
    this.mountpoint = mountpoint
    this.#log = log
    this.#requestTimeout = requestTimeout
  }

  async mount(): Promise<void> {
    // Loaded only when chosen: it needs libfuse.so.2, which the addon's server does not.
    const FuseNative = (await import('fuse-native')).default
    const fuse = new FuseNative(this.mountpoint, this.#ops(), { fsname: FUSE_OPTIONS, timeout: false, mkdir: true })
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())))
    this.#fuse = fuse
    this.#log.info({ mountpoint: this.mountpoint, server: 'fuse-native', maxRequestBytes: LIBFUSE2_MAX_REQUEST_BYTES }, 'FUSE device directory mounted')
    if (this.#requestTimeout > 0) {
      this.#log.info({ requestTimeout: this.#requestTimeout }, 'libfuse 2 cannot ask the kernel to bound how long a FUSE request waits: --fuse-request-timeout needs --fuse-server addon')
    }
  }

  async unmount(_lazy?: boolean): Promise<void> {
    const fuse = this.#fuse
    if (!fuse) return
    this.#fuse = undefined
    await new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())))
    this.#log.info({ mountpoint: this.mountpoint }, 'FUSE device directory unmounted')
  }

  pathOf(name: string): string {
    return `${this.mountpoint}/${name}`
  }

  add(name: string, device: BlockDevice): void {
    this.#devices.set(name, device)
  }

  /** getattr reads the device's size on each call: nothing to tell. */
  resized(name: string): void {
    if (!this.#devices.has(name)) throw pxdError('NOT_FOUND', `no device file ${name} in the FUSE device directory`)
  }

  remove(name: string): void {
    const device = this.#devices.get(name)
    this.#devices.delete(name)
    for (const [fd, d] of this.#handles) if (d === device) this.#handles.delete(fd)
  }

  #ops(): Fuse.Ops {
    const devices = this.#devices
    const handles = this.#handles
    const log = this.#log
    const mtime = new Date(this.#mountedAt)
    const fail = (op: string, err: unknown): number => -errnoOf(log, op, err)
    const stat = (mode: number, size: number): Fuse.Stat => ({ mtime, atime: mtime, ctime: mtime, size, mode, uid: 0, gid: 0, nlink: 1 })

    return {
      getattr: (path, cb) => {
        if (path === '/') return cb(OK, stat(0o40700, 4096))
        const device = devices.get(path.slice(1))
        if (!device) return cb(-E.ENOENT)
        cb(OK, stat(0o100600, device.size))
      },
      readdir: (path, cb) => {
        if (path !== '/') return cb(-E.ENOTDIR)
        cb(OK, [...devices.keys()])
      },
      open: (path, _flags, cb) => {
        const device = devices.get(path.slice(1))
        if (!device) return cb(-E.ENOENT)
        const fd = this.#nextHandle++
        handles.set(fd, device)
        cb(OK, fd)
      },
      release: (_path, fd, cb) => {
        handles.delete(fd)
        cb(OK)
      },
      read: (_path, fd, buf, len, pos, cb) => {
        const device = handles.get(fd)
        if (!device) return cb(-E.EBADF)
        if (pos >= device.size) return cb(0)
        const n = Math.min(len, device.size - pos)
        device.read(pos, n === buf.length ? buf : buf.subarray(0, n)).then(() => cb(n), (err) => cb(fail('read', err)))
      },
      write: (_path, fd, buf, len, pos, cb) => {
        const device = handles.get(fd)
        if (!device) return cb(-E.EBADF)
        if (pos + len > device.size) return cb(-E.ENOSPC)
        device.write(pos, len === buf.length ? buf : buf.subarray(0, len)).then(() => cb(len), (err) => cb(fail('write', err)))
      },
      // Both close() of a handle and fsync reach the replicas' flush: a file system's
      // cache flush (REQ_PREFLUSH) arrives through the loop device as fsync.
      flush: (_path, fd, cb) => {
        const device = handles.get(fd)
        if (!device) return cb(OK)
        device.flush().then(() => cb(OK), (err) => cb(fail('flush', err)))
      },
      fsync: (_path, _datasync, fd, cb) => {
        const device = handles.get(fd)
        if (!device) return cb(-E.EBADF)
        device.flush().then(() => cb(OK), (err) => cb(fail('fsync', err)))
      },
      truncate: (path, size, cb) => {
        const device = devices.get(path.slice(1))
        cb(device && device.size === size ? OK : -E.EPERM)
      },
      ftruncate: (_path, fd, size, cb) => {
        const device = handles.get(fd)
        cb(device && device.size === size ? OK : -E.EPERM)
      },
    }
  }
}
