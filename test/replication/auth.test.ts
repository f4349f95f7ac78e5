import test from 'ava'
import { pack } from 'msgpackr'
import { computeProof, newNonce, verifyProof, type HandshakeParties } from '../../src/replication/auth'
import { isReplicationError } from '../../src/replication/errors'
import { PROTOCOL_VERSION } from '../../src/replication/frames'
import {
  captureLog, CLUSTER, handlerOf, makeLinks, OTHER_SECRET, RawClient, SECRET, startServer, until,
} from './helpers'

const echo = () => handlerOf(async () => Buffer.from('ok'))
const flush = { t: 'flush', vol: 'v1', epoch: 1 } as const

test('proofs bind direction, both nonces, both node ids and the cluster', (t) => {
  const p: HandshakeParties = { clusterId: 'c', clientNodeId: 'a', serverNodeId: 'b', clientNonce: newNonce(), serverNonce: newNonce() }
  const proof = computeProof(SECRET, 'client', p)
  t.true(verifyProof(SECRET, 'client', p, proof))
  t.false(verifyProof(SECRET, 'server', p, proof))
  t.false(verifyProof(OTHER_SECRET, 'client', p, proof))
  t.false(verifyProof(SECRET, 'client', { ...p, clientNonce: newNonce() }, proof))
  t.false(verifyProof(SECRET, 'client', { ...p, serverNonce: newNonce() }, proof))
  t.false(verifyProof(SECRET, 'client', { ...p, clientNodeId: 'x' }, proof))
  t.false(verifyProof(SECRET, 'client', { ...p, serverNodeId: 'x' }, proof))
  t.false(verifyProof(SECRET, 'client', { ...p, clusterId: 'x' }, proof))
  // Length-prefixed fields: moving a character from one id to the next changes the proof.
  t.false(verifyProof(SECRET, 'client', { ...p, clientNodeId: 'ab', serverNodeId: '' }, computeProof(SECRET, 'client', { ...p, clientNodeId: 'a', serverNodeId: 'b' })))
  t.false(verifyProof(SECRET, 'client', p, proof.subarray(0, 16)))
})

test('with the right secret requests flow and the handler learns the peer', async (t) => {
  let peer = ''
  const handler = handlerOf(async (p) => { peer = p; return Buffer.from('hi') })
  const { server, address } = await startServer(handler)
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const data = await link.request(flush)
  t.is(data?.toString(), 'hi')
  t.is(peer, 'client-1')
  t.is(link.state, 'ready')
})

test('a client with the wrong secret is refused and the handler never runs', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler)
  const links = makeLinks({ secret: OTHER_SECRET })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  // The client checks the server's proof first: with different secrets it refuses the server.
  const err = await t.throwsAsync(link.request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.is(handler.calls, 0)
  t.is(link.state, 'down')
})

test('a client that fails the proof is refused by the server, with a logged warning', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log })
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.handshake('raw-client', OTHER_SECRET)
  const err = await raw.next('error')
  t.like(err, { t: 'error', code: 'AUTH_FAILED' })
  await raw.closed
  t.is(handler.calls, 0)
  const warn = records.find((r) => r['code'] === 'AUTH_FAILED')
  t.truthy(warn)
  t.is(warn?.['level'], 40)
  t.regex(String(warn?.['remote']), /^127\.0\.0\.1:\d+$/)
})

test('a server with another secret is refused by the client before any request is sent', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, { secret: OTHER_SECRET })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request({ t: 'write', vol: 'v', epoch: 1, seq: 1, offset: 0, data: Buffer.from('secret data') }))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.is(handler.calls, 0)
})

test('a server that answers as another node is refused (PEER_MISMATCH)', async (t) => {
  const { server, address } = await startServer(echo(), { nodeId: 'server-2' })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'PEER_MISMATCH'), String(err))
})

test('a server of another cluster refuses the client', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, { clusterId: 'cluster-b' })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.is(handler.calls, 0)
})

test('a write without handshake gets an error frame and a close; the handler never runs', async (t) => {
  const handler = echo()
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log })
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.opened()
  raw.send({ t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, data: Buffer.alloc(512) })
  t.like(await raw.next('error'), { code: 'AUTH_REQUIRED' })
  await raw.closed
  t.is(handler.calls, 0)
  t.truthy(records.find((r) => r['code'] === 'AUTH_REQUIRED' && r['level'] === 40 && typeof r['remote'] === 'string'))
})

test('a request after hello but before auth is refused', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler)
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.opened()
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'x', clusterId: CLUSTER, nonce: newNonce() })
  await raw.next('challenge')
  raw.send({ t: 'flush', id: 1, vol: 'v', epoch: 1 })
  t.like(await raw.next('error'), { code: 'AUTH_REQUIRED' })
  await raw.closed
  t.is(handler.calls, 0)
})

test('a large message before the handshake is refused without decoding it', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler)
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.opened()
  raw.send(Buffer.alloc(200_000, 0xc1))
  t.like(await raw.next('error'), { code: 'AUTH_REQUIRED' })
  await raw.closed
})

test('a hello of another protocol version is refused as such', async (t) => {
  const { server, address } = await startServer(echo())
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.opened()
  raw.send(Buffer.from(pack({ t: 'hello', v: 2, nodeId: 'x', clusterId: CLUSTER, nonce: newNonce() })))
  t.like(await raw.next('error'), { code: 'UNSUPPORTED_VERSION' })
  await raw.closed
})

test('an auth proof replayed from another session fails', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler)
  t.teardown(() => server.close())
  const first = new RawClient(address)
  const { parties, proof } = await first.handshake()
  await first.next('ready')
  first.close()
  // Same node id and the same client nonce, but the server picks a fresh nonce.
  const second = new RawClient(address)
  await second.opened()
  second.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId: parties.clientNodeId, clusterId: CLUSTER, nonce: parties.clientNonce })
  await second.next('challenge')
  second.send({ t: 'auth', proof })
  t.like(await second.next('error'), { code: 'AUTH_FAILED' })
  await second.closed
  t.is(handler.calls, 0)
})

test("the server's own proof reflected back as the client's fails", async (t) => {
  const { server, address } = await startServer(echo())
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.opened()
  // Claim the server's node id, so only the direction label tells the two proofs apart.
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'server-1', clusterId: CLUSTER, nonce: newNonce() })
  const ch = await raw.next('challenge')
  if (ch.t !== 'challenge') return t.fail()
  raw.send({ t: 'auth', proof: ch.proof })
  t.like(await raw.next('error'), { code: 'AUTH_FAILED' })
})

test('a handshake that does not complete in time closes the connection', async (t) => {
  const { server, address } = await startServer(echo(), { handshakeTimeoutMs: 200 })
  t.teardown(() => server.close())
  // The server's timer starts when it accepts, before the client sees `open`: time from before the connect.
  const started = Date.now()
  const raw = new RawClient(address)
  await raw.opened()
  t.like(await raw.next('error'), { code: 'HANDSHAKE_TIMEOUT' })
  await raw.closed
  t.true(Date.now() - started >= 150)
  await until(() => server.linkCount === 0)
  t.pass()
})

test('connections beyond the handshake cap are refused; authenticated links do not count', async (t) => {
  const { server, address } = await startServer(echo(), { maxHandshakes: 2 })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  await link.request(flush)
  const idle = [new RawClient(address), new RawClient(address)]
  await Promise.all(idle.map((c) => c.opened()))
  await until(() => server.linkCount === 3)
  const third = new RawClient(address)
  const { code } = await third.closed
  t.is(code, 1006)
  for (const c of idle) c.close()
  t.is((await link.request(flush))?.toString(), 'ok')
})
