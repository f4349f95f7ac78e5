/**
 * Certificates for tests, made with the openssl CLI in a temp dir (no key is committed):
 * a CA, and per-node certificates it signs, as an operator would issue them for
 * --peer-tls-cert/--peer-tls-key/--peer-tls-ca. Keys are P-256 (fast to make).
 */
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import WebSocket from 'ws'
import { PEER_PATH } from '../../src/replication'

export interface TestCa {
  dir: string
  name: string
  certFile: string
  keyFile: string
}

export interface NodeCert {
  certFile: string
  keyFile: string
  caFile: string
}

export interface CertOptions {
  /** Subject CN: pxd takes it as the node id (default: the node id). */
  cn?: string
  /** subjectAltName entries (default IP:127.0.0.1 and DNS:<node id>). */
  san?: string[]
  /** extendedKeyUsage (default serverAuth,clientAuth: a node is both a server and a client). */
  eku?: string
  days?: number
}

const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

export function makeCa(dir: string, name = 'pxd-test-ca'): TestCa {
  const certFile = path.join(dir, `${name}.crt`)
  const keyFile = path.join(dir, `${name}.key`)
  openssl(['req', '-x509', ...EC_KEY, '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir)
  return { dir, name, certFile, keyFile }
}

/** A certificate for `nodeId` signed by `ca`, in `<ca dir>/<prefix><nodeId>.{crt,key}`. */
export function issueCert(ca: TestCa, nodeId: string, o: CertOptions = {}, prefix = ''): NodeCert {
  const base = path.join(ca.dir, `${prefix}${nodeId}`)
  const ext = `${base}.ext`
  const lines = [
    'basicConstraints=CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    `extendedKeyUsage=${o.eku ?? 'serverAuth,clientAuth'}`,
  ]
  const san = o.san ?? ['IP:127.0.0.1', `DNS:${nodeId}`]
  if (san.length > 0) lines.push(`subjectAltName=${san.join(',')}`)
  writeFileSync(ext, lines.join('\n') + '\n')
  openssl(['req', '-new', ...EC_KEY, '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${o.cn ?? nodeId}`], ca.dir)
  openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-CAcreateserial',
    '-out', `${base}.crt`, '-days', String(o.days ?? 2), '-extfile', ext], ca.dir)
  return { certFile: `${base}.crt`, keyFile: `${base}.key`, caFile: ca.certFile }
}

/** The pxd flags for a node's certificate. */
export function tlsArgs(c: NodeCert): string[] {
  return ['--peer-tls-cert', c.certFile, '--peer-tls-key', c.keyFile, '--peer-tls-ca', c.caFile]
}

/**
 * A plain ws:// dial of a peer port: the error it ends in, or an Error "opened" when the
 * WebSocket opened (which a TLS peer port must never let happen).
 */
export function plainDialError(port: number): Promise<Error> {
  return new Promise<Error>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${PEER_PATH}`)
    ws.on('open', () => { ws.terminate(); resolve(new Error('opened')) })
    ws.on('error', (e) => resolve(e))
  })
}
