/**
 * One request on a peer link from send to ack, and the FIFO of requests waiting for the
 * connection or for room in the link's window. A call ends once: acknowledged, failed with
 * the link, timed out or aborted; its timer and abort listener go with it.
 */
import type { RequestFrame } from './frames'
import { payloadBytes } from './frames'

export const enum CallState { Waiting, Sent, Done }

export type Expire = (call: Call, code: 'PEER_TIMEOUT' | 'ABORTED') => void

export class Call {
  readonly id: number
  readonly bytes: number
  readonly promise: Promise<Buffer | undefined>
  frame: RequestFrame | undefined
  state = CallState.Waiting
  timer: NodeJS.Timeout | undefined = undefined
  signal: AbortSignal | undefined = undefined
  timeoutMs: number
  resolve!: (data: Buffer | undefined) => void
  reject!: (err: Error) => void
  readonly #expire: Expire

  constructor(frame: RequestFrame, timeoutMs: number, expire: Expire) {
    this.id = frame.id
    this.frame = frame
    this.bytes = payloadBytes(frame)
    this.timeoutMs = timeoutMs
    this.#expire = expire
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
  }

  /** AbortSignal listener. */
  handleEvent(): void {
    this.#expire(this, 'ABORTED')
  }
}

export const onCallTimeout = (call: Call, expire: Expire) => expire(call, 'PEER_TIMEOUT')

/** Calls waiting to be sent, in order; the ones that ended while waiting are skipped. */
export class CallQueue {
  #queue: (Call | undefined)[] = []
  #head = 0
  /** Calls still waiting (not ended). */
  waiting = 0

  push(call: Call): void {
    this.#queue.push(call)
    this.waiting++
  }

  /** A waiting call ended (timeout, abort): it is skipped when its turn comes. */
  ended(): void {
    this.waiting--
  }

  /** Hands waiting calls, in order, to `send` while `fits` says there is room. */
  pump(fits: (bytes: number) => boolean, send: (call: Call) => void): void {
    const queue = this.#queue
    while (this.#head < queue.length) {
      const call = queue[this.#head]!
      if (call.state === CallState.Waiting) {
        if (!fits(call.bytes)) return
        this.waiting--
        send(call)
      }
      queue[this.#head++] = undefined
    }
    queue.length = 0
    this.#head = 0
  }

  /** Takes every waiting call out, for the caller to fail. */
  drain(): Call[] {
    const out: Call[] = []
    for (let i = this.#head; i < this.#queue.length; i++) {
      const call = this.#queue[i]
      if (call !== undefined && call.state === CallState.Waiting) out.push(call)
    }
    this.#queue = []
    this.#head = 0
    this.waiting = 0
    return out
  }
}
