/**
 * Which peer protocol two nodes speak, settled in the handshake so that nodes of different
 * releases work together during a rolling upgrade.
 *
 * Each side's hello or challenge carries its software version and the range of peer
 * protocols it speaks (protoMin..protoMax); the server picks the highest version both
 * ranges hold and names it in its challenge (proto). With no version in common the server
 * refuses the link with UNSUPPORTED_VERSION and a message naming both nodes' releases and
 * ranges. The fields are optional on the wire: a node of a release before them sends a hello
 * without them and rejects a handshake frame with fields it does not know, so such a hello is
 * taken as protocol [1, 1] of an unknown version and answered with a challenge without them;
 * a client whose fuller hello such a server refuses (AUTH_REQUIRED) dials again with the
 * older hello (peer-link.ts). When both sides sent the fields, the proofs cover them (auth.ts
 * `terms`), so nobody on the path can change what the two settled on.
 *
 * The `v` of handshake frames (frames.ts PROTOCOL_VERSION) is the layout of the handshake
 * frames themselves and stays 1; what the frames after the handshake mean is the protocol
 * settled here.
 */
import { pxdError } from '../errors'
import { replicationError } from './errors'
import type { ChallengeFrame, HelloFrame } from './frames'

export interface ProtocolRange { readonly min: number; readonly max: number }

/**
 * The peer protocols this build speaks. 2: a shared volume's server may refuse a file
 * operation with SERVER_RESTARTED or SERVER_RECOVERED (after a crash), which its client
 * answers by taking its locks again; a client of protocol 1 does not know those codes,
 * and is served without them.
 */
export const PEER_PROTOCOLS: ProtocolRange = { min: 1, max: 2 }
/** What a node of a release before the range fields speaks. */
export const LEGACY_PROTOCOLS: ProtocolRange = { min: 1, max: 1 }
/** Longest software version a handshake carries. */
export const MAX_VERSION_CHARS = 64
export const VERSION_RE = /^[\x21-\x7e]{1,64}$/

/** What one side offers: its software version (undefined from an older release) and its protocol range. */
export interface PeerOffer {
  readonly version: string | undefined
  readonly protocols: ProtocolRange
  /** The offer came without the range fields: from a release before them. */
  readonly legacy: boolean
}

/** This node's offer, checking what a caller configured. */
export function ownOffer(version: string | undefined, protocols: ProtocolRange | undefined): PeerOffer {
  const range = protocols ?? PEER_PROTOCOLS
  if (!Number.isSafeInteger(range.min) || !Number.isSafeInteger(range.max) || range.min < 1 || range.min > range.max) {
    throw pxdError('INVALID_ARGUMENT', `peer protocol range ${range.min}..${range.max} is not 1 <= min <= max`)
  }
  if (version !== undefined && !VERSION_RE.test(version)) {
    throw pxdError('INVALID_ARGUMENT', `software version ${JSON.stringify(version.slice(0, 80))} must be 1-${MAX_VERSION_CHARS} printable characters without spaces`)
  }
  return { version, protocols: range, legacy: false }
}

/** The offer in a received hello or challenge; BAD_FRAME when only one end of the range is there. */
export function offerOf(frame: HelloFrame | ChallengeFrame): PeerOffer {
  const { protoMin, protoMax, version } = frame
  if (protoMin === undefined && protoMax === undefined) return { version, protocols: LEGACY_PROTOCOLS, legacy: true }
  if (protoMin === undefined || protoMax === undefined) {
    throw replicationError('BAD_FRAME', `${frame.t} frame: protoMin and protoMax come together`)
  }
  return { version, protocols: { min: protoMin, max: protoMax }, legacy: false }
}

/** The fields an offer adds to a hello or challenge. */
export function offerFields(offer: PeerOffer): { protoMin: number; protoMax: number; version?: string } {
  const fields: { protoMin: number; protoMax: number; version?: string } = { protoMin: offer.protocols.min, protoMax: offer.protocols.max }
  if (offer.version !== undefined) fields.version = offer.version
  return fields
}

/** The highest protocol both ranges hold, or undefined. */
export function negotiate(a: ProtocolRange, b: ProtocolRange): number | undefined {
  const high = Math.min(a.max, b.max)
  return high >= Math.max(a.min, b.min) ? high : undefined
}

/** "pxd 0.2.0, peer protocols 1-2" (the version reads "unknown" from a release that does not send it). */
export function describeOffer(offer: PeerOffer): string {
  const { min, max } = offer.protocols
  return `pxd ${offer.version ?? 'version unknown'}, peer protocol${min === max ? ` ${min}` : `s ${min}-${max}`}${offer.legacy ? ' (a release before protocol negotiation)' : ''}`
}

/** Why two nodes cannot link: what an UNSUPPORTED_VERSION refusal says. */
export function incompatibility(self: { nodeId: string; offer: PeerOffer }, peer: { nodeId: string; offer: PeerOffer }): string {
  return `node ${peer.nodeId} (${describeOffer(peer.offer)}) and node ${self.nodeId} (${describeOffer(self.offer)}) ` +
    'have no peer protocol in common: upgrade the older node before linking them'
}

/** The handshake's terms as both proofs cover them: both offers and the protocol chosen. */
export function termsOf(client: PeerOffer, server: PeerOffer, proto: number): string {
  const one = (o: PeerOffer) => `${o.protocols.min}-${o.protocols.max}/${o.version ?? ''}`
  return `client=${one(client)};server=${one(server)};proto=${proto}`
}
