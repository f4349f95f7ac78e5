/**
 * Whether the engine has been fenced: a replica refused it with STALE_EPOCH (another node
 * attached the volume at a newer epoch), or the kvdb refused a demotion with FENCED. From
 * then on one FENCED error is what every request fails with, and the owner is told once.
 */
import { isPxdError, pxdError, type PxdError } from '../errors'

export class Fence {
  readonly #volumeId: string
  readonly #onFenced: ((error: PxdError) => void) | undefined
  #error: PxdError | undefined

  constructor(volumeId: string, onFenced: ((error: PxdError) => void) | undefined) {
    this.#volumeId = volumeId
    this.#onFenced = onFenced
  }

  /** The FENCED error once fenced, else undefined. */
  get error(): PxdError | undefined {
    return this.#error
  }

  /** A STALE_EPOCH or FENCED failure fences the engine and throws its FENCED error; any other is thrown as it is. Bound. */
  readonly fail = (err: unknown): never => {
    if (isPxdError(err, 'STALE_EPOCH') || isPxdError(err, 'FENCED')) {
      if (!this.#error) {
        this.#error = pxdError('FENCED', `volume ${this.#volumeId} was attached elsewhere with a newer epoch; this node can no longer write it`, err)
        this.#onFenced?.(this.#error)
      }
      throw this.#error
    }
    throw err
  }

  /** A demotion the kvdb refused with FENCED fences the engine; any other failure passes through. */
  demotionFailed(err: unknown): never {
    if (isPxdError(err, 'FENCED')) this.fail(err)
    throw err
  }
}
