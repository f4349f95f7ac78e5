/**
 * How pxd proves itself to etcd and checks etcd: TLS (a CA to trust, and a client
 * certificate with its key when etcd runs with --client-cert-auth) and etcd's own
 * user/password auth. The settings are file paths (--kvdb-ca, --kvdb-cert, --kvdb-key,
 * --kvdb-password-file) and a user name; the password never comes on the command line.
 *
 * Everything is read and checked here, before any connection: a certificate without its
 * key, a user without a password file (or the reverse), a file that cannot be read, a
 * password file others can read, or an empty one is an INVALID_ARGUMENT naming the flag,
 * so a bad setting stops pxd at start and changes nothing. What comes out is the etcd3
 * library's own `credentials` and `auth` options; any TLS setting turns every endpoint
 * into https.
 *
 * The rest of the client's options live here too: the call deadline, reconnect backoff,
 * keepalive pings and the retry/circuit-breaker policy that etcd.ts's design note explains.
 */
import { readFileSync, statSync } from 'node:fs'
import { circuitBreaker, ConsecutiveBreaker, handleWhen, isBrokenCircuitError, retry } from 'cockatiel'
import { isRecoverableError, type IOptions } from 'etcd3'
import { messageOf, pxdError } from '../errors'

export const CALL_DEADLINE_MS = 5_000
export const BREAKER_FAILURES = 3
export const BREAKER_OPEN_MS = 1_000
const RECONNECT_BACKOFF_MS = 500
const MAX_RECONNECT_BACKOFF_MS = 1_000
/**
 * A connection whose packets vanish (a partition, not a refusal) looks alive to TCP for
 * many minutes, and after the heal its retransmissions back off for tens of seconds: pings
 * find it dead and let gRPC dial anew. etcd refuses pings more often than every 5 s.
 */
const KEEPALIVE_MS = 10_000
const KEEPALIVE_TIMEOUT_MS = 2_000

/** gRPC's words for "there was no connection to send the call on": nothing reached etcd. */
const NOT_SENT = ['No connection established', 'ECONNREFUSED']

export function notSent(err: unknown): boolean {
  if (isBrokenCircuitError(err)) return true
  const message = messageOf(err)
  return NOT_SENT.some((words) => message.includes(words))
}

/** What to check, when a TLS failure's words say which side's certificate failed. */
export function tlsHint(message: string): string {
  if (/alert bad certificate|alert certificate required|alert unknown ca|alert handshake failure/i.test(message)) {
    return " (etcd refused pxd's client certificate, or got none: check --kvdb-cert and --kvdb-key)"
  }
  if (/unable to verify|self[- ]signed|certificate has expired|Hostname\/IP does not match|unable to get local issuer/i.test(message)) {
    return " (pxd could not verify etcd's certificate: check --kvdb-ca and that the certificate names this endpoint)"
  }
  if (/wrong version number|packet length too long|http\/1/i.test(message)) return ' (one side speaks TLS and the other not: https:// or --kvdb-ca against a plain etcd, or the reverse)'
  return ''
}

/** etcd3's options for these hosts: bounded calls, fast reconnects, and TLS/auth if set. */
export function etcdClientOptions(hosts: string[], security?: EtcdSecurity): IOptions {
  return {
    hosts,
    ...(security?.credentials ? { credentials: security.credentials } : {}),
    // The token exchange gets the same deadline as every call, so a wrong password cannot hang.
    ...(security?.auth ? { auth: { ...security.auth, callOptions: () => ({ deadline: Date.now() + CALL_DEADLINE_MS }) } } : {}),
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + CALL_DEADLINE_MS }),
    dialTimeout: CALL_DEADLINE_MS,
    grpcOptions: {
      'grpc.initial_reconnect_backoff_ms': RECONNECT_BACKOFF_MS,
      'grpc.max_reconnect_backoff_ms': MAX_RECONNECT_BACKOFF_MS,
      'grpc.keepalive_time_ms': KEEPALIVE_MS,
      'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.http2.max_pings_without_data': 0,
    },
    faultHandling: {
      global: retry(handleWhen((err) => notSent(err)), { maxAttempts: hosts.length - 1 }),
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: BREAKER_OPEN_MS, breaker: new ConsecutiveBreaker(BREAKER_FAILURES) }),
    },
  }
}

/** The operator's settings: file paths and the etcd user name. */
export interface KvdbSecuritySettings {
  ca?: string | undefined
  cert?: string | undefined
  key?: string | undefined
  username?: string | undefined
  passwordFile?: string | undefined
}

/** What EtcdKvdb passes to etcd3 (and what it says in logs: no secret). */
export interface EtcdSecurity {
  credentials?: NonNullable<IOptions['credentials']>
  auth?: { username: string; password: string }
  /** True when the connection runs TLS (so the endpoints are https). */
  tls: boolean
}

export function loadEtcdSecurity(s: KvdbSecuritySettings): EtcdSecurity {
  const given = (v: string | undefined) => v !== undefined && v !== ''
  if (given(s.cert) !== given(s.key)) {
    throw pxdError('INVALID_ARGUMENT', '--kvdb-cert and --kvdb-key go together: a client certificate needs its private key, and the key its certificate')
  }
  if (given(s.username) !== given(s.passwordFile)) {
    throw pxdError('INVALID_ARGUMENT', '--kvdb-username and --kvdb-password-file go together: etcd auth needs both (the password is read from the file, never from the command line)')
  }
  const out: EtcdSecurity = { tls: false }
  if (given(s.ca) || given(s.cert)) {
    const ca = given(s.ca) ? readPem('--kvdb-ca', s.ca!) : undefined
    const cert = given(s.cert) ? readPem('--kvdb-cert', s.cert!) : undefined
    const key = given(s.key) ? readPem('--kvdb-key', s.key!) : undefined
    // Without a CA gRPC trusts the system's roots (etcd3 types rootCertificate as required).
    out.credentials = {
      rootCertificate: ca as Buffer,
      ...(key ? { privateKey: key } : {}),
      ...(cert ? { certChain: cert } : {}),
    }
    out.tls = true
  }
  if (given(s.username)) {
    if (!/^[^\s:]{1,128}$/.test(s.username!)) {
      throw pxdError('INVALID_ARGUMENT', `--kvdb-username ${JSON.stringify(s.username)}: 1-128 characters, no spaces or ':'`)
    }
    out.auth = { username: s.username!, password: readPassword(s.passwordFile!) }
  }
  return out
}

function readFile(flag: string, file: string): Buffer {
  try {
    return readFileSync(file)
  } catch (err) {
    throw pxdError('INVALID_ARGUMENT', `${flag} ${file}: cannot read it: ${messageOf(err)}`, err)
  }
}

function readPem(flag: string, file: string): Buffer {
  const data = readFile(flag, file)
  if (!data.toString('latin1').includes('-----BEGIN ')) {
    throw pxdError('INVALID_ARGUMENT', `${flag} ${file}: not a PEM file (no "-----BEGIN" line)`)
  }
  return data
}

function readPassword(file: string): string {
  const data = readFile('--kvdb-password-file', file)
  const mode = statSync(file).mode
  if ((mode & 0o004) !== 0) {
    throw pxdError('INVALID_ARGUMENT', `--kvdb-password-file ${file}: every user can read it (mode ${(mode & 0o777).toString(8)}): chmod o-r (0600 is usual)`)
  }
  // One line; the newline an editor or `echo` adds is not part of the password.
  const password = data.toString('utf8').replace(/\r?\n$/, '')
  if (password === '') throw pxdError('INVALID_ARGUMENT', `--kvdb-password-file ${file} is empty`)
  return password
}
