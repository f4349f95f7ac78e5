/**
 * The accepting end of peer links. One WebSocket per peer carries every volume; each link
 * first runs the handshake (auth.ts), then hands every request frame to the handler and
 * answers with its ack. Requests reach the handler in arrival order.
 *
 * Memory is bounded per link: at most `maxConcurrentRequests` handler calls and about
 * `maxBytesInFlight` payload bytes (written data, requested read lengths, unsent replies)
 * at once. Over the cap the link stops reading its socket, so TCP pushes back on the peer;
 * the few frames ws had already parsed wait in a queue (bounded by one socket read).
 *
 * A link that breaks the protocol (undecodable or oversized frame, a request before the
 * handshake) gets an `error` frame and is closed, which costs only that link.
 *
 * Connections that have not authenticated yet are capped per source address and in total
 * from the TCP accept on, and must finish TLS, upgrade and handshake within one deadline
 * (admission.ts); refusals are logged rate-limited.
 *
 * The handshake also settles the peer protocol (protocol.ts): a client with no version in
 * common is refused with UNSUPPORTED_VERSION, logged rate-limited like the other refusals.
 *
 * With `psk` (psk.ts) the server speaks TLS 1.2 with a key derived from the cluster secret.
 * With `tls` (tls.ts) the server speaks https and admits only clients whose certificate the
 * cluster CA signed; a `hello` must then come from the node that certificate names.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'
import type { Duplex } from 'node:stream'
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Logger } from 'pino'
import { WebSocket, WebSocketServer } from 'ws'
import { codeOf, pxdError } from '../errors'
import { Admission, DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS, RefusalLog } from './admission'
import { checkSecret, HANDSHAKE_TIMEOUT_MS } from './auth'
import { encodeFrame, MAX_FRAME_BYTES, PEER_PATH } from './frames'
import { ownOffer, type PeerOffer, type ProtocolRange } from './protocol'
import { peerPsk, serverPskFailure, serverPskOptions } from './psk'
import { certificateNodeId, RemoteAddresses, serverTlsFailure, serverTlsOptions, type PeerTls } from './tls'

import { ServerLink, type Limits, type RequestHandler } from './server-link'

export type { RequestHandler }
export { PEER_PATH }
export const DEFAULT_SERVER_MAX_CONCURRENT = 256
export const DEFAULT_SERVER_MAX_BYTES = 64 * 1024 * 1024
/** Unauthenticated connections allowed at once, all addresses together (each may hold one frame of up to MAX_FRAME_BYTES). */
export const DEFAULT_MAX_HANDSHAKES = 64
/** The first byte of a TLS handshake record: a ClientHello sent to a plain port starts with it. */
const TLS_HANDSHAKE_RECORD = 0x16
const BAD_REQUEST = 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'

/**
 * ws answers an oversized message by closing with 1009 before any listener runs; this
 * subclass puts an `error` frame in front of that close so the peer learns why.
 */
class PeerSocket extends WebSocket {
  override close(code?: number, data?: string | Buffer): void {
    if (code === 1009 && this.readyState === WebSocket.OPEN) {
      this.send(encodeFrame({ t: 'error', code: 'FRAME_TOO_LARGE', message: `a frame exceeded ${MAX_FRAME_BYTES} bytes` }))
    }
    super.close(code, data)
  }
}

export interface PeerServerOptions {
  nodeId: string
  clusterId: string
  secret: Uint8Array
  handler: RequestHandler
  log: Logger
  /** This node's software version, sent to every peer in the handshake. */
  version?: string
  /**
   * The peer protocols this server speaks (protocol.ts): this build's PEER_PROTOCOLS unless
   * a test stands in for another release.
   */
  protocols?: ProtocolRange
  /** Handler calls one link may have running at once. */
  maxConcurrentRequests?: number
  /** Payload bytes one link may hold at once before the server stops reading it. */
  maxBytesInFlight?: number
  /** From the TCP accept to a completed handshake (TLS and upgrade included). */
  handshakeTimeoutMs?: number
  /** Unauthenticated connections at once, in total. */
  maxHandshakes?: number
  /** Unauthenticated connections at once from one source address. */
  maxHandshakesPerAddress?: number
  /** How often refusals of one kind from one address are summed up in the log. */
  refusalLogIntervalMs?: number
  /** Mutual TLS (wss): this node's certificate and key, and the cluster CA. */
  tls?: PeerTls
  /** Without `tls`: TLS with a key derived from the cluster secret (psk.ts). */
  psk?: boolean
  /**
   * With `psk`, during a rolling upgrade from a release whose links were plain WebSocket:
   * plain links are accepted on the same port too (the first byte tells a TLS ClientHello
   * from an HTTP request). Both still pass the cluster-secret handshake.
   */
  acceptPlaintext?: boolean
  /** With `acceptPlaintext`: the first byte waiting on a socket descriptor, not taken (the daemon passes the addon's peekByte): -1 none yet, -2 closed. */
  peekByte?: (fd: number) => number
  /**
   * Frees a received write's message buffer as soon as its handler settles, rather than at
   * a later GC (the daemon passes the addon's releaseArrayBuffer). Without it nothing is
   * released early.
   */
  releaseBuffer?: (buf: ArrayBuffer) => void
}

