/**
 * Optional mutual TLS for peer links. With it the peer server is an https server that
 * demands a client certificate (`requestCert`, `rejectUnauthorized`), links dial `wss://`
 * with this node's certificate, and both ends verify the other's chain against the
 * cluster CA. The cluster-secret handshake (auth.ts) still runs inside TLS.
 *
 * Whose certificate it is: every node has its own, and its subject CN is the node id.
 * Both ends check it: a link accepts a server only if its certificate names the node it
 * meant to reach, and a server accepts a `hello` only from the node its client
 * certificate names. A stolen key speaks for one node only.
 *
 * The address is not checked against the certificate's SANs. A link dials the address a
 * node advertised in the membership record; NAT, --advertise and renumbering make that a
 * poor identity, and the node id bound to the CA's signature is what the replica set
 * names. A certificate may carry SANs (IP:..., DNS:...) for other tools; pxd ignores them.
 *
 * Failures are named for an operator: a plain node dialled by a TLS node, a certificate
 * from another CA, a node presenting another node's certificate. Certificates are read
 * at start; rotating them means restarting the node.
 */
import { promises as fs } from 'node:fs'
import { X509Certificate, createPrivateKey } from 'node:crypto'
import { isIP, type Socket } from 'node:net'
import { connect as tlsConnect, createSecureContext, type ConnectionOptions, type PeerCertificate, type TLSSocket } from 'node:tls'
import type { ServerOptions } from 'node:https'
import type { Logger } from 'pino'
import { isPxdError, pxdError, type PxdError } from '../errors'
import { replicationError } from './errors'

export const TLS_MIN_VERSION = 'TLSv1.2'
const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g
const EKU_SERVER_AUTH = '1.3.6.1.5.5.7.3.1'
const EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2'
/** OpenSSL's certificate verification results, as Node names them on the error's code. */
const VERIFY_CODE_RE = /^(UNABLE_TO_|CERT_|CRL_|DEPTH_ZERO_|SELF_SIGNED_|ERROR_IN_|INVALID_CA$|INVALID_PURPOSE$|PATH_LENGTH_|HOSTNAME_MISMATCH$)/
/** What a TLS client sees when the other end answers in plain text (as a code, or inside an EPROTO message). */
const NOT_TLS_CODES = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_UNKNOWN_PROTOCOL', 'ERR_SSL_RECORD_LAYER_FAILURE'])
const NOT_TLS_RE = /wrong version number|packet length too long|unknown protocol|record layer failure/
const ALERT_RE = /^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT_/

export interface PeerTlsFiles {
  cert?: string | undefined
  key?: string | undefined
  ca?: string | undefined
}

/** This node's certificate, key and the cluster CA, checked for use on both ends of a link. */
export interface PeerTls {
  readonly cert: Buffer
  readonly key: Buffer
  readonly ca: Buffer
  /** The node id the certificate names (its subject CN). */
  readonly nodeId: string
}

const FLAGS = { cert: '--peer-tls-cert', key: '--peer-tls-key', ca: '--peer-tls-ca' } as const
const ENVS = { cert: 'PXD_PEER_TLS_CERT', key: 'PXD_PEER_TLS_KEY', ca: 'PXD_PEER_TLS_CA' } as const

/**
 * Reads and checks the three files; undefined when none is given. All three or none:
 * anything else is INVALID_ARGUMENT, as is a certificate that peers would refuse.
 */
