/**
 * The dialing side of one connection's handshake (auth.ts, protocol.ts): the hello it sends,
 * then the checks of the server's challenge (the node it meant to reach, the proof, the
 * protocol chosen) and the auth frame that answers it. A `legacy` handshake sends the hello
 * of a release before protocol negotiation, for a server of such a release.
 */
import { computeProof, newNonce, verifyProof, type HandshakeParties } from './auth'
import { replicationError } from './errors'
import { PROTOCOL_VERSION, type AuthFrame, type ChallengeFrame, type HelloFrame } from './frames'
import { incompatibility, negotiate, offerFields, offerOf, termsOf, type PeerOffer } from './protocol'

export interface ClientIdentity {
  readonly nodeId: string
  readonly clusterId: string
  readonly secret: Uint8Array
  readonly offer: PeerOffer
}

export class ClientHandshake {
  readonly legacy: boolean
  readonly #self: ClientIdentity
  readonly #peerNodeId: string
  readonly #parties: HandshakeParties
  #protocol: number | undefined
  #peerVersion: string | undefined

  constructor(self: ClientIdentity, peerNodeId: string, legacy: boolean) {
    this.#self = self
    this.#peerNodeId = peerNodeId
    this.legacy = legacy
    this.#parties = {
      clusterId: self.clusterId,
      clientNodeId: self.nodeId,
      serverNodeId: peerNodeId,
      clientNonce: newNonce(),
      serverNonce: Buffer.alloc(0),
    }
  }

  /** The protocol settled on, once the challenge was accepted. */
  get protocol(): number | undefined {
    return this.#protocol
  }

  /** The server's software version; undefined from a release that does not send it. */
  get peerVersion(): string | undefined {
    return this.#peerVersion
  }

  hello(): HelloFrame {
    const hello: HelloFrame = { t: 'hello', v: PROTOCOL_VERSION, nodeId: this.#self.nodeId, clusterId: this.#self.clusterId, nonce: this.#parties.clientNonce }
    return this.legacy ? hello : { ...hello, ...offerFields(this.#self.offer) }
  }

  /** Checks the server's challenge; throws PEER_MISMATCH, UNSUPPORTED_VERSION, BAD_FRAME or AUTH_FAILED. */
  answer(frame: ChallengeFrame, address: string): AuthFrame {
    const peer = this.#peerNodeId
    if (frame.nodeId !== peer) throw replicationError('PEER_MISMATCH', `${address} answered as node ${frame.nodeId}, not ${peer}`)
    const own = this.#self.offer
    const offer = offerOf(frame)
    const fits = negotiate(own.protocols, offer.protocols)
    if (fits === undefined) {
      throw replicationError('UNSUPPORTED_VERSION', incompatibility({ nodeId: this.#self.nodeId, offer: own }, { nodeId: peer, offer }))
    }
    let proto = fits
    if (!offer.legacy) {
      if (this.legacy) throw replicationError('BAD_FRAME', `node ${peer} answered a hello without a protocol range with a challenge that has one`)
      if (frame.proto === undefined || frame.proto < Math.max(own.protocols.min, offer.protocols.min) || frame.proto > Math.min(own.protocols.max, offer.protocols.max)) {
        throw replicationError('UNSUPPORTED_VERSION', `node ${peer} chose peer protocol ${frame.proto ?? 'none'}, outside what both speak ` +
          `(this node ${own.protocols.min}-${own.protocols.max}, node ${peer} ${offer.protocols.min}-${offer.protocols.max})`)
      }
      proto = frame.proto
      this.#parties.terms = termsOf(own, offer, proto)
    } else if (frame.proto !== undefined) {
      throw replicationError('BAD_FRAME', `node ${peer} chose a protocol without offering a range`)
    }
    this.#parties.serverNonce = frame.nonce
    if (!verifyProof(this.#self.secret, 'server', this.#parties, frame.proof)) {
      throw replicationError('AUTH_FAILED', `node ${peer} at ${address} did not prove it holds the cluster secret`)
    }
    this.#protocol = proto
    this.#peerVersion = offer.version
    return { t: 'auth', proof: computeProof(this.#self.secret, 'client', this.#parties) }
  }
}
