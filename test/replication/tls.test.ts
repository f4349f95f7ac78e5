import test from 'ava'
import { chmodSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { isPxdError } from '../../src/errors'
import { newNonce } from '../../src/replication/auth'
import { isReplicationError } from '../../src/replication/errors'
import { PROTOCOL_VERSION } from '../../src/replication/frames'
import { PeerServer } from '../../src/replication/peer-server'
import { checkPeerTls, loadPeerTls, type PeerTls } from '../../src/replication/tls'
import { makeTempDir, removeDir } from '../helpers/daemon'
import { issueCert, makeCa, type NodeCert, type TestCa } from '../helpers/tls'
import { captureLog, CLUSTER, handlerOf, makeLinks, RawClient, silentLog, startServer, until } from './helpers'

let dir = ''
let ca: TestCa
let otherCa: TestCa
const certs: Record<string, NodeCert> = {}

const material = (c: NodeCert) => ({ cert: readFileSync(c.certFile), key: readFileSync(c.keyFile), ca: readFileSync(c.caFile) })
const tlsOf = (c: NodeCert, nodeId: string): PeerTls => checkPeerTls(material(c), nodeId)
/** A certificate from another CA, for a node that trusts the cluster CA. */
const foreign = (c: NodeCert): PeerTls => {
  const m = material(c)
  return { ...m, ca: readFileSync(ca.certFile), nodeId: 'client-1' }
}
const flush = { t: 'flush', vol: 'v1', epoch: 1 } as const
const echo = () => handlerOf(async () => Buffer.from('ok'))
/** Skips the node-id check of a raw client (ws types the callback with an older signature: undefined means accept). */
const anyName = (() => undefined) as unknown as () => boolean
const codeOf = (err: unknown) => (err as { code?: string } | undefined)?.code

test.before(() => {
  dir = makeTempDir('pxd-tls-unit-')
  ca = makeCa(dir)
  otherCa = makeCa(dir, 'other-ca')
  certs['server-1'] = issueCert(ca, 'server-1')
  certs['server-2'] = issueCert(ca, 'server-2')
  certs['client-1'] = issueCert(ca, 'client-1')
  certs['foreign-client-1'] = issueCert(otherCa, 'client-1', {}, 'foreign-')
  certs['foreign-server-1'] = issueCert(otherCa, 'server-1', {}, 'foreign-')
  certs['far-server-1'] = issueCert(ca, 'server-1', { san: ['IP:10.9.9.9', 'DNS:elsewhere.example'] }, 'far-')
  certs['server-only'] = issueCert(ca, 'client-1', { eku: 'serverAuth' }, 'server-only-')
})

test.after.always(() => removeDir(dir))

const server1 = () => ({ tls: tlsOf(certs['server-1']!, 'server-1') })
const client1 = () => ({ tls: tlsOf(certs['client-1']!, 'client-1') })

test('loadPeerTls: none of the files means no TLS; some of them is an error naming the missing ones', async (t) => {
  t.is(await loadPeerTls({}, 'n', silentLog()), undefined)
  t.is(await loadPeerTls({ cert: undefined, key: '', ca: undefined }, 'n', silentLog()), undefined)
  const c = certs['client-1']!
  const err = await t.throwsAsync(loadPeerTls({ cert: c.certFile }, 'client-1', silentLog()))
  t.true(isPxdError(err, 'INVALID_ARGUMENT'))
  t.regex(err!.message, /all three.*missing --peer-tls-key \(PXD_PEER_TLS_KEY\) and --peer-tls-ca \(PXD_PEER_TLS_CA\)/)
  const unreadable = await t.throwsAsync(loadPeerTls({ cert: c.certFile, key: path.join(dir, 'nope.key'), ca: c.caFile }, 'client-1', silentLog()))
  t.true(isPxdError(unreadable, 'INVALID_ARGUMENT'))
  t.regex(unreadable!.message, /cannot read --peer-tls-key .*nope\.key/)
})

test('loadPeerTls: good files give the material and the node id; a world-readable key is a warning', async (t) => {
  const c = certs['client-1']!
  chmodSync(c.keyFile, 0o644)
  const { log, records } = captureLog()
  const tls = await loadPeerTls({ cert: c.certFile, key: c.keyFile, ca: c.caFile }, 'client-1', log)
  t.is(tls?.nodeId, 'client-1')
  t.deepEqual(tls?.cert, readFileSync(c.certFile))
  t.truthy(records.find((r) => r['level'] === 40 && /world-readable/.test(String(r['msg']))))
  chmodSync(c.keyFile, 0o600)
})

test('checkPeerTls refuses at start what peers would refuse later', (t) => {
  const refuse = (m: { cert: Buffer; key: Buffer; ca: Buffer }, nodeId: string, re: RegExp) => {
    const err = t.throws(() => checkPeerTls(m, nodeId))
    t.true(isPxdError(err, 'INVALID_ARGUMENT'), String(err))
    t.regex(err!.message, re)
  }
  const c = material(certs['client-1']!)
  refuse({ ...c, key: readFileSync(certs['server-1']!.keyFile) }, 'client-1', /key .* does not belong to the certificate/)
  refuse({ ...material(certs['foreign-client-1']!), ca: c.ca }, 'client-1', /not signed by the CA/)
  refuse(c, 'client-2', /issued to CN=client-1, but this node is client-2/)
  refuse(material(certs['server-only']!), 'client-1', /serverAuth and clientAuth/)
  refuse({ ...c, cert: Buffer.from('not a certificate') }, 'client-1', /no PEM certificate/)
  refuse({ ...c, ca: Buffer.from('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n') }, 'client-1', /does not parse/)
  t.is(checkPeerTls(c, 'client-1').nodeId, 'client-1')
})

test('server and links refuse material issued to another node', (t) => {
  const err = t.throws(() => new PeerServer({ nodeId: 'server-2', clusterId: 'c', secret: Buffer.alloc(32), handler: echo(), log: silentLog(), ...server1() }))
  t.regex(err!.message, /issued to server-1, not to this node \(server-2\)/)
  t.throws(() => makeLinks({ nodeId: 'client-2', ...client1() }), { message: /issued to client-1/ })
})

test('with TLS on both ends requests flow, inside the secret handshake', async (t) => {
  let peer = ''
  const handler = handlerOf(async (p) => { peer = p; return Buffer.from('hi') })
  const { server, address } = await startServer(handler, server1())
  const links = makeLinks(client1())
  t.teardown(() => Promise.all([links.close(), server.close()]))
  t.true(server.tls)
  const link = links.link('server-1', address)
  t.is((await link.request(flush))?.toString(), 'hi')
  t.is(peer, 'client-1')
  t.is(link.state, 'ready')
})

test('the address is not checked against the SANs: a certificate for the node id is enough', async (t) => {
  const { server, address } = await startServer(echo(), { tls: tlsOf(certs['far-server-1']!, 'server-1') })
  const links = makeLinks(client1())
  t.teardown(() => Promise.all([links.close(), server.close()]))
  t.is((await links.link('server-1', address).request(flush))?.toString(), 'ok')
})

test('TLS secrets still matter: the right certificate with the wrong cluster secret is refused', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, server1())
  const links = makeLinks({ ...client1(), secret: Buffer.alloc(32, 1) })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.regex(err!.message, /did not prove it holds the cluster secret/)
  t.is(handler.calls, 0)
})

