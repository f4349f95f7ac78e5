/**
 * The connecting end of peer links: a pool with one link (peer-link.ts) per peer node, each
 * carrying the requests of every volume to that node over one WebSocket, made on first use.
 */
import type { Logger } from 'pino'
import { checkSecret } from './auth'
import { replicationError } from './errors'
import { PeerLink, type LinkConfig } from './peer-link'
import type { PeerTls } from './tls'
import { ownOffer, type ProtocolRange } from './protocol'
import { peerPsk } from './psk'

export const DEFAULT_REQUEST_TIMEOUT_MS = 8000
export const DEFAULT_MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024
export const DEFAULT_MAX_REQUESTS_IN_FLIGHT = 4096
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000
export const DEFAULT_RETRY_AFTER_MS = 1000
export const DEFAULT_PING_INTERVAL_MS = 2000
export const DEFAULT_DEAD_AFTER_MS = 10_000

export interface PeerLinksOptions {
  nodeId: string
  clusterId: string
  secret: Uint8Array
  log: Logger
  /** This node's software version, sent to every peer in the handshake. */
  version?: string
  /** The peer protocols these links speak (protocol.ts): this build's PEER_PROTOCOLS unless a test stands in for another release. */
  protocols?: ProtocolRange
  requestTimeoutMs?: number
  maxBytesInFlight?: number
  maxRequestsInFlight?: number
  connectTimeoutMs?: number
  retryAfterMs?: number
  pingIntervalMs?: number
  deadAfterMs?: number
  /** Mutual TLS (wss): this node's certificate and key, and the cluster CA. */
  tls?: PeerTls
  /** Without `tls`: TLS with a key derived from the cluster secret (psk.ts). */
  psk?: boolean
  /** With `psk`: a peer that answers TLS as a plain HTTP server (an older release) is dialed without TLS from then on. */
  plaintextFallback?: boolean
}

/** One link per peer node, made on first use. */
export class PeerLinks {
  readonly #config: LinkConfig
  readonly #log: Logger
  readonly #links = new Map<string, PeerLink>()
  #closing: Promise<void> | undefined

  constructor(o: PeerLinksOptions) {
    checkSecret(o.secret)
    if (o.tls && o.tls.nodeId !== o.nodeId) {
      throw replicationError('AUTH_FAILED', `the peer TLS certificate is issued to ${o.tls.nodeId}, not to this node (${o.nodeId})`)
    }
    this.#config = {
      nodeId: o.nodeId,
      clusterId: o.clusterId,
      secret: o.secret,
      offer: ownOffer(o.version, o.protocols),
      requestTimeoutMs: o.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      maxBytes: o.maxBytesInFlight ?? DEFAULT_MAX_BYTES_IN_FLIGHT,
      maxRequests: o.maxRequestsInFlight ?? DEFAULT_MAX_REQUESTS_IN_FLIGHT,
      connectTimeoutMs: o.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      retryAfterMs: o.retryAfterMs ?? DEFAULT_RETRY_AFTER_MS,
      pingIntervalMs: o.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
      deadAfterMs: o.deadAfterMs ?? DEFAULT_DEAD_AFTER_MS,
      tls: o.tls,
      psk: o.psk && !o.tls ? peerPsk(o.secret, o.clusterId) : undefined,
      ...(o.plaintextFallback && o.psk && !o.tls ? { plaintextPeers: new Set<string>() } : {}),
    }
    this.#log = o.log.child({ component: 'peer-link' })
  }

  /** The link to a peer; a new address takes effect at the next connection. */
  link(peerNodeId: string, address: string): PeerLink {
    if (this.#closing) throw replicationError('LINK_CLOSED', 'the peer links are closed')
    let link = this.#links.get(peerNodeId)
    if (link === undefined) {
      link = new PeerLink(peerNodeId, address, this.#config, this.#log.child({ peer: peerNodeId }))
      this.#links.set(peerNodeId, link)
    } else {
      link.address = address
    }
    return link
  }

  get(peerNodeId: string): PeerLink | undefined {
    return this.#links.get(peerNodeId)
  }

  /** Fails every pending request with LINK_CLOSED and closes every connection. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= Promise.all([...this.#links.values()].map((l) => l.close())).then(() => undefined)
    return this.#closing
  }
}
