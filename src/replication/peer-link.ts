/**
 * One link to a peer node (the pool is peer-links.ts), carrying every volume's requests.
 * It connects when a request needs it, runs the handshake (auth.ts, checking that the
 * server is the node expected), numbers requests and hands them to its call window
 * (call-window.ts: flow control, acks, timeouts and aborts). It knows nothing of what a
 * request means, and never retries one: that is the caller's policy.
 *
 * - Timeouts: each request has its own deadline, counted from the call (time spent waiting
 *   for the connection or for room counts too).
 * - Flow control: at most `maxBytesInFlight` payload bytes (write data, read lengths) and
 *   `maxRequestsInFlight` requests await acks per link; a request beyond that waits in a
 *   FIFO until acks free room. A request that timed out or was aborted after being sent
 *   keeps its bytes counted until its ack arrives or the link drops, because the peer may
 *   still hold them. Nothing is ever buffered beyond the window.
 * - Loss: when the link drops, every request sent or waiting on it fails at once with
 *   PEER_UNAVAILABLE. The next request reconnects at once; a failed attempt makes requests
 *   fail fast (PEER_UNAVAILABLE) for `retryAfterMs` before the next attempt.
 * - Liveness: a ping every `pingIntervalMs` measures the round trip; a link that hears
 *   nothing for `deadAfterMs` is dropped.
 * - TLS: with `tls` a link dials `wss://`, presents this node's certificate and accepts only
 *   a server whose certificate the cluster CA signed for the node it meant to reach (tls.ts).
 */
import { performance } from 'node:perf_hooks'
import type { Logger } from 'pino'
import { WebSocket, type RawData } from 'ws'
import { messageOf, type PxdError } from '../errors'
import { WriteBatch } from './batch'
import { ClientHandshake } from './client-handshake'
import { isReplicationError, replicationError, type ReplicationCode } from './errors'
import { Call, onCallTimeout } from './call'
import { CallWindow } from './call-window'
import {
  decodeFrame, encodeFrame, isRequest, sendFrame, validateFrame, MAX_DATA_BYTES,
  type Frame, type OutgoingRequest, type RequestFrame,
} from './frames'
import { dialPeer, type Dial, type LinkConfig } from './dial'

export type { LinkConfig }

const CLOSE_GRACE_MS = 1000
const TCP_KEEPALIVE_MS = 10_000

export type LinkState = 'connecting' | 'ready' | 'down'

export interface RequestOptions {
  timeoutMs?: number
  signal?: AbortSignal
}

const enum Phase { None, Challenge, Ready, Up }

export class PeerLink {
  readonly peerNodeId: string
  #address: string
  readonly #config: LinkConfig
  readonly #log: Logger
  readonly #window: CallWindow
  #state: LinkState = 'down'
  #closed = false
  #ws: WebSocket | undefined
  #batch: WriteBatch | undefined
  #phase = Phase.None
  #handshake: ClientHandshake | undefined
  /** The peer refused the hello with the protocol range: dial it with the older hello until the link next drops. */
  #legacyPeer = false
  #protocol: number | undefined
  #peerVersion: string | undefined
  #connectTimer: NodeJS.Timeout | undefined
  #pingTimer: NodeJS.Timeout | undefined
  #lastHeard = 0
  #retryAt = 0
  #lastError: Error | undefined
  #failedAttempts = 0
  #rttMs: number | undefined
  #nextId = 1

  constructor(peerNodeId: string, address: string, config: LinkConfig, log: Logger) {
    this.peerNodeId = peerNodeId
    this.#address = address
    this.#config = config
    this.#log = log
    this.#window = new CallWindow(config, peerNodeId, {
      transmit: (call) => {
        this.#batch?.hold()
        sendFrame(this.#ws!, call.frame!)
      },
      // A payload is sent from the caller's memory, uncopied, and the caller may reuse that
      // memory once this call fails: while anything is still queued on the socket (it may be
      // this payload), the link goes, queue and all, rather than let other bytes reach the
      // peer under this write.
      abandoned: (call) => {
        if ('data' in call.frame! && this.#ws && this.#ws.bufferedAmount > 0) this.#ws.terminate()
      },
    })
  }

  /** host:port of the peer's server ([v6]:port for IPv6). */
  get address(): string {
    return this.#address
  }

