/**
 * The device directory served by the addon's own FUSE server (`--fuse-server addon`,
 * native/fuse_server.h). Its thread answers lookups, attributes, directory listings and
 * opens by itself; reads, writes, flushes and discards come here with the number of the slot
 * that holds them, and are answered with fuseReply once the volume's BlockDevice settles. A
 * device without `discard` (nodiscard=true) answers discards with EOPNOTSUPP.
 *
 * A live restart (src/restart/) hands the mount's session from one process to the next:
 * the successor adopts it (`adopt`), binds each file it takes over to its volume (`bind`),
 * and only then serves (`serve`); the predecessor stops reading, waits for what it read to
 * be answered (`drain`) and gives the descriptor away (`export`), never unmounting.
 *
 * The kernel is asked at INIT to bound how long a request may wait for its answer
 * (`requestTimeout`, seconds; FUSE_REQUEST_TIMEOUT, Linux 6.14): once one waited that long,
 * it aborts the connection and I/O to every volume here fails instead of hanging, as when
 * pxd died and no successor came. The bound belongs to the connection: a successor keeps
 * the one its first server set (the session table carries it).
 *
 * A slot's data area is a view made once at mount: a WRITE's payload already sits there
 * (page-aligned), and READ data is put there, so the bytes pass between the kernel, the
 * block store and the peer socket without a copy in this process.
 */
import { promises as fs } from 'node:fs'
import { constants } from 'node:os'
import type { Logger } from 'pino'
import { FuseKind, native, type AdoptedFuseSession, type FuseHandle, type FuseSessionTable } from '../native/binding'
import { pxdError } from '../errors'
import { errnoOf, notSupported, type BlockDevice, type DeviceDirectory } from './device-directory'

/**
 * Largest request the kernel may send the addon's server. 1 MiB halves the per-request
 * work of 512 KiB for sequential I/O; the kernel still splits a loop device's 1 MiB
 * request along its bio boundaries and sends the parts in parallel.
 */
export const ADDON_MAX_REQUEST_BYTES = 1024 * 1024
/** Requests in flight at once (one slot of ADDON_MAX_REQUEST_BYTES + 4 KiB each). */
const SLOTS = 32

export class AddonFuseDevices implements DeviceDirectory {
  readonly mountpoint: string
  readonly #log: Logger
  readonly #maxRequestBytes: number
  readonly #requestTimeout: number
  /** The bound the kernel enforces on this connection (s; 0: none), once known. */
  #boundInForce: number | undefined
  readonly #byKey = new Map<number, BlockDevice>()
  readonly #keyOf = new Map<string, number>()
  #nextKey = 1
  #handle: FuseHandle | undefined
  /** Slot i's whole data area. */
  #views: Uint8Array[] = []

  /** `requestTimeout`: seconds asked of the kernel at mount (0: no bound), at most 65535. */
  constructor(mountpoint: string, log: Logger, maxRequestBytes = ADDON_MAX_REQUEST_BYTES, requestTimeout = 0) {
    this.mountpoint = mountpoint
    this.#log = log
    this.#maxRequestBytes = maxRequestBytes
    this.#requestTimeout = requestTimeout
  }

