/**
 * One accepted peer link: the handshake (auth.ts), then every request frame to the handler
 * in arrival order and its ack back, within the link's limits (handler calls and payload
 * bytes at once: over them the link stops reading its socket). A link that breaks the
 * protocol gets an error frame and is closed; a received write's memory is released once
 * its handler settles (with the server's releaseBuffer hook).
 */
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { WebSocket, type RawData } from 'ws'
import { blockOf, codeOf, messageOf, pxdError } from '../errors'
import { WriteBatch } from './batch'
import { computeProof, newNonce, verifyProof, type HandshakeParties } from './auth'
import { isReplicationError, type ReplicationCode } from './errors'
import {
  decodeFrame, isRequest, sendFrame, payloadBytes, CODE_RE, MAX_FSOP_BYTES, MAX_HANDSHAKE_FRAME_BYTES,
  MAX_MESSAGE_CHARS, PROTOCOL_VERSION, type AckErrorFrame, type AckFrame, type ChallengeFrame, type Frame, type RequestFrame,
} from './frames'
import { incompatibility, negotiate, offerFields, offerOf, termsOf, type PeerOffer } from './protocol'

/** How long a closing link may take to finish the WebSocket close handshake. */
const CLOSE_GRACE_MS = 1000
const TCP_KEEPALIVE_MS = 10_000

/**
 * Serves the requests of an authenticated peer. Resolve: ack ok (with the bytes); reject:
 * ack with the error's code, and the block it names (its `block`, else its cause's). A
 * write's `data` is valid until the returned promise settles: with `releaseBuffer` its
 * memory is released then, and later reads of it see an empty view.
 */
export interface RequestHandler {
  /** `protocol`: the peer protocol the link settled on (protocol.ts). */
  handle(peerNodeId: string, req: RequestFrame, protocol: number): Promise<Uint8Array | void>
}

export interface Limits { maxCalls: number; maxBytes: number; handshakeTimeoutMs: number; maxHandshakes: number }

/** What a link needs of its server: who it is, what it offers, and its rate-limited refusal log. */
export interface ServerIdentity {
  readonly nodeId: string
  readonly clusterId: string
  readonly offer: PeerOffer
  /** Logs a refused connection, rate-limited per reason and source address. */
  refuse(reason: string, detail: Record<string, unknown>): void
}

const enum Phase { Hello, Auth, Ready, Closed }

export class ServerLink {
  readonly closed: Promise<void>
  /** Settles when the handshake completes; never, if the link closes before. */
  readonly ready: Promise<void>
  readonly #ws: WebSocket
  readonly #socket: Socket
  readonly #batch: WriteBatch
  readonly #server: ServerIdentity
  readonly #secret: Uint8Array
  readonly #handler: RequestHandler
  readonly #limits: Limits
  readonly #certNode: string | undefined
  readonly #releaseBuffer: ((buf: ArrayBuffer) => void) | undefined
  #log: Logger
  #phase = Phase.Hello
  #peer = ''
  #protocol: number | undefined
  #peerVersion: string | undefined
  #parties: HandshakeParties | undefined
  #handshakeTimer: NodeJS.Timeout | undefined
  #closeTimer: NodeJS.Timeout | undefined
  #calls = 0
  #bytes = 0
  #paused = false
  #queue: RequestFrame[] = []
  #queueHead = 0
  /** Writes whose message buffer is theirs alone, to release when they are done. */
  readonly #owned = new Map<RequestFrame, ArrayBuffer>()
  #socketClosed = false
  #idle: (() => void) | undefined
  #onClosed!: () => void
  #onReady!: () => void
  readonly #onDrain = () => this.#pump()

