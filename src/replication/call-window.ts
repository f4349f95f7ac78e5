/**
 * The requests of one peer link (peer-link.ts) between the call and the ack: the window
 * that admits them, the FIFO that holds the rest (call.ts), acks matched to them by id,
 * timeouts and aborts, and failing them when the link drops. It knows nothing of the
 * connection: the link hands it a sink that puts a frame on the wire.
 *
 * - At most `maxRequests` requests and `maxBytes` payload bytes await acks; one request
 *   larger than the byte window is let through alone.
 * - A request that timed out or was aborted after being sent keeps its bytes counted until
 *   its ack arrives or the link drops, because the peer may still hold them.
 */
import type { LinkConfig } from './dial'
import { refusalError, replicationError } from './errors'
import type { AckFrame } from './frames'
import { Call, CallQueue, CallState, type Expire } from './call'

export interface CallSink {
  /** Puts a call's frame on the current connection. */
  transmit(call: Call): void
  /** A call that was sent ended (timeout, abort) before its ack: the link may have to drop the connection. */
  abandoned(call: Call): void
}

export class CallWindow {
  readonly #limits: Pick<LinkConfig, 'maxBytes' | 'maxRequests'>
  readonly #peerNodeId: string
  readonly #sink: CallSink
  readonly #pending = new Map<number, Call>()
  #bytesInFlight = 0
  #requestsInFlight = 0
  readonly #queue = new CallQueue()
  /** Given to each call for its timer and abort listener. */
  readonly expire: Expire = (call, code) => this.#expireCall(call, code)
  readonly #fitsFn = (bytes: number) => this.#fits(bytes)
  readonly #sendFn = (call: Call) => this.#send(call)

  constructor(limits: Pick<LinkConfig, 'maxBytes' | 'maxRequests'>, peerNodeId: string, sink: CallSink) {
    this.#limits = limits
    this.#peerNodeId = peerNodeId
    this.#sink = sink
  }

  get bytesInFlight(): number {
    return this.#bytesInFlight
  }

  get requestsInFlight(): number {
    return this.#requestsInFlight
  }

  /** Requests waiting for the connection or for room in the window. */
  get waiting(): number {
    return this.#queue.waiting
  }

  /** Sends the call now if the link is `ready`, nothing waits before it and it fits; otherwise queues it. True if sent. */
  submit(call: Call, ready: boolean): boolean {
    if (ready && this.#queue.waiting === 0 && this.#fits(call.bytes)) {
      this.#send(call)
      return true
    }
    this.#queue.push(call)
    return false
  }

  /** Sends waiting requests, in order, while the window has room. */
  pump(): void {
    this.#queue.pump(this.#fitsFn, this.#sendFn)
  }

  /** An ack from the peer: ends its call, if that is still waiting for it, and frees its room. */
  ack(frame: AckFrame): void {
    const call = this.#pending.get(frame.id)
    if (call === undefined) return
    this.#pending.delete(frame.id)
    this.#bytesInFlight -= call.bytes
    this.#requestsInFlight--
    if (call.state === CallState.Sent) {
      this.#finish(call)
      if (frame.ok) call.resolve(frame.data as Buffer | undefined)
      else call.reject(refusalError(this.#peerNodeId, frame))
    }
    if (this.#queue.waiting > 0) this.pump()
  }

  /** The connection went: every call sent on it fails with `err`, and the window is empty again. */
  failSent(err: Error): void {
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    this.#bytesInFlight = 0
    this.#requestsInFlight = 0
    for (const call of pending) {
      if (call.state !== CallState.Sent) continue
      this.#finish(call)
      call.reject(err)
    }
  }

  /** Every call still waiting fails with `err`. */
  failWaiting(err: Error): void {
    for (const call of this.#queue.drain()) {
      this.#finish(call)
      call.reject(err)
    }
  }

  #fits(bytes: number): boolean {
    return this.#requestsInFlight < this.#limits.maxRequests &&
      (this.#bytesInFlight + bytes <= this.#limits.maxBytes || this.#bytesInFlight === 0)
  }

  #send(call: Call): void {
    this.#pending.set(call.id, call)
    this.#bytesInFlight += call.bytes
    this.#requestsInFlight++
    call.state = CallState.Sent
    this.#sink.transmit(call)
  }

  #expireCall(call: Call, code: 'PEER_TIMEOUT' | 'ABORTED'): void {
    if (call.state === CallState.Done) return
    if (call.state === CallState.Waiting) this.#queue.ended()
    if (call.state === CallState.Sent) this.#sink.abandoned(call)
    call.state = CallState.Done
    clearTimeout(call.timer)
    call.signal?.removeEventListener('abort', call)
    const what = `${call.frame!.t} #${call.id} to node ${this.#peerNodeId}`
    call.frame = undefined
    call.reject(code === 'ABORTED'
      ? replicationError('ABORTED', `${what} aborted`, call.signal?.reason)
      : replicationError('PEER_TIMEOUT', `${what} not acknowledged within ${call.timeoutMs} ms`))
  }

  #finish(call: Call): void {
    call.state = CallState.Done
    clearTimeout(call.timer)
    if (call.signal) call.signal.removeEventListener('abort', call)
    call.frame = undefined
  }
}