export async function loadPeerTls(files: PeerTlsFiles, nodeId: string, log: Logger): Promise<PeerTls | undefined> {
  const given = (['cert', 'key', 'ca'] as const).filter((k) => files[k])
  if (given.length === 0) return undefined
  if (given.length < 3) {
    const missing = (['cert', 'key', 'ca'] as const).filter((k) => !files[k]).map((k) => `${FLAGS[k]} (${ENVS[k]})`)
    throw pxdError('INVALID_ARGUMENT', `peer TLS needs all three of --peer-tls-cert, --peer-tls-key and --peer-tls-ca, or none; missing ${missing.join(' and ')}`)
  }
  const read = async (k: 'cert' | 'key' | 'ca'): Promise<Buffer> => {
    const file = files[k]!
    try {
      const data = await fs.readFile(file)
      if (k === 'key' && ((await fs.stat(file)).mode & 0o004)) log.warn({ file }, 'the peer TLS key file is world-readable; chmod 600 it')
      return data
    } catch (err) {
      throw pxdError('INVALID_ARGUMENT', `cannot read ${FLAGS[k]} ${file}: ${(err as Error).message}`, err)
    }
  }
  const [cert, key, ca] = await Promise.all([read('cert'), read('key'), read('ca')])
  return checkPeerTls({ cert, key, ca }, nodeId, files)
}

/**
 * Checks what a peer would check, so a bad certificate stops the node at start rather
 * than failing every link: the key matches, the CA signed the certificate, it is valid
 * now, it may serve as both server and client, and its CN is this node's id.
 */
export function checkPeerTls(m: { cert: Buffer; key: Buffer; ca: Buffer }, nodeId: string, files: PeerTlsFiles = {}): PeerTls {
  const where = (k: 'cert' | 'key' | 'ca') => (files[k] ? `${FLAGS[k]} ${files[k]}` : FLAGS[k])
  const chain = pemCertificates(m.cert, where('cert'))
  const cas = pemCertificates(m.ca, where('ca'))
  const leaf = chain[0]!
  try {
    if (!leaf.checkPrivateKey(createPrivateKey(m.key))) {
      throw pxdError('INVALID_ARGUMENT', `the key in ${where('key')} does not belong to the certificate in ${where('cert')}`)
    }
    createSecureContext({ cert: m.cert, key: m.key, ca: m.ca })
  } catch (err) {
    if ((err as { code?: string }).code === 'INVALID_ARGUMENT') throw err
    throw pxdError('INVALID_ARGUMENT', `cannot use ${where('cert')} with ${where('key')}: ${(err as Error).message}`, err)
  }
  if (!issuedBy(leaf, chain.slice(1), cas)) {
    throw pxdError('INVALID_ARGUMENT', `the certificate in ${where('cert')} (issuer ${oneLine(leaf.issuer)}) is not signed by the CA in ${where('ca')}: peers would refuse it`)
  }
  const now = Date.now()
  if (now < Date.parse(leaf.validFrom) || now > Date.parse(leaf.validTo)) {
    throw pxdError('INVALID_ARGUMENT', `the certificate in ${where('cert')} is valid from ${leaf.validFrom} to ${leaf.validTo}, not now`)
  }
  const eku = leaf.keyUsage
  if (eku !== undefined && !(eku.includes(EKU_SERVER_AUTH) && eku.includes(EKU_CLIENT_AUTH))) {
    throw pxdError('INVALID_ARGUMENT', `the certificate in ${where('cert')} must allow both serverAuth and clientAuth (extendedKeyUsage): a node is server and client of its peers`)
  }
  const named = subjectCn(leaf.subject)
  if (named !== nodeId) {
    throw pxdError('INVALID_ARGUMENT', `the certificate in ${where('cert')} is issued to ${named === undefined ? 'no CN' : `CN=${named}`}, but this node is ${nodeId}: peers check that a node's certificate names it (subject CN = node id)`)
  }
  return { cert: m.cert, key: m.key, ca: m.ca, nodeId }
}

function pemCertificates(pem: Buffer, where: string): X509Certificate[] {
  const blocks = pem.toString('utf8').match(PEM_CERT_RE) ?? []
  if (blocks.length === 0) throw pxdError('INVALID_ARGUMENT', `${where} holds no PEM certificate`)
  try {
    return blocks.map((b) => new X509Certificate(b))
  } catch (err) {
    throw pxdError('INVALID_ARGUMENT', `${where} holds a certificate that does not parse: ${(err as Error).message}`, err)
  }
}

