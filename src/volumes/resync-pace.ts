/**
 * This node's budget for resync copies: at most `concurrency` resyncs at once (slots) and,
 * across all of them, at most `bytesPerSecond` copied. Pacing books each copy as a slice of
 * time (`bytes / rate`) after the previous one and waits for its turn; unused time is not
 * saved up, so a resync that starts after a quiet spell does not burst.
 */
import { pxdError } from '../errors'

export const DEFAULT_RESYNC_BYTES_PER_SECOND = 200 * 1024 * 1024
export const DEFAULT_RESYNC_CONCURRENCY = 2

export class ResyncPace {
  readonly bytesPerSecond: number
  readonly concurrency: number
  #taken = 0
  /** When the next copy may start (ms since the epoch). */
  #next = 0

  constructor(bytesPerSecond = DEFAULT_RESYNC_BYTES_PER_SECOND, concurrency = DEFAULT_RESYNC_CONCURRENCY) {
    if (!(bytesPerSecond > 0)) throw pxdError('INVALID_ARGUMENT', 'the resync rate must be more than 0 bytes per second')
    if (!Number.isInteger(concurrency) || concurrency < 1) throw pxdError('INVALID_ARGUMENT', 'the resync concurrency must be a whole number of at least 1')
    this.bytesPerSecond = bytesPerSecond
    this.concurrency = concurrency
  }

  /** Resyncs running now. */
  get running(): number {
    return this.#taken
  }

  /** A free slot (call the result to give it back), or undefined when all are taken. */
  slot(): (() => void) | undefined {
    if (this.#taken >= this.concurrency) return undefined
    this.#taken++
    let given = false
    return () => {
      if (given) return
      given = true
      this.#taken--
    }
  }

  /** Resolves when `bytes` may be copied. */
  take(bytes: number): Promise<void> {
    const now = Date.now()
    const start = Math.max(now, this.#next)
    this.#next = start + (bytes * 1000) / this.bytesPerSecond
    if (start <= now) return Promise.resolve()
    return new Promise((resolve) => setTimeout(resolve, start - now))
  }
}
