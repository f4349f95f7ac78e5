/**
 * The messages between the daemon and its share executor process (executor.ts,
 * executor-main.ts), over a socket pair: a 20-byte header, then the payload.
 *
 *   [length u32][kind u32][id u32][export u32][client u32] payload (length bytes)
 *
 * Requests: OPEN (payload: JSON {root, tag, threads}; reply export id), EXEC (payload: a
 * wire request of native/share_wire.h; reply: its wire reply), DROP, CLOSE, STATS (reply
 * JSON). Replies carry the request's id and kind OK or FAILED (payload JSON {code, message}).
 */
import { pxdError } from '../errors'

export const HEADER_BYTES = 20
/** A file operation with its headers, or a JSON message: nothing larger is sent. */
export const MAX_PAYLOAD_BYTES = (1 << 20) + 64 * 1024

export const enum Kind {
  Open = 1, Exec = 2, Drop = 3, Close = 4, Stats = 5,
  Ok = 101, Failed = 102,
}

export interface Message {
  kind: Kind
  id: number
  exportId: number
  client: number
  payload: Buffer
}

export function header(kind: Kind, id: number, exportId: number, client: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER_BYTES)
  h.writeUInt32LE(length, 0)
  h.writeUInt32LE(kind, 4)
  h.writeUInt32LE(id, 8)
  h.writeUInt32LE(exportId, 12)
  h.writeUInt32LE(client, 16)
  return h
}

/** What a socket needs to send one message: its header and payload, uncopied. */
export interface MessageSink { cork(): void; uncork(): void; write(chunk: Uint8Array): boolean }

export function send(sink: MessageSink, kind: Kind, id: number, exportId: number, client: number, payload?: Uint8Array): void {
  sink.cork()
  sink.write(header(kind, id, exportId, client, payload?.length ?? 0))
  if (payload && payload.length > 0) sink.write(payload)
  sink.uncork()
}

/**
 * Cuts a byte stream into messages. A payload that arrived in one chunk is a view of it;
 * one spread over chunks is joined once.
 */
export class MessageReader {
  #chunks: Buffer[] = []
  #buffered = 0
  /** Bytes of the message being read (header included), once its header is in. */
  #need = 0
  readonly #onMessage: (m: Message) => void

  constructor(onMessage: (m: Message) => void) {
    this.#onMessage = onMessage
  }

  push(chunk: Buffer): void {
    this.#chunks.push(chunk)
    this.#buffered += chunk.length
    for (;;) {
      if (this.#need === 0) {
        if (this.#buffered < HEADER_BYTES) return
        const length = this.#peek(HEADER_BYTES).readUInt32LE(0)
        if (length > MAX_PAYLOAD_BYTES) throw pxdError('INTERNAL', `share executor message of ${length} bytes`)
        this.#need = HEADER_BYTES + length
      }
      if (this.#buffered < this.#need) return
      const whole = this.#take(this.#need)
      this.#need = 0
      this.#onMessage({
        kind: whole.readUInt32LE(4) as Kind,
        id: whole.readUInt32LE(8),
        exportId: whole.readUInt32LE(12),
        client: whole.readUInt32LE(16),
        payload: whole.subarray(HEADER_BYTES),
      })
    }
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0]!
    if (first.length >= n) return first
    const parts: Buffer[] = []
    let have = 0
    for (const c of this.#chunks) {
      parts.push(c)
      have += c.length
      if (have >= n) break
    }
    return Buffer.concat(parts, n)
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0]!
    let out: Buffer
    if (first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.#chunks.shift()
      else this.#chunks[0] = first.subarray(n)
    } else {
      const parts: Buffer[] = []
      let have = 0
      for (const c of this.#chunks) {
        if (have >= n) break
        parts.push(c)
        have += c.length
      }
      out = Buffer.concat(parts, n)
      let left = n
      while (left > 0) {
        const c = this.#chunks[0]!
        if (c.length <= left) {
          left -= c.length
          this.#chunks.shift()
        } else {
          this.#chunks[0] = c.subarray(left)
          left = 0
        }
      }
    }
    this.#buffered -= n
    return out
  }
}