  constructor(ws: WebSocket, socket: Socket, server: ServerIdentity, secret: Uint8Array,
    handler: RequestHandler, log: Logger, limits: Limits, certNode: string | undefined,
    releaseBuffer: ((buf: ArrayBuffer) => void) | undefined) {
    this.#ws = ws
    this.#certNode = certNode
    this.#releaseBuffer = releaseBuffer
    this.#socket = socket
    this.#batch = new WriteBatch(socket)
    this.#server = server
    this.#secret = secret
    this.#handler = handler
    this.#log = log
    this.#limits = limits
    this.closed = new Promise((resolve) => { this.#onClosed = resolve })
    this.ready = new Promise((resolve) => { this.#onReady = resolve })
    socket.setNoDelay(true)
    socket.setKeepAlive(true, TCP_KEEPALIVE_MS)
    socket.on('drain', this.#onDrain)
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary))
    ws.on('error', (err) => this.#onWsError(err))
    ws.on('close', () => this.#onSocketClose())
    this.#handshakeTimer = setTimeout(() => {
      this.#fail('HANDSHAKE_TIMEOUT', `handshake not completed within ${limits.handshakeTimeoutMs} ms`)
    }, limits.handshakeTimeoutMs)
    log.debug('peer connection accepted')
  }

  /** The peer protocol settled on in the handshake; undefined before. */
  get protocol(): number | undefined {
    return this.#protocol
  }

  /** The peer's software version, once its hello arrived; undefined from a release that does not send it. */
  get peerVersion(): string | undefined {
    return this.#peerVersion
  }

  get handshaking(): boolean {
    return this.#phase === Phase.Hello || this.#phase === Phase.Auth
  }

  /** Server shutdown: tell the peer, close, then wait for handler calls already running. */
  async shutdown(): Promise<void> {
    if (this.#phase !== Phase.Closed) this.#fail('SHUTTING_DOWN', `node ${this.#server.nodeId} is shutting down`, 'info')
    await this.closed
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    if (this.#phase === Phase.Closed) return
    if (!isBinary || !Buffer.isBuffer(data)) {
      this.#fail('BAD_FRAME', 'text message on a peer link')
      return
    }
    if (this.#phase !== Phase.Ready && data.length > MAX_HANDSHAKE_FRAME_BYTES) {
      this.#fail('AUTH_REQUIRED', `a ${data.length}-byte frame before the handshake completed`)
      return
    }
    let frame: Frame
    try {
      frame = decodeFrame(data)
    } catch (err) {
      const code = isReplicationError(err) ? err.code : 'BAD_FRAME'
      this.#fail(this.#phase === Phase.Ready ? code : code === 'UNSUPPORTED_VERSION' ? code : 'AUTH_REQUIRED', messageOf(err))
      return
    }
    // A write that arrived as its own buffer (ws joined its fragments into one) owns it:
    // it is released as soon as the write is done (see #run).
    if (this.#releaseBuffer && frame.t === 'write' && data.byteOffset === 0 && data.length === data.buffer.byteLength && data.buffer instanceof ArrayBuffer) {
      this.#owned.set(frame, data.buffer)
    }
    switch (this.#phase) {
      case Phase.Ready: return this.#onReadyFrame(frame)
      case Phase.Hello: return this.#onHello(frame)
      case Phase.Auth: return this.#onAuth(frame)
    }
  }

  #onHello(frame: Frame): void {
    if (frame.t !== 'hello') return this.#fail('AUTH_REQUIRED', `${frame.t} frame before the handshake`)
    if (frame.clusterId !== this.#server.clusterId) {
      return this.#fail('AUTH_FAILED', `node ${frame.nodeId} belongs to cluster ${frame.clusterId}, not ${this.#server.clusterId}`)
    }
    if (this.#certNode !== undefined && frame.nodeId !== this.#certNode) {
      const named = this.#certNode === '' ? 'a certificate that names no node (no subject CN)' : `the TLS certificate of node ${this.#certNode}`
      return this.#fail('AUTH_FAILED', `node ${frame.nodeId} presented ${named}`)
    }
    let offer: PeerOffer
    try {
      offer = offerOf(frame)
    } catch (err) {
      return this.#fail('AUTH_REQUIRED', messageOf(err))
    }
    const own = this.#server.offer
    const proto = negotiate(own.protocols, offer.protocols)
    if (proto === undefined) {
      const message = incompatibility({ nodeId: this.#server.nodeId, offer: own }, { nodeId: frame.nodeId, offer })
      this.#server.refuse(`no peer protocol in common with ${offer.protocols.min}-${offer.protocols.max}`, { code: 'UNSUPPORTED_VERSION', peer: frame.nodeId, message })
      return this.#fail('UNSUPPORTED_VERSION', message, 'silent')
    }
    const parties: HandshakeParties = {
      clusterId: frame.clusterId,
      clientNodeId: frame.nodeId,
      serverNodeId: this.#server.nodeId,
      clientNonce: frame.nonce,
      serverNonce: newNonce(),
    }
    // A client of a release before the offer fields rejects a challenge that has them.
    if (!offer.legacy) parties.terms = termsOf(offer, own, proto)
    this.#parties = parties
    this.#peer = frame.nodeId
    this.#protocol = proto
    this.#peerVersion = offer.version
    this.#phase = Phase.Auth
    const challenge: ChallengeFrame = {
      t: 'challenge', v: PROTOCOL_VERSION, nodeId: this.#server.nodeId, nonce: parties.serverNonce,
      proof: computeProof(this.#secret, 'server', parties),
    }
    this.#send(offer.legacy ? challenge : { ...challenge, ...offerFields(own), proto })
  }

  #onAuth(frame: Frame): void {
    if (frame.t !== 'auth') return this.#fail('AUTH_REQUIRED', `${frame.t} frame before the handshake completed`)
    if (!verifyProof(this.#secret, 'client', this.#parties!, frame.proof)) {
      return this.#fail('AUTH_FAILED', `node ${this.#peer} did not prove it holds the cluster secret`)
    }
    clearTimeout(this.#handshakeTimer)
    this.#handshakeTimer = undefined
    this.#parties = undefined
    this.#phase = Phase.Ready
    this.#log = this.#log.child({ peer: this.#peer })
    this.#send({ t: 'ready' })
    this.#onReady()
    this.#log.info({ protocol: this.#protocol, peerVersion: this.#peerVersion ?? 'unknown' }, 'peer link up')
  }

  #onReadyFrame(frame: Frame): void {
    if (isRequest(frame)) {
      if (this.#queueHead === this.#queue.length && this.#hasRoom()) void this.#run(frame)
      else this.#queue.push(frame)
      if (!this.#paused && !this.#hasRoom()) this.#pause()
      return
    }
    if (frame.t === 'ping') {
      this.#send({ t: 'pong', id: frame.id, sent: frame.sent })
      return
    }
    if (frame.t === 'error') {
      this.#log.warn({ code: frame.code, reason: frame.message }, 'peer closed the link with an error')
      this.#close(1000)
      return
    }
    this.#fail('BAD_FRAME', `unexpected ${frame.t} frame from a client`)
  }

  #hasRoom(): boolean {
    return this.#calls < this.#limits.maxCalls && this.#bytes < this.#limits.maxBytes &&
      this.#ws.bufferedAmount < this.#limits.maxBytes
  }

  #pause(): void {
    this.#paused = true
    this.#ws.pause()
  }

  /** Starts queued requests while there is room; reads the socket again once the queue is empty. */
  #pump(): void {
    if (this.#phase !== Phase.Ready) return
    while (this.#queueHead < this.#queue.length && this.#hasRoom()) {
      const req = this.#queue[this.#queueHead]!
      this.#queue[this.#queueHead++] = undefined as unknown as RequestFrame
      void this.#run(req)
    }
    if (this.#queueHead === this.#queue.length) {
      this.#queue.length = 0
      this.#queueHead = 0
      if (this.#paused && this.#hasRoom()) {
        this.#paused = false
        this.#ws.resume()
      }
    }
  }

  async #run(req: RequestFrame): Promise<void> {
    const bytes = payloadBytes(req)
    this.#calls++
    this.#bytes += bytes
    let ack: AckFrame
    try {
      const data = await this.#handler.handle(this.#peer, req, this.#protocol ?? 1)
      if (data === undefined) ack = { t: 'ack', id: req.id, ok: true }
      else if (!(data instanceof Uint8Array)) throw pxdError('INTERNAL', 'request handler resolved with something other than bytes')
      else if (data.length > MAX_FSOP_BYTES) ack = this.#errorAck(req, 'FRAME_TOO_LARGE', `reply of ${data.length} bytes exceeds ${MAX_FSOP_BYTES}`)
      else ack = { t: 'ack', id: req.id, ok: true, data }
    } catch (err) {
      let code = codeOf(err)
      if (code === undefined || !CODE_RE.test(code)) {
        this.#log.error({ err, req: req.t, vol: 'vol' in req ? req.vol : undefined }, 'request handler failed')
        code = 'INTERNAL'
      }
      ack = this.#errorAck(req, code, messageOf(err), blockOf(err))
    }
    const owned = this.#owned.get(req)
    if (owned) {
      this.#owned.delete(req)
      this.#releaseBuffer?.(owned)
    }
    this.#calls--
    this.#bytes -= bytes
    if (this.#phase === Phase.Ready) this.#send(ack)
    if (this.#calls === 0 && this.#idle) this.#idle()
    this.#pump()
  }

  #errorAck(req: RequestFrame, code: string, message: string, block?: number): AckErrorFrame {
    const ack: AckErrorFrame = { t: 'ack', id: req.id, ok: false, code, message: message.slice(0, MAX_MESSAGE_CHARS) }
    if (block !== undefined) ack.block = block
    return ack
  }

  #send(frame: Frame): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return
    this.#batch.hold()
    sendFrame(this.#ws, frame)
  }

  /** Protocol failure or shutdown: an `error` frame, then close ('silent': the caller logged it). */
  #fail(code: ReplicationCode, message: string, level: 'warn' | 'info' | 'silent' = 'warn'): void {
    if (this.#phase === Phase.Closed) return
    if (level !== 'silent') this.#log[level]({ code, reason: message, peer: this.#peer || undefined }, 'closing peer link')
    this.#send({ t: 'error', code, message: message.slice(0, MAX_MESSAGE_CHARS) })
    this.#close(code === 'SHUTTING_DOWN' ? 1001 : 1008)
  }

  #close(wsCode: number): void {
    this.#phase = Phase.Closed
    this.#queue = []
    this.#queueHead = 0
    clearTimeout(this.#handshakeTimer)
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.close(wsCode)
    // Read the peer's close reply even if flow control had paused the socket.
    if (this.#paused) this.#ws.resume()
    this.#closeTimer = setTimeout(() => this.#ws.terminate(), CLOSE_GRACE_MS)
  }

  #onWsError(err: Error): void {
    // ws has already closed the link (1009 for an oversized message, after PeerSocket's error
    // frame; 1002 for a malformed WebSocket frame); the server keeps serving the others.
    const wsCode = (err as { code?: string }).code
    const code: ReplicationCode = wsCode === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'FRAME_TOO_LARGE' : 'BAD_FRAME'
    if (this.#phase !== Phase.Closed) this.#log.warn({ code, reason: err.message, peer: this.#peer || undefined }, 'closing peer link')
    this.#phase = Phase.Closed
    this.#queue = []
    this.#queueHead = 0
    clearTimeout(this.#handshakeTimer)
    this.#closeTimer ??= setTimeout(() => this.#ws.terminate(), CLOSE_GRACE_MS)
  }

  #onSocketClose(): void {
    if (this.#socketClosed) return
    this.#socketClosed = true
    if (this.#phase !== Phase.Closed) this.#log.info({ peer: this.#peer || undefined }, 'peer link closed by the peer')
    this.#phase = Phase.Closed
    this.#queue = []
    this.#queueHead = 0
    clearTimeout(this.#handshakeTimer)
    clearTimeout(this.#closeTimer)
    this.#socket.off('drain', this.#onDrain)
    if (this.#calls === 0) this.#onClosed()
    else this.#idle = () => this.#onClosed()
  }
}