test('a TLS link to a plain server fails, named as such on both ends', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log })
  const links = makeLinks(client1())
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.regex(err!.message, /does not speak TLS.*--peer-tls/)
  t.is(handler.calls, 0)
  await until(() => records.some((r) => /a TLS client reached this plain peer port/.test(String(r['reason']))))
  t.pass()
})

test('a plain link to a TLS server fails; the server logs a plain connection on its TLS port', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log, ...server1() })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.is(codeOf(err), 'PEER_UNAVAILABLE')
  t.regex(err!.message, /if that node uses --peer-tls-\*, this node needs them too/)
  t.is(handler.calls, 0)
  await until(() => records.some((r) => r['level'] === 40 && /plain \(non-TLS\) connection/.test(String(r['reason']))))
  t.is(server.linkCount, 0)
})

test('a client certificate from another CA is refused by the server, which logs why', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log, ...server1() })
  const links = makeLinks({ tls: foreign(certs['foreign-client-1']!) })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.regex(err!.message, /does not accept this node's certificate|refused this node's certificate/)
  t.is(handler.calls, 0)
  await until(() => records.some((r) => r['code'] === 'AUTH_FAILED' && typeof r['authorizationError'] === 'string'))
  const rec = records.find((r) => typeof r['authorizationError'] === 'string')!
  t.regex(String(rec['reason']), /client certificate is not valid for this cluster/)
  t.regex(String(rec['remote']), /^127\.0\.0\.1:\d+$/)
})

test('a server certificate from another CA is refused by the link', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, { tls: { ...material(certs['foreign-server-1']!), nodeId: 'server-1' } })
  const links = makeLinks(client1())
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.regex(err!.message, /certificate of node server-1 at .* is not valid for this cluster/)
  t.is(handler.calls, 0)
})

test('a server whose certificate names another node is refused (PEER_MISMATCH) before any frame', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, { nodeId: 'server-2', tls: tlsOf(certs['server-2']!, 'server-2') })
  const links = makeLinks(client1())
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'PEER_MISMATCH'), String(err))
  t.regex(err!.message, /issued to CN=server-2, not server-1/)
  t.is(handler.calls, 0)
})

test('a client whose hello names another node than its certificate is refused', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log, ...server1() })
  t.teardown(() => server.close())
  const m = material(certs['client-1']!)
  const raw = new RawClient(address, { ...m, checkServerIdentity: anyName })
  await raw.opened()
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'client-2', clusterId: CLUSTER, nonce: newNonce() })
  t.like(await raw.next('error'), { t: 'error', code: 'AUTH_FAILED' })
  await raw.closed
  t.is(handler.calls, 0)
  t.truthy(records.find((r) => /node client-2 presented the TLS certificate of node client-1/.test(String(r['reason']))))
})

test('a TLS client without a certificate is refused', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log, ...server1() })
  t.teardown(() => server.close())
  const raw = new RawClient(address, { ca: readFileSync(ca.certFile), checkServerIdentity: anyName })
  await t.throwsAsync(raw.opened())
  t.is(handler.calls, 0)
  await until(() => records.some((r) => /presented no certificate/.test(String(r['reason']))))
  t.is(server.linkCount, 0)
})

test('garbage on a plain peer port is answered 400 and does not stop the server', async (t) => {
  const net = await import('node:net')
  const handler = echo()
  const { server, address, port } = await startServer(handler)
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const reply = await new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])))
    let got = ''
    s.on('data', (d) => { got += d.toString('latin1') })
    s.on('close', () => resolve(got))
    s.on('error', () => undefined)
  })
  t.regex(reply, /^HTTP\/1\.1 400/)
  t.is((await links.link('server-1', address).request(flush))?.toString(), 'ok')
})
