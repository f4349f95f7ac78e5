/**
 * Per-volume I/O metrics without touching the data-path modules: the block device a
 * volume's engine offers to FUSE is wrapped in a MeteredDevice, which times each request
 * and counts it in the volume's VolumeIo and in the FUSE in-flight gauge. meteredDevices
 * is the Frontend's device wrapper that does so for every attached volume, so the daemon
 * only has to hand it to the Frontend it constructs.
 *
 * Cost per request: two clock reads, one promise reaction (one closure) and a few additions.
 */
import { performance } from 'node:perf_hooks'
import type { BlockDevice } from '../frontend/device-directory'
import type { DeviceWrapper } from '../frontend/frontend'
import type { IoOp, Metrics, VolumeIo } from './metrics'

const NO_DATA = new Uint8Array(0)

export class MeteredDevice implements BlockDevice {
  readonly #inner: BlockDevice
  readonly #io: VolumeIo
  readonly #metrics: Metrics

  /** Counted as a request in flight, like the others; present only where the inner device has it. */
  readonly discard?: (offset: number, length: number) => Promise<void>

  constructor(inner: BlockDevice, io: VolumeIo, metrics: Metrics) {
    this.#inner = inner
    this.#io = io
    this.#metrics = metrics
    if (inner.discard) {
      const discard = inner.discard.bind(inner)
      this.discard = (offset, length) => {
        metrics.fuseRequestStarted()
        let p: Promise<void>
        try {
          p = discard(offset, length)
        } catch (err) {
          p = Promise.reject(err)
        }
        return p.finally(() => { metrics.fuseRequestEnded() })
      }
    }
  }

  get size(): number {
    return this.#inner.size
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#timed('read', offset, into, this.#readFailed)
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#timed('write', offset, data, this.#writeFailed)
  }

  flush(): Promise<void> {
    return this.#timed('flush', 0, NO_DATA, this.#flushFailed)
  }

  // Made once per device, so a request allocates only its success reaction.
  readonly #readFailed = (err: unknown): never => this.#failed('read', err)
  readonly #writeFailed = (err: unknown): never => this.#failed('write', err)
  readonly #flushFailed = (err: unknown): never => this.#failed('flush', err)

  #timed(op: IoOp, offset: number, buf: Uint8Array, onFailure: (err: unknown) => never): Promise<void> {
    this.#metrics.fuseRequestStarted()
    const start = performance.now()
    let p: Promise<void>
    try {
      p = op === 'read' ? this.#inner.read(offset, buf) : op === 'write' ? this.#inner.write(offset, buf) : this.#inner.flush()
    } catch (err) {
      p = Promise.reject(err)
    }
    return p.then(() => this.#done(op, buf.length, start), onFailure)
  }

  #done(op: IoOp, bytes: number, start: number): void {
    this.#metrics.fuseRequestEnded()
    const elapsed = seconds(start)
    if (op === 'read') this.#io.read(bytes, elapsed)
    else if (op === 'write') this.#io.write(bytes, elapsed)
    else this.#io.flush(elapsed)
  }

  #failed(op: IoOp, err: unknown): never {
    this.#metrics.fuseRequestEnded()
    this.#io.failed(op)
    throw err
  }
}

/** The Frontend's device wrapper: every attached volume's device metered, and counted as a user of its VolumeIo. */
export function meteredDevices(metrics: Metrics): DeviceWrapper {
  return (name, device) => {
    const io = metrics.volume(name)
    io.users++
    return { device: new MeteredDevice(device, io, metrics), release: () => { io.users-- } }
  }
}

function seconds(start: number): number {
  return (performance.now() - start) / 1000
}
