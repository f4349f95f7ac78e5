import { Writable } from 'node:stream'
import pino, { type Logger } from 'pino'
import { WebSocket, type ClientOptions } from 'ws'
import { computeProof, newNonce, type HandshakeParties } from '../../src/replication/auth'
import { decodeFrame, encodeFrame, PROTOCOL_VERSION, type Frame, type RequestFrame } from '../../src/replication/frames'
import { PeerLinks, type PeerLinksOptions } from '../../src/replication/peer-links'
import { PEER_PATH, PeerServer, type PeerServerOptions, type RequestHandler } from '../../src/replication/peer-server'

export const SECRET = Buffer.alloc(32, 7)
export const OTHER_SECRET = Buffer.alloc(32, 9)
export const CLUSTER = 'cluster-a'

/** A pino logger whose records a test can read. */
export function captureLog(): { log: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) records.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  return { log: pino({ level: 'debug' }, sink), records }
}

export const silentLog = (): Logger => pino({ level: 'silent' })

export function handlerOf(fn: (peer: string, req: RequestFrame) => Promise<Uint8Array | void>): RequestHandler & { calls: number } {
  const h = {
    calls: 0,
    handle(peer: string, req: RequestFrame) {
      h.calls++
      return fn(peer, req)
    },
  }
  return h
}

export async function startServer(handler: RequestHandler, over: Partial<PeerServerOptions> = {}, port = 0) {
  const server = new PeerServer({ nodeId: 'server-1', clusterId: CLUSTER, secret: SECRET, handler, log: silentLog(), ...over })
  const bound = await server.listen('127.0.0.1', port)
  return { server, port: bound.port, address: `127.0.0.1:${bound.port}` }
}

export function makeLinks(over: Partial<PeerLinksOptions> = {}): PeerLinks {
  return new PeerLinks({ nodeId: 'client-1', clusterId: CLUSTER, secret: SECRET, log: silentLog(), ...over })
}

export interface Deferred<T> { promise: Promise<T>; resolve: (v: T) => void; reject: (e: Error) => void }
export function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void
  let reject!: (e: Error) => void
  const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await sleep(5)
  }
}

/** A WebSocket client that speaks frames by hand, for tests of what the server refuses. */
export class RawClient {
  readonly ws: WebSocket
  readonly frames: Frame[] = []
  readonly closed: Promise<{ code: number; reason: string }>
  #waiters: Array<() => void> = []

  /** `tls`: dial wss:// with these options (certificate, key, CA, checkServerIdentity). */
  constructor(address: string, tls?: ClientOptions) {
    this.ws = new WebSocket(`${tls ? 'wss' : 'ws'}://${address}${PEER_PATH}`, { perMessageDeflate: false, ...tls })
    this.ws.on('message', (data: Buffer) => {
      this.frames.push(decodeFrame(data))
      for (const w of this.#waiters.splice(0)) w()
    })
    this.ws.on('error', () => {})
    this.closed = new Promise((resolve) => this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  }

  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve())
      this.ws.once('error', reject)
    })
  }

  send(frame: Frame | Buffer): void {
    this.ws.send(Buffer.isBuffer(frame) ? frame : encodeFrame(frame))
  }

  async next(t: Frame['t'], timeoutMs = 5000): Promise<Frame> {
    const end = Date.now() + timeoutMs
    for (;;) {
      const i = this.frames.findIndex((f) => f.t === t)
      if (i >= 0) return this.frames.splice(i, 1)[0]!
      if (Date.now() > end) throw new Error(`no ${t} frame in time; got ${this.frames.map((f) => f.t).join(',')}`)
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve)
        setTimeout(resolve, 50)
      })
    }
  }

  /** Runs the client side of the handshake; returns the session's parties (for replay tests). */
  async handshake(nodeId = 'raw-client', secret = SECRET, serverNodeId = 'server-1'): Promise<{ parties: HandshakeParties; proof: Buffer }> {
    await this.opened()
    const nonce = newNonce()
    this.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId, clusterId: CLUSTER, nonce })
    const ch = await this.next('challenge')
    if (ch.t !== 'challenge') throw new Error('no challenge')
    const parties: HandshakeParties = { clusterId: CLUSTER, clientNodeId: nodeId, serverNodeId, clientNonce: nonce, serverNonce: ch.nonce }
    const proof = computeProof(secret, 'client', parties)
    this.send({ t: 'auth', proof })
    return { parties, proof }
  }

  close(): void {
    this.ws.terminate()
  }
}