  async mount(): Promise<void> {
    await fs.mkdir(this.mountpoint, { recursive: true, mode: 0o700 })
    let handle: FuseHandle
    try {
      handle = native.fuseMount(this.mountpoint, this.#maxRequestBytes, SLOTS, this.#onRequest, this.#requestTimeout)
    } catch (err) {
      throw pxdError('PRECONDITION', `cannot mount the FUSE device directory at ${this.mountpoint}: ${(err as Error).message}`, err)
    }
    this.#use(handle)
    this.#log.info({ mountpoint: this.mountpoint, server: 'addon', maxRequestBytes: this.#maxRequestBytes }, 'FUSE device directory mounted')
  }

  /** Take over the session a predecessor mounted here; nothing is served before `serve`. */
  adopt(session: AdoptedFuseSession & { maxRequestBytes: number; requestTimeout?: number }): void {
    let handle: FuseHandle
    try {
      handle = native.fuseAdopt(this.mountpoint, session.maxRequestBytes, SLOTS, this.#onRequest, session)
    } catch (err) {
      throw pxdError('HANDOFF_FAILED', `cannot adopt the FUSE session of ${this.mountpoint}: ${(err as Error).message}`, err)
    }
    this.#use(handle)
    this.#boundInForce = session.requestTimeout
    this.#log.info({ mountpoint: this.mountpoint, files: session.files.length, requestTimeout: session.requestTimeout }, 'FUSE device directory taken over from the previous pxd')
    if (session.requestTimeout !== undefined && session.requestTimeout !== this.#requestTimeout) {
      this.#log.info({ inForce: session.requestTimeout, asked: this.#requestTimeout }, 'the FUSE connection keeps the request timeout set when it was mounted; --fuse-request-timeout applies from the next mount (a stop and start)')
    }
  }

  #use(handle: FuseHandle): void {
    const layout = native.fuseLayout(handle)
    this.#views = Array.from({ length: layout.slots }, (_, i) => new Uint8Array(layout.memory, i * layout.slotBytes + layout.dataOffset, layout.maxRequestBytes))
    this.#handle = handle
  }

  /** An adopted file is served by `device` from now on. */
  bind(name: string, device: BlockDevice): void {
    const handle = this.#requireHandle()
    const key = this.#nextKey++
    if (!native.fuseBindFile(handle, name, key)) throw pxdError('HANDOFF_FAILED', `the adopted FUSE session has no device file ${name}`)
    this.#byKey.set(key, device)
    this.#keyOf.set(name, key)
  }

  /** Start serving an adopted session (unbound files are dropped); `resend`: ask the kernel again for what a dead predecessor read. */
  serve(resend: boolean): boolean {
    return native.fuseServe(this.#requireHandle(), resend)
  }

  get mounted(): boolean {
    return this.#handle !== undefined
  }

  /** What a successor needs to adopt this session. */
  table(): FuseSessionTable {
    const table = native.fuseSession(this.#requireHandle())
    return this.#boundInForce === undefined ? table : { ...table, requestTimeout: this.#boundInForce }
  }

  /** Stop reading requests and wait until every one read was answered (the kernel queues the rest). */
  async drain(timeoutMs: number): Promise<void> {
    const handle = this.#requireHandle()
    let left = native.fuseStopReading(handle)
    const deadline = Date.now() + timeoutMs
    while (left > 0) {
      if (Date.now() > deadline) throw pxdError('HANDOFF_FAILED', `${left} FUSE requests were still unanswered after ${timeoutMs} ms`)
      await new Promise((resolve) => setTimeout(resolve, 2))
      left = native.fuseInFlight(handle)
    }
  }

  /** Give the session's descriptor away (the caller owns it); nothing is unmounted. */
  export(): number {
    const fd = native.fuseExport(this.#requireHandle())
    this.#handle = undefined
    this.#views = []
    this.#byKey.clear()
    this.#keyOf.clear()
    return fd
  }

  #requireHandle(): FuseHandle {
    if (!this.#handle) throw pxdError('PRECONDITION', 'the FUSE device directory is not mounted')
    return this.#handle
  }

  async unmount(lazy = false): Promise<void> {
    const handle = this.#handle
    if (!handle) return
    try {
      native.fuseUnmount(handle, lazy)
    } catch (err) {
      throw pxdError('IN_USE', `cannot unmount the FUSE device directory ${this.mountpoint}: ${(err as Error).message}`, err)
    }
    this.#handle = undefined
    this.#views = []
    this.#log.info({ mountpoint: this.mountpoint }, 'FUSE device directory unmounted')
  }

  pathOf(name: string): string {
    return `${this.mountpoint}/${name}`
  }

  add(name: string, device: BlockDevice): void {
    if (!this.#handle) throw pxdError('PRECONDITION', 'the FUSE device directory is not mounted')
    const key = this.#nextKey++
    this.#byKey.set(key, device)
    this.#keyOf.set(name, key)
    native.fuseAddFile(this.#handle, name, device.size, key)
  }

  resized(name: string): void {
    const key = this.#keyOf.get(name)
    const device = key === undefined ? undefined : this.#byKey.get(key)
    if (!this.#handle || !device) throw pxdError('NOT_FOUND', `no device file ${name} in the FUSE device directory`)
    native.fuseSetFileSize(this.#handle, name, device.size)
  }

  remove(name: string): void {
    const key = this.#keyOf.get(name)
    if (key === undefined) return
    if (this.#handle) native.fuseRemoveFile(this.#handle, name)
    this.#keyOf.delete(name)
    this.#byKey.delete(key)
  }

  /** The kernel answered INIT: `granted` is the bound it enforces (s), 0 when it offers none. */
  #initialized(granted: number): void {
    this.#boundInForce = granted
    if (granted > 0) {
      this.#log.info({ requestTimeout: granted }, `a FUSE request unanswered for ${granted} s makes the kernel abort the connection: I/O to the volumes fails then instead of waiting for a pxd`)
    } else if (this.#requestTimeout > 0) {
      this.#log.info({ requestTimeout: this.#requestTimeout }, 'this kernel cannot bound how long a FUSE request waits (FUSE_REQUEST_TIMEOUT, Linux 6.14): while no pxd serves them, I/O to the volumes waits until one does')
    }
  }

  // An arrow function: the addon calls it with no receiver.
  readonly #onRequest = (kind: FuseKind, slot: number, key: number, offset: number, length: number): void => {
    const handle = this.#handle
    if (kind === FuseKind.Stopped) {
      this.#log.error({ mountpoint: this.mountpoint, errno: length }, 'the FUSE device directory stopped serving (unmounted from outside?)')
      return
    }
    if (kind === FuseKind.Init) return this.#initialized(length)
    if (!handle) return
    const device = this.#byKey.get(key)
    if (!device) return native.fuseReply(handle, slot, -constants.errno.EIO)
    const fail = (err: unknown): void => {
      if (this.#handle === handle) native.fuseReply(handle, slot, -errnoOf(this.#log, OP_NAMES[kind], err))
    }
    const done = (): void => {
      if (this.#handle === handle) native.fuseReply(handle, slot, length)
    }
    let settled: Promise<void>
    try {
      if (kind === FuseKind.Flush) settled = device.flush()
      else if (kind === FuseKind.Discard) settled = device.discard ? device.discard(offset, length) : Promise.reject(notSupported())
      else {
        const view = this.#views[slot]!
        const data = length === view.length ? view : view.subarray(0, length)
        settled = kind === FuseKind.Read ? device.read(offset, data) : device.write(offset, data)
      }
    } catch (err) {
      return fail(err)
    }
    settled.then(done, fail)
  }
}

const OP_NAMES = ['stopped', 'read', 'write', 'flush', 'discard', 'init'] as const
