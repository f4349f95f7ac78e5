/**
 * One attached volume. The engine numbers every write, sends it to all in-sync replicas
 * at once and resolves only when every one of them has it: a write the file system sees
 * acknowledged is on every in-sync copy. Reads come from the first in-sync replica (the
 * local one when there is one). Flush is a flush on every replica.
 * The data path allocates nothing it can avoid: one replica is called directly, and the
 * write payload is passed down as the caller's buffer, never copied.
 */
import { pxdError } from '../errors'
import type { Replica } from './replica'

export interface EngineOptions {
  volumeId: string
  size: number
  /** In-sync replicas, local first. */
  replicas: Replica[]
}

export class VolumeEngine {
  readonly volumeId: string
  readonly size: number
  readonly #replicas: Replica[]
  #nextSeq = 1
  #inflight = 0
  #drained: (() => void) | undefined
  #closing: Promise<void> | undefined

  constructor(options: EngineOptions) {
    if (options.replicas.length === 0) throw pxdError('UNSATISFIABLE', `volume ${options.volumeId} has no in-sync replica`)
    this.volumeId = options.volumeId
    this.size = options.size
    this.#replicas = options.replicas
  }

  /** Writes numbered so far; replication uses the number to order and deduplicate. */
  get lastSequence(): number {
    return this.#nextSeq - 1
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkRange(offset, data.length)
    this.#nextSeq++
    return this.#track(this.#fanOut((r) => r.write(offset, data)))
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    this.#checkRange(offset, into.length)
    return this.#track(this.#replicas[0]!.read(offset, into))
  }

  flush(): Promise<void> {
    if (this.#closing) return Promise.reject(pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`))
    return this.#track(this.#fanOut((r) => r.flush()))
  }

  /** Waits for in-flight requests, flushes and closes every replica. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#inflight > 0) await new Promise<void>((resolve) => { this.#drained = resolve })
      await Promise.all(this.#replicas.map((r) => r.close()))
    })()
    return this.#closing
  }

  #fanOut(op: (r: Replica) => Promise<void>): Promise<void> {
    if (this.#replicas.length === 1) return op(this.#replicas[0]!)
    return Promise.all(this.#replicas.map(op)).then(() => undefined)
  }

  #checkRange(offset: number, length: number): void {
    if (this.#closing) throw pxdError('ENGINE_CLOSED', `volume ${this.volumeId} is closed`)
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw pxdError('INVALID_ARGUMENT', `I/O at ${offset}+${length} is outside volume ${this.volumeId} of ${this.size} bytes`)
    }
  }

  #track(p: Promise<void>): Promise<void> {
    this.#inflight++
    return p.finally(() => {
      if (--this.#inflight === 0 && this.#drained) this.#drained()
    })
  }
}