  /** A new address is used from the next connection on; the current one, if up, is kept. */
  set address(address: string) {
    if (address === this.#address) return
    this.#address = address
    this.#retryAt = 0
    this.#failedAttempts = 0
    this.#legacyPeer = false
  }

  get state(): LinkState {
    return this.#state
  }

  /** The peer protocol the two ends settled on for the current or last connection; undefined before one was up. */
  get protocol(): number | undefined {
    return this.#protocol
  }

  /** The peer's software version as its last handshake gave it; undefined before, or from a release that does not send it. */
  get peerVersion(): string | undefined {
    return this.#peerVersion
  }

  /** Round trip of the last ping, in milliseconds; undefined until one is answered on this connection. */
  get rttMs(): number | undefined {
    return this.#rttMs
  }

  /** Payload bytes sent and not yet acknowledged. */
  get bytesInFlight(): number {
    return this.#window.bytesInFlight
  }

  get requestsInFlight(): number {
    return this.#window.requestsInFlight
  }

  /** Requests waiting for the connection or for room in the window. */
  get waiting(): number {
    return this.#window.waiting
  }

  /**
   * Sends one request and resolves with the data of its ack (a Buffer sharing the received
   * message), or undefined. The request's data is not copied before it is encoded.
   */
  request(req: OutgoingRequest, opts?: RequestOptions): Promise<Buffer | undefined> {
    if (this.#closed) return Promise.reject(replicationError('LINK_CLOSED', `the link to node ${this.peerNodeId} is closed`))
    const size = req.t === 'write' ? (req.data as Uint8Array | undefined)?.length : req.t === 'read' ? req.length : 0
    if (typeof size === 'number' && size > MAX_DATA_BYTES) {
      return Promise.reject(replicationError('FRAME_TOO_LARGE', `${req.t} of ${size} bytes exceeds the ${MAX_DATA_BYTES}-byte limit`))
    }
    const frame = { ...req, id: this.#nextId++ } as RequestFrame
    try {
      validateFrame(frame)
      if (!isRequest(frame)) throw replicationError('BAD_FRAME', `${(frame as Frame).t} is not a request`)
    } catch (err) {
      return Promise.reject(err)
    }
    const signal = opts?.signal
    if (signal?.aborted) return Promise.reject(replicationError('ABORTED', `${frame.t} to node ${this.peerNodeId} aborted`, signal.reason))
    if (this.#state === 'down' && performance.now() < this.#retryAt) {
      return Promise.reject(replicationError('PEER_UNAVAILABLE',
        `node ${this.peerNodeId} at ${this.address} is unreachable: ${this.#lastError?.message ?? 'down'}`, this.#lastError))
    }
    const expire = this.#window.expire
    const call = new Call(frame, opts?.timeoutMs ?? this.#config.requestTimeoutMs, expire)
    call.timer = setTimeout(onCallTimeout, call.timeoutMs, call, expire)
    if (signal) {
      call.signal = signal
      signal.addEventListener('abort', call, { once: true })
    }
    if (!this.#window.submit(call, this.#state === 'ready') && this.#state === 'down') this.#connect()
    return call.promise
  }

  /** Drops the connection now: requests on it fail with PEER_UNAVAILABLE; the next request reconnects. */
  disconnect(reason = 'disconnected by this node'): void {
    if (this.#ws) this.#drop(this.#ws, replicationError('PEER_UNAVAILABLE', `link to node ${this.peerNodeId}: ${reason}`), false)
    this.#retryAt = 0
  }

  /** Fails every request with LINK_CLOSED and closes the connection. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true
    const ws = this.#ws
    const err = replicationError('LINK_CLOSED', `the link to node ${this.peerNodeId} is closed`)
    if (ws) this.#drop(ws, err, false)
    else this.#window.failWaiting(err)
    if (ws && ws.readyState !== WebSocket.CLOSED) await new Promise<void>((resolve) => ws.once('close', () => resolve()))
  }

  #connect(): void {
    this.#state = 'connecting'
    this.#phase = Phase.None
    let dial: Dial
    try {
      dial = dialPeer(this.#config, this.peerNodeId, this.address)
    } catch (err) {
      this.#ws = undefined
      this.#afterFailure(replicationError('PEER_UNAVAILABLE', `bad address ${JSON.stringify(this.address)} for node ${this.peerNodeId}: ${messageOf(err)}`, err), false)
      return
    }
    const ws = dial.ws
    this.#ws = ws
    this.#connectTimer = setTimeout(() => {
      this.#drop(ws, replicationError('PEER_UNAVAILABLE', `no link to node ${this.peerNodeId} at ${this.address} within ${this.#config.connectTimeoutMs} ms`), false)
    }, this.#config.connectTimeoutMs)
    ws.on('upgrade', (res) => {
      res.socket.setNoDelay(true)
      res.socket.setKeepAlive(true, TCP_KEEPALIVE_MS)
      if (ws === this.#ws) this.#batch = new WriteBatch(res.socket)
    })
    ws.on('open', () => this.#onOpen(ws))
    ws.on('message', (data, isBinary) => this.#onMessage(ws, data, isBinary))
    ws.on('error', (err) => {
      if (ws === this.#ws) this.#drop(ws, dial.failure(err, this.#phase === Phase.None), false)
    })
    ws.on('close', (code, reason) => {
      if (ws === this.#ws) {
        const why = reason.length > 0 ? `${code} ${reason.toString('utf8')}` : String(code)
        this.#drop(ws, replicationError('PEER_UNAVAILABLE', `link to node ${this.peerNodeId} at ${this.address} closed (${why})`), false)
      }
    })
  }

  #onOpen(ws: WebSocket): void {
    if (ws !== this.#ws) return
    this.#handshake = new ClientHandshake(this.#config, this.peerNodeId, this.#legacyPeer)
    this.#phase = Phase.Challenge
    ws.send(encodeFrame(this.#handshake.hello()))
  }

  #onMessage(ws: WebSocket, data: RawData, isBinary: boolean): void {
    if (ws !== this.#ws) return
    let frame: Frame
    try {
      if (!isBinary || !Buffer.isBuffer(data)) throw replicationError('BAD_FRAME', 'text message on a peer link')
      frame = decodeFrame(data)
    } catch (err) {
      const code = isReplicationError(err) ? err.code : 'BAD_FRAME'
      this.#protocolError(ws, code, messageOf(err))
      return
    }
    this.#lastHeard = performance.now()
    if (this.#phase === Phase.Up) {
      if (frame.t === 'ack') {
        this.#window.ack(frame)
      } else if (frame.t === 'pong') {
        this.#rttMs = performance.now() - frame.sent
      } else if (frame.t === 'error') {
        this.#drop(ws, replicationError('PEER_UNAVAILABLE', `node ${this.peerNodeId} closed the link: ${frame.code}: ${frame.message}`), false)
      } else {
        this.#protocolError(ws, 'BAD_FRAME', `unexpected ${frame.t} frame from a server`)
      }
      return
    }
    this.#onHandshake(ws, frame)
  }

  #onHandshake(ws: WebSocket, frame: Frame): void {
    const handshake = this.#handshake!
    if (frame.t === 'error') {
      // Only a release before protocol negotiation answers our hello so: it refuses the fields it does not know.
      if (frame.code === 'AUTH_REQUIRED' && this.#phase === Phase.Challenge && !handshake.legacy) return this.#redialLegacy(ws, frame.message)
      const code: ReplicationCode = frame.code === 'AUTH_FAILED' || frame.code === 'UNSUPPORTED_VERSION' ? frame.code : 'PEER_UNAVAILABLE'
      this.#drop(ws, replicationError(code, `node ${this.peerNodeId} refused the link: ${frame.code}: ${frame.message}`), false)
      return
    }
    if (this.#phase === Phase.Challenge && frame.t === 'challenge') {
      let auth
      try {
        auth = handshake.answer(frame, this.address)
      } catch (err) {
        const code = isReplicationError(err) ? err.code : 'BAD_FRAME'
        this.#protocolError(ws, code, messageOf(err))
        return
      }
      this.#phase = Phase.Ready
      ws.send(encodeFrame(auth))
      return
    }
    if (this.#phase === Phase.Ready && frame.t === 'ready') {
      this.#onReady(ws)
      return
    }
    this.#protocolError(ws, 'BAD_FRAME', `unexpected ${frame.t} frame during the handshake`)
  }

  /** The same connection attempt once more, at once, with the hello an older release takes; nothing was sent on it yet. */
  #redialLegacy(ws: WebSocket, reason: string): void {
    this.#legacyPeer = true
    this.#ws = undefined
    this.#batch = undefined
    this.#handshake = undefined
    clearTimeout(this.#connectTimer)
    this.#connectTimer = undefined
    ws.terminate()
    this.#log.info({ address: this.address, reason }, 'peer predates protocol negotiation: linking with the older handshake')
    this.#connect()
  }

  #onReady(ws: WebSocket): void {
    clearTimeout(this.#connectTimer)
    this.#connectTimer = undefined
    this.#protocol = this.#handshake!.protocol
    this.#peerVersion = this.#handshake!.peerVersion
    this.#handshake = undefined
    this.#phase = Phase.Up
    this.#state = 'ready'
    this.#failedAttempts = 0
    this.#lastError = undefined
    this.#log.info({
      address: this.address, tls: this.#config.tls !== undefined || (this.#config.psk ? 'psk' : false),
      protocol: this.#protocol, peerVersion: this.#peerVersion ?? 'unknown',
    }, 'peer link up')
    this.#ping(ws)
    this.#pingTimer = setInterval(() => this.#ping(ws), this.#config.pingIntervalMs)
    this.#pingTimer.unref()
    this.#window.pump()
  }

  #ping(ws: WebSocket): void {
    if (ws !== this.#ws) return
    if (performance.now() - this.#lastHeard > this.#config.deadAfterMs) {
      this.#drop(ws, replicationError('PEER_UNAVAILABLE', `node ${this.peerNodeId} silent for ${this.#config.deadAfterMs} ms`), false)
      return
    }
    ws.send(encodeFrame({ t: 'ping', id: this.#nextId++, sent: performance.now() }))
  }

  /** The server broke the protocol or failed the handshake: tell it, then drop the link. */
  #protocolError(ws: WebSocket, code: ReplicationCode, message: string): void {
    const handshaking = this.#phase !== Phase.Up
    const err = handshaking ? replicationError(code, message) : replicationError('PEER_UNAVAILABLE', `${code}: ${message}`)
    this.#drop(ws, err, true)
  }

  /**
   * The end of a connection: every request sent or waiting on it fails with `err`. Only a
   * connection that never became ready makes the next requests fail fast for a while.
   */
  #drop(ws: WebSocket, err: PxdError, notify: boolean): void {
    if (ws !== this.#ws) return
    const wasUp = this.#phase === Phase.Up
    this.#ws = undefined
    this.#batch = undefined
    this.#phase = Phase.None
    this.#handshake = undefined
    this.#rttMs = undefined
    // The peer may come back as another release: the next connection offers the range again.
    if (wasUp) this.#legacyPeer = false
    clearTimeout(this.#connectTimer)
    clearInterval(this.#pingTimer)
    this.#connectTimer = this.#pingTimer = undefined
    if (notify && ws.readyState === WebSocket.OPEN) {
      ws.send(encodeFrame({ t: 'error', code: err.code, message: err.message }))
      ws.close(1008)
      setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref()
    } else if (err.code === 'LINK_CLOSED' && ws.readyState === WebSocket.OPEN) {
      ws.close(1000)
      setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref()
    } else {
      ws.terminate()
    }
    this.#window.failSent(err)
    this.#afterFailure(err, wasUp)
  }

  #afterFailure(err: PxdError, wasUp: boolean): void {
    this.#state = 'down'
    this.#lastError = err
    if (wasUp) {
      this.#retryAt = 0
      this.#failedAttempts = 0
      if (err.code !== 'LINK_CLOSED') this.#log.warn({ code: err.code, reason: err.message }, 'peer link down')
    } else {
      this.#retryAt = performance.now() + this.#config.retryAfterMs
      const loud = this.#failedAttempts++ === 0 || err.code === 'AUTH_FAILED' || err.code === 'PEER_MISMATCH'
      if (err.code !== 'LINK_CLOSED') this.#log[loud ? 'warn' : 'debug']({ code: err.code, reason: err.message, address: this.address }, 'cannot link to peer')
    }
    this.#window.failWaiting(err)
  }
}