/** The leaf chains to one of the CAs, through the intermediates sent with it. */
function issuedBy(leaf: X509Certificate, intermediates: X509Certificate[], cas: X509Certificate[]): boolean {
  let cert = leaf
  for (let depth = 0; depth <= intermediates.length; depth++) {
    if (cas.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey))) return true
    const next = intermediates.find((i) => cert.checkIssued(i) && cert.verify(i.publicKey))
    if (next === undefined) return false
    cert = next
  }
  return false
}

const oneLine = (dn: string) => dn.split('\n').join(', ')

/** The subject CN of an X509Certificate's subject string ("CN=node-a\nO=..."). */
function subjectCn(subject: string): string | undefined {
  const cns = subject.split('\n').filter((l) => l.startsWith('CN=')).map((l) => l.slice(3))
  return cns.length === 1 ? cns[0] : undefined
}

/** The node id a peer's certificate names: its one subject CN. */
export function certificateNodeId(cert: PeerCertificate | undefined): string | undefined {
  const cn = cert?.subject?.CN as unknown
  return typeof cn === 'string' && cn.length > 0 ? cn : undefined
}

/** The https server of a TLS peer port: only clients with a certificate from the CA get past TLS. */
export function serverTlsOptions(t: PeerTls): ServerOptions {
  return { cert: t.cert, key: t.key, ca: t.ca, requestCert: true, rejectUnauthorized: true, minVersion: TLS_MIN_VERSION }
}

/** ws's own TLS dial, plus a note in `attempt` of whether the handshake completed. */
export function tlsDialNoting(attempt: TlsAttempt): (o: ConnectionOptions) => Socket {
  return (o) => {
    const opts = { ...o, path: undefined } as ConnectionOptions & { path?: undefined }
    if (!opts.servername && opts.servername !== '') opts.servername = isIP(opts.host ?? '') ? '' : opts.host
    const socket = tlsConnect(opts)
    socket.once('secureConnect', () => { attempt.secured = true })
    return socket
  }
}

/** What one connection attempt learned about TLS, for naming its failure. */
export interface TlsAttempt {
  /** The TLS handshake completed on this side. */
  secured: boolean
}

/**
 * Options for ws to dial `wss://` as this node, accepting only a server whose certificate
 * the CA signed for `peerNodeId`.
 */
export function clientTlsOptions(t: PeerTls, peerNodeId: string, attempt: TlsAttempt): ConnectionOptions & { createConnection: (o: ConnectionOptions) => Socket } {
  return {
    cert: t.cert,
    key: t.key,
    ca: t.ca,
    rejectUnauthorized: true,
    minVersion: TLS_MIN_VERSION,
    checkServerIdentity: (_host, cert) => {
      const named = certificateNodeId(cert)
      if (named === peerNodeId) return undefined
      return pxdError('PEER_MISMATCH', `its certificate is issued to ${named === undefined ? 'no CN' : `CN=${named}`}, not ${peerNodeId}`)
    },
    createConnection: tlsDialNoting(attempt),
  }
}

/**
 * Names the failure of a `wss://` dial before the link opened: the CA, the node's
 * identity, a refused client certificate, or a peer without TLS. Undefined when the
 * error is not about TLS (refused connection, timeout): the caller words those.
 */
