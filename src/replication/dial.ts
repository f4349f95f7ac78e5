/**
 * One connection attempt of a peer link (peer-link.ts): what every link of a pool shares, and
 * the WebSocket it dials, secured as the pool is (certificates, TLS-PSK or none), with the
 * classification of its failures into errors that say why.
 */
import { WebSocket, type ClientOptions } from 'ws'
import type { PxdError } from '../errors'
import { MAX_FRAME_BYTES, PEER_PATH } from './frames'
import type { PeerOffer } from './protocol'
import { clientPskOptions, pskLinkFailure } from './psk'
import { clientTlsOptions, linkFailure, type PeerTls, type TlsAttempt } from './tls'

/** What every link of a pool shares: who this node is, and the limits and timings (peer-links.ts fills them in). */
export interface LinkConfig {
  nodeId: string
  clusterId: string
  secret: Uint8Array
  /** This node's software version and the peer protocols it speaks (protocol.ts). */
  offer: PeerOffer
  requestTimeoutMs: number
  maxBytes: number
  maxRequests: number
  connectTimeoutMs: number
  retryAfterMs: number
  pingIntervalMs: number
  deadAfterMs: number
  tls: PeerTls | undefined
  /** TLS-PSK key (psk.ts), when there is no `tls`. */
  psk: Buffer | undefined
  /**
   * During a rolling upgrade from a release without TLS-PSK (--peer-accept-plaintext): the
   * addresses that answered a TLS dial as a plain HTTP server, dialed without TLS from then on.
   */
  plaintextPeers?: Set<string>
}

/** The link is node to node, never through a browser's proxies: a zero mask lets ws skip the XOR pass. */
const zeroMask = (mask: Buffer) => { mask.fill(0) }

export interface Dial {
  readonly ws: WebSocket
  /** The error a WebSocket error of this attempt stands for; `opening`: before the WebSocket opened. */
  failure(err: Error, opening: boolean): PxdError
}

/** Opens the WebSocket to `address`; throws what ws throws for a bad address. */
export function dialPeer(config: LinkConfig, peerNodeId: string, address: string): Dial {
  const { tls, plaintextPeers } = config
  const psk = plaintextPeers?.has(address) ? undefined : config.psk
  const attempt: TlsAttempt = { secured: false }
  const ws = new WebSocket(`${tls || psk ? 'wss' : 'ws'}://${address}${PEER_PATH}`, {
    // ws hands these to tls.connect; its typings give checkServerIdentity tls.connect's older signature.
    ...(tls ? clientTlsOptions(tls, peerNodeId, attempt) as unknown as ClientOptions
      : psk ? clientPskOptions(psk, attempt) as unknown as ClientOptions : {}),
    perMessageDeflate: false,
    maxPayload: MAX_FRAME_BYTES,
    handshakeTimeout: config.connectTimeoutMs,
    followRedirects: false,
    skipUTF8Validation: true,
    generateMask: zeroMask,
  })
  return {
    ws,
    failure: (err, opening) => {
      // An HTTP server's answer to a ClientHello: an older release, without TLS on its links.
      if (psk && plaintextPeers && opening && !attempt.secured && /wrong version number|WRONG_VERSION_NUMBER|packet length too long/i.test(`${(err as { code?: string }).code ?? ''} ${err.message}`)) plaintextPeers.add(address)
      return (psk && pskLinkFailure(err, peerNodeId, address, opening, attempt)) || linkFailure(err, peerNodeId, address, opening, tls !== undefined, attempt)
    },
  }
}
