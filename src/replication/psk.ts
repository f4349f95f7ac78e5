/**
 * TLS with a pre-shared key, the default encryption of peer links when no certificates
 * are given (--peer-tls-*). Both ends derive the key from the cluster secret with HKDF
 * (SHA-256, a fixed label), so no node needs more than the secret it already holds, and
 * TLS 1.2 with a PSK AES-GCM cipher encrypts and authenticates every frame. A node without
 * the secret fails the TLS handshake; the cluster-secret handshake (auth.ts) still runs on
 * top and binds the node ids of the session.
 */
import { hkdfSync, type BinaryLike } from 'node:crypto'
import type { ConnectionOptions, TlsOptions } from 'node:tls'
import type { Socket } from 'node:net'
import { codeOf, type PxdError } from '../errors'
import { replicationError } from './errors'
import { tlsDialNoting } from './tls'

/** The identity a client names; the key is the same for every node of the cluster. */
export const PSK_IDENTITY = 'pxd-peer-link-v1'
const PSK_LABEL = 'pxd peer link tls psk v1'
export const PSK_CIPHERS = 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256'

/** The 32-byte TLS PSK of a cluster secret. */
export function peerPsk(secret: BinaryLike, clusterId: string): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.from(clusterId, 'utf8'), PSK_LABEL, 32))
}

export function serverPskOptions(psk: Buffer): TlsOptions {
  return {
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.2',
    pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? psk : null),
  }
}

export function clientPskOptions(psk: Buffer, attempt: { secured: boolean }): ConnectionOptions & { createConnection: (o: ConnectionOptions) => Socket } {
  return {
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.2',
    pskCallback: () => ({ psk, identity: PSK_IDENTITY }),
    // The key authenticates the server: there is no certificate to check.
    checkServerIdentity: () => undefined,
    createConnection: tlsDialNoting(attempt),
  }
}

/** Names a failed TLS-PSK dial before the link opened; undefined when the error is not about TLS. */
export function pskLinkFailure(err: Error, peer: string, address: string, opening: boolean, attempt: { secured: boolean }): PxdError | undefined {
  const code = codeOf(err)
  if (!opening || attempt.secured || code === undefined) return undefined
  if (code !== 'EPROTO' && code !== 'ECONNRESET' && code !== 'EPIPE' && !code.startsWith('ERR_SSL')) return undefined
  return replicationError('AUTH_FAILED', `TLS-PSK: the handshake with node ${peer} at ${address} failed (${code}): does that node hold the same cluster secret, and run without --peer-tls-* certificates?`, err)
}

/** Why the PSK server refused a connection, for its log. */
export function serverPskFailure(err: Error): { reason: string } {
  const code = codeOf(err)
  if (code === 'ERR_SSL_HTTP_REQUEST') return { reason: 'a plain (non-TLS) connection reached the TLS-PSK peer port: peer links are encrypted with a key from the cluster secret' }
  if (code === 'ERR_SSL_CIPHER_OPERATION_FAILED' || code === 'ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC') return { reason: 'the TLS-PSK handshake failed: the client holds another cluster secret' }
  return { reason: `TLS-PSK handshake failed: ${code !== undefined ? `${code}: ` : ''}${err.message.split('\n')[0] ?? ''} (a client with --peer-tls-* certificates, or another cluster secret?)` }
}