export function clientTlsFailure(err: Error, peer: string, address: string, attempt: TlsAttempt): PxdError | undefined {
  const code = (err as { code?: unknown }).code
  const at = `node ${peer} at ${address}`
  // Our own identity check (checkServerIdentity above) failed the handshake.
  if (isPxdError(err, 'PEER_MISMATCH')) {
    return replicationError('PEER_MISMATCH', `TLS: ${at} is not that node: ${err.message}`, err)
  }
  if (typeof code !== 'string') return undefined
  if (VERIFY_CODE_RE.test(code)) {
    return replicationError('AUTH_FAILED', `TLS: the certificate of ${at} is not valid for this cluster (${code}: ${err.message}); is it signed by the CA of --peer-tls-ca?`, err)
  }
  if (NOT_TLS_CODES.has(code) || (code === 'EPROTO' && NOT_TLS_RE.test(err.message))) {
    return replicationError('AUTH_FAILED', `TLS: ${at} does not speak TLS (${NOT_TLS_RE.exec(err.message)?.[0] ?? code}): is it started without --peer-tls-cert/--peer-tls-key/--peer-tls-ca?`, err)
  }
  if (code === 'EPROTO') {
    return replicationError('AUTH_FAILED', `TLS: handshake with ${at} failed: ${err.message.split('\n')[0] ?? ''}`, err)
  }
  if (ALERT_RE.test(code)) {
    return replicationError('AUTH_FAILED', `TLS: ${at} refused this node's certificate (${code}); see its log`, err)
  }
  if (code === 'ECONNRESET' || code === 'EPIPE') {
    return attempt.secured
      ? replicationError('AUTH_FAILED', `TLS: ${at} closed the connection right after the TLS handshake: it does not accept this node's certificate (signed by another CA?); see its log`, err)
      : replicationError('AUTH_FAILED', `TLS: ${at} closed the connection during the TLS handshake: it does not speak TLS (started without --peer-tls-*?) or refused this node's certificate; see its log`, err)
  }
  return undefined
}

/** Why the TLS server refused a connection, for its log. */
export function serverTlsFailure(err: Error, socket: TLSSocket): { reason: string; authorizationError?: string } {
  const code = (err as { code?: unknown }).code
  const authError = (socket as { authorizationError?: unknown }).authorizationError
  if (authError !== undefined && authError !== null) {
    const why = String(authError instanceof Error ? (authError as { code?: string }).code ?? authError.message : authError)
    return { reason: `its client certificate is not valid for this cluster (${why}): not signed by the CA of --peer-tls-ca?`, authorizationError: why }
  }
  if (code === 'ERR_SSL_HTTP_REQUEST') return { reason: 'a plain (non-TLS) connection reached the TLS peer port: is that node started without --peer-tls-*?' }
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return { reason: 'the client presented no certificate' }
  return { reason: `TLS handshake failed: ${typeof code === 'string' ? `${code}: ` : ''}${err.message.split('\n')[0] ?? ''}` }
}

/**
 * Remote addresses of a server's connections, noted when the TCP connection arrives: Node
 * destroys a TLS socket with a bad client certificate before the server hears of it, and a
 * destroyed socket no longer knows its peer.
 */
export class RemoteAddresses {
  readonly #byRaw = new WeakMap<Socket, string>()

  /** The server's 'connection' listener (the raw TCP socket). */
  note(raw: Socket): void {
    this.#byRaw.set(raw, `${raw.remoteAddress ?? '?'}:${raw.remotePort ?? '?'}`)
  }

  of(socket: Socket): string {
    if (socket.remoteAddress !== undefined) return `${socket.remoteAddress}:${socket.remotePort ?? '?'}`
    // A TLS socket wraps the raw one (Node keeps it as `_parent`).
    const raw = (socket as Socket & { _parent?: Socket })._parent
    return this.#byRaw.get(socket) ?? (raw ? this.#byRaw.get(raw) : undefined) ?? '?:?'
  }
}

/**
 * A socket error of a link, named as precisely as the phase allows: TLS failures only happen
 * before the connection opened; a reset then from a plain link often means the server wants TLS.
 */
export function linkFailure(err: Error, peer: string, address: string, opening: boolean, tls: boolean, attempt: TlsAttempt): PxdError {
  if (opening && tls) {
    const named = clientTlsFailure(err, peer, address, attempt)
    if (named) return named
  }
  const hint = opening && !tls && (err as { code?: unknown }).code === 'ECONNRESET'
    ? ' (if that node uses --peer-tls-*, this node needs them too)'
    : ''
  return replicationError('PEER_UNAVAILABLE', `link to node ${peer} at ${address}: ${err.message}${hint}`, err)
}