export class PeerServer {
  readonly nodeId: string
  readonly clusterId: string
  readonly #secret: Uint8Array
  readonly #handler: RequestHandler
  readonly #log: Logger
  readonly #offer: PeerOffer
  readonly #limits: Limits
  readonly #tls: PeerTls | undefined
  readonly #psk: Buffer | undefined
  readonly #releaseBuffer: ((buf: ArrayBuffer) => void) | undefined
  readonly #links = new Set<ServerLink>()
  readonly #remotes = new RemoteAddresses()
  readonly #admission: Admission
  readonly #refusals: RefusalLog
  /** Raw sockets that hold an admission slot (not yet authenticated). */
  readonly #slots = new WeakMap<Socket, Slot>()
  /** The listening server, and the HTTP servers behind it (one, or the TLS-PSK and the plain one). */
  #front: NetServer | undefined
  #http: Server[] = []
  #wss: WebSocketServer[] = []
  readonly #acceptPlaintext: boolean
  readonly #peekByte: ((fd: number) => number) | undefined
  #closing: Promise<void> | undefined

  constructor(o: PeerServerOptions) {
    checkSecret(o.secret)
    this.nodeId = o.nodeId
    this.clusterId = o.clusterId
    this.#secret = o.secret
    this.#handler = o.handler
    this.#offer = ownOffer(o.version, o.protocols)
    this.#log = o.log.child({ component: 'peer-server' })
    this.#tls = o.tls
    this.#psk = o.psk && !o.tls ? peerPsk(o.secret, o.clusterId) : undefined
    this.#releaseBuffer = o.releaseBuffer
    this.#peekByte = o.peekByte
    this.#acceptPlaintext = o.acceptPlaintext === true && this.#psk !== undefined
    if (this.#acceptPlaintext && !o.peekByte) throw pxdError('INVALID_ARGUMENT', 'acceptPlaintext needs peekByte')
    if (o.tls && o.tls.nodeId !== o.nodeId) {
      throw pxdError('INVALID_ARGUMENT', `the peer TLS certificate is issued to ${o.tls.nodeId}, not to this node (${o.nodeId})`)
    }
    this.#limits = {
      maxCalls: o.maxConcurrentRequests ?? DEFAULT_SERVER_MAX_CONCURRENT,
      maxBytes: o.maxBytesInFlight ?? DEFAULT_SERVER_MAX_BYTES,
      handshakeTimeoutMs: o.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
      maxHandshakes: o.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES,
    }
    this.#admission = new Admission({ total: this.#limits.maxHandshakes, perAddress: o.maxHandshakesPerAddress ?? DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS })
    this.#refusals = new RefusalLog(this.#log, o.refusalLogIntervalMs)
  }

  /** Whether the server speaks TLS (wss), with certificates or a pre-shared key. */
  get tls(): boolean {
    return this.#tls !== undefined || this.#psk !== undefined
  }

  /** How links to this server are secured, for logs. */
  get security(): 'certificate' | 'psk' | 'none' {
    return this.#tls ? 'certificate' : this.#psk ? 'psk' : 'none'
  }

  /** Connections that hold an unauthenticated slot now. */
  get unauthenticatedCount(): number {
    return this.#admission.total
  }

