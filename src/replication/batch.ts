import type { Socket } from 'node:net'

function flush(batch: WriteBatch): void {
  batch.corked = false
  batch.socket.uncork()
}

/**
 * Coalesces the frames sent during one tick into one system call: the first send corks the
 * socket and the end of the tick uncorks it. Small requests are bound by syscalls otherwise
 * (one writev per WebSocket message).
 */
export class WriteBatch {
  readonly socket: Socket
  corked = false

  constructor(socket: Socket) {
    this.socket = socket
  }

  /** Call before each send. */
  hold(): void {
    if (this.corked) return
    this.corked = true
    this.socket.cork()
    process.nextTick(flush, this)
  }
}
