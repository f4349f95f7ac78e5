/**
 * Mutual challenge-response over the cluster secret. Each side sends a fresh random nonce;
 * each proves it holds the secret with HMAC-SHA256 over both nonces, both node ids, the
 * cluster id and its direction. Fresh nonces defeat replay from another session; the
 * direction label defeats reflecting the server's proof back as the client's.
 *
 *   client -> hello {nodeId, clusterId, nonce: Nc}
 *   server -> challenge {nodeId, nonce: Ns, proof: HMAC(server, ...)}   client checks it
 *   client -> auth {proof: HMAC(client, ...)}                            server checks it
 *   server -> ready
 *
 * Hello and challenge also carry each side's release and protocol range (protocol.ts); the
 * proofs cover them and the protocol chosen when both sides sent them.
 *
 * This authenticates the two ends at the start of a connection; it does not encrypt or
 * sign the frames after it (that would be TLS's job).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { pxdError } from '../errors'
import { NONCE_BYTES, PROOF_BYTES } from './frames'

export const HANDSHAKE_TIMEOUT_MS = 5000
export const MIN_SECRET_BYTES = 16
const LABEL = 'pxd-peer-auth-v1'

export type ProofDirection = 'client' | 'server'

export interface HandshakeParties {
  clusterId: string
  clientNodeId: string
  serverNodeId: string
  clientNonce: Uint8Array
  serverNonce: Uint8Array
  /**
   * The protocol terms both ends sent and settled on (protocol.ts termsOf); absent when
   * either end is of a release before them, whose proofs do not cover them.
   */
  terms?: string
}

export function newNonce(): Buffer {
  return randomBytes(NONCE_BYTES)
}

export function checkSecret(secret: Uint8Array): void {
  if (!(secret instanceof Uint8Array) || secret.length < MIN_SECRET_BYTES) {
    throw pxdError('INVALID_ARGUMENT', `the cluster secret must be at least ${MIN_SECRET_BYTES} bytes`)
  }
}

export function computeProof(secret: Uint8Array, direction: ProofDirection, p: HandshakeParties): Buffer {
  const hmac = createHmac('sha256', secret)
  // Every variable-length field is length-prefixed so no two inputs share an encoding.
  const fields = [LABEL, direction, p.clusterId, p.clientNodeId, p.serverNodeId]
  if (p.terms !== undefined) fields.push(p.terms)
  for (const s of fields) {
    const bytes = Buffer.from(s, 'utf8')
    const len = Buffer.allocUnsafe(4)
    len.writeUInt32BE(bytes.length)
    hmac.update(len).update(bytes)
  }
  hmac.update(p.clientNonce).update(p.serverNonce)
  return hmac.digest()
}

/** Constant-time check of a proof received from the other side. */
export function verifyProof(secret: Uint8Array, direction: ProofDirection, p: HandshakeParties, proof: Uint8Array): boolean {
  if (proof.length !== PROOF_BYTES) return false
  return timingSafeEqual(computeProof(secret, direction, p), proof)
}