  /** Links currently open (handshaking or ready). */
  get linkCount(): number {
    return this.#links.size
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    if (this.#closing) return Promise.reject(pxdError('DAEMON_STOPPING', 'the peer server is closed'))
    if (this.#front) return Promise.reject(pxdError('INVALID_ARGUMENT', 'the peer server is already listening'))
    const onRequest = (_req: IncomingMessage, res: ServerResponse) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('pxd peer links speak WebSocket\n')
    }
    const http: Server = this.#tls ? createTlsServer(serverTlsOptions(this.#tls), onRequest)
      : this.#psk ? createTlsServer(serverPskOptions(this.#psk), onRequest) : createServer(onRequest)
    if (this.#psk) http.on('tlsClientError', (err, socket) => this.#onPskClientError(err, socket))
    if (this.#tls) http.on('tlsClientError', (err, socket) => this.#onTlsClientError(err, socket))
    const plain = this.#acceptPlaintext ? createServer(onRequest) : undefined
    this.#http = plain ? [http, plain] : [http]
    for (const server of this.#http) {
      server.on('clientError', (err, socket) => this.#onClientError(err, socket))
      const wss = new WebSocketServer<typeof PeerSocket>({
        WebSocket: PeerSocket,
        server,
        path: PEER_PATH,
        maxPayload: MAX_FRAME_BYTES,
        perMessageDeflate: false,
        clientTracking: false,
        skipUTF8Validation: true,
      })
      wss.on('connection', (ws, req) => this.#accept(ws, req))
      wss.on('error', (err) => this.#log.error({ err }, 'peer server error'))
      this.#wss.push(wss)
    }
    let front: NetServer = http
    if (plain) {
      // One port for both: a TLS record starts with 0x16 (handshake), an HTTP request with a
      // letter. The byte is peeked at, not read: the TLS and HTTP servers take the socket's
      // handle as it is, and would never see bytes read from it in JavaScript.
      front = createNetServer({ pauseOnConnect: true }, (raw) => {
        this.#admit(raw)
        const fd = (raw as Socket & { _handle?: { fd?: number } })._handle?.fd ?? -1
        const sniff = (): void => {
          if (raw.destroyed) return
          const first = fd >= 0 ? this.#peekByte!(fd) : -2
          if (first === -1) return void setTimeout(sniff, 1)
          if (first === -2) return void raw.destroy()
          const to = first === 0x16 ? http : plain
          to.emit('connection', raw)
          raw.resume()
        }
        sniff()
      })
    } else {
      http.on('connection', (raw: Socket) => this.#admit(raw))
    }
    this.#front = front
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(pxdError('PRECONDITION', `cannot listen for peers on ${host}:${port}: ${err.message}`, err))
      front.once('error', onError)
      front.listen(port, host, () => {
        front.off('error', onError)
        front.on('error', (err) => this.#log.error({ err }, 'peer server error'))
        const addr = front.address()
        const bound = typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host, port }
        this.#log.info({ ...bound, tls: this.#tls !== undefined || (this.#psk ? 'psk' : false) }, 'listening for peers')
        if (plain) this.#log.warn('peer links without TLS are accepted too (--peer-accept-plaintext), for a rolling upgrade from a release without TLS-PSK: turn it off once every node runs this one')
        resolve(bound)
      })
    })
  }

  /** Stops accepting, closes every link, waits for the handler calls in flight. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const front = this.#front
      const stopped = front?.listening ? new Promise<void>((resolve) => front.close(() => resolve())) : Promise.resolve()
      for (const wss of this.#wss) wss.close()
      await Promise.all([...this.#links].map((link) => link.shutdown()))
      for (const http of this.#http) http.closeAllConnections()
      await stopped
      this.#refusals.close()
    })()
    return this.#closing
  }

  /** A new TCP connection: takes an unauthenticated slot with its deadline, or is closed at once. */
  #admit(raw: Socket): void {
    this.#remotes.note(raw)
    const address = raw.remoteAddress ?? '?'
    if (this.#closing) {
      raw.destroy()
      return
    }
    const refusal = this.#admission.admit(address)
    if (refusal) {
      this.#refusals.refused(refusal, address, refusal === 'total' ? { limit: this.#limits.maxHandshakes } : { held: this.#admission.held(address) })
      raw.destroy()
      return
    }
    const timeoutMs = this.#limits.handshakeTimeoutMs
    const slot: Slot = { address, deadline: Date.now() + timeoutMs, timer: undefined, held: true }
    // Until the upgrade this timer guards the slot; then the link's own timer (with the time left) does.
    slot.timer = setTimeout(() => {
      this.#refusals.refused('deadline', address, { timeoutMs })
      raw.destroy()
    }, timeoutMs)
    this.#slots.set(raw, slot)
    raw.once('close', () => this.#releaseSlot(slot))
  }

  #releaseSlot(slot: Slot): void {
    clearTimeout(slot.timer)
    if (!slot.held) return
    slot.held = false
    this.#admission.release(slot.address)
  }

  /** Bytes that are not HTTP (or, with TLS, not HTTP inside TLS): answer 400 and close. */
  #onClientError(err: Error & { rawPacket?: Buffer }, socket: Duplex): void {
    const s = socket as Socket & Partial<TLSSocket>
    if (this.#tls && s.authorized !== true) {
      // A failed TLS handshake: #onTlsClientError logs it.
      socket.destroy()
      return
    }
    const remote = this.#remotes.of(s)
    if (!this.#tls && !this.#psk && err.rawPacket?.[0] === TLS_HANDSHAKE_RECORD) {
      this.#refusals.refused('a TLS client reached this plain peer port: that node uses --peer-tls-*, this one does not', s.remoteAddress ?? hostOf(remote), { remote, code: 'AUTH_FAILED' })
    } else {
      this.#log.debug({ remote, reason: err.message }, 'peer connection sent bytes that are not HTTP')
    }
    if (socket.writable && (err as { code?: string }).code !== 'ECONNRESET') socket.end(BAD_REQUEST)
    else socket.destroy()
  }

  #onPskClientError(err: Error, socket: TLSSocket): void {
    const remote = this.#remotes.of(socket)
    const failure = serverPskFailure(err)
    // Keyed by the error code, not the message: random bytes give many different OpenSSL messages.
    this.#refusals.refused(`tls-psk ${errorCode(err)}`, hostOf(remote), { remote, code: 'AUTH_FAILED', ...failure })
  }

  #onTlsClientError(err: Error, socket: TLSSocket): void {
    const failure = serverTlsFailure(err, socket)
    const remote = this.#remotes.of(socket)
    this.#refusals.refused(`tls ${failure.authorizationError ?? errorCode(err)}`, hostOf(remote), { remote, code: 'AUTH_FAILED', ...failure })
  }

  #accept(ws: WebSocket, req: IncomingMessage): void {
    const remote = this.#remotes.of(req.socket)
    if (this.#closing) {
      ws.terminate()
      return
    }
    const slot = this.#slots.get(rawOf(req.socket))
    if (!slot) {
      ws.terminate()
      return
    }
    clearTimeout(slot.timer)
    const limits = { ...this.#limits, handshakeTimeoutMs: Math.max(1, slot.deadline - Date.now()) }
    // With TLS only a client the CA vouches for gets here; the node its certificate names must be the one that says hello.
    const certNode = this.#tls ? certificateNodeId((req.socket as TLSSocket).getPeerCertificate()) ?? '' : undefined
    const identity = {
      nodeId: this.nodeId,
      clusterId: this.clusterId,
      offer: this.#offer,
      refuse: (reason: string, detail: Record<string, unknown>) => this.#refusals.refused(reason, hostOf(remote), { remote, ...detail }),
    }
    const link = new ServerLink(ws, req.socket, identity, this.#secret, this.#handler, this.#log.child({ remote }), limits, certNode, this.#releaseBuffer)
    this.#links.add(link)
    void link.ready.then(() => this.#releaseSlot(slot))
    void link.closed.then(() => this.#links.delete(link))
  }
}

interface Slot { address: string; deadline: number; timer: NodeJS.Timeout | undefined; held: boolean }

/** The raw TCP socket under a (TLS) socket: Node keeps it as `_parent`. */
function rawOf(socket: Socket): Socket {
  return (socket as Socket & { _parent?: Socket })._parent ?? socket
}

function errorCode(err: Error): string {
  return codeOf(err) ?? 'error'
}

/** `host:port` to host (IPv6 addresses keep their colons). */
function hostOf(remote: string): string {
  const i = remote.lastIndexOf(':')
  return i > 0 ? remote.slice(0, i) : remote
}

