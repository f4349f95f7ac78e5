/**
 * Background scrub of the volumes attached here: every interval (0: never), one volume
 * after another at a bounded rate. Its signal aborts every scrub, background or asked
 * for, when the daemon stops.
 */
import type { Logger } from 'pino'
import { DEFAULT_SCRUB_BYTES_PER_SECOND } from '../constants'
import type { VolumeEngine } from '../engine/volume-engine'

/** What a background scrub needs of a volume attached here. */
export interface ScrubbableVolume {
  engine: Pick<VolumeEngine, 'scrub'>
  volumeId: string
}

export interface ScrubSchedulerOptions {
  /** 0 or absent: no background scrub. */
  intervalSeconds?: number | undefined
  /** Absent: DEFAULT_SCRUB_BYTES_PER_SECOND. */
  bytesPerSecond?: number | undefined
  /** The volumes attached here, by name (the manager's map, read only). */
  attached: ReadonlyMap<string, ScrubbableVolume>
  log: Logger
}

export class ScrubScheduler {
  readonly #every: number
  readonly #rate: number
  readonly #attached: ReadonlyMap<string, ScrubbableVolume>
  readonly #log: Logger
  readonly #abort = new AbortController()
  #timer: NodeJS.Timeout | undefined

  constructor(o: ScrubSchedulerOptions) {
    this.#every = o.intervalSeconds ?? 0
    this.#rate = o.bytesPerSecond ?? DEFAULT_SCRUB_BYTES_PER_SECOND
    this.#attached = o.attached
    this.#log = o.log
  }

  /** Aborted at stop: every scrub passes it to the engine. */
  get signal(): AbortSignal {
    return this.#abort.signal
  }

  start(): void {
    if (this.#every <= 0) return
    this.#timer = setInterval(() => void this.#scrubAll(), this.#every * 1000)
    this.#timer.unref()
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
    this.#abort.abort()
  }

  async #scrubAll(): Promise<void> {
    for (const [name, local] of [...this.#attached]) {
      try {
        const result = await local.engine.scrub({ bytesPerSecond: this.#rate, signal: this.#abort.signal })
        this.#log.info({ volume: name, volumeId: local.volumeId, ...result }, 'background scrub done')
      } catch (err) {
        this.#log.warn({ err, volume: name, volumeId: local.volumeId }, 'background scrub stopped')
      }
    }
  }
}
