/**
 * Peer protocol negotiation (protocol.ts): both ends send their release and protocol range,
 * settle on the highest common version, refuse a peer with none in common (both releases
 * named, logged rate-limited, the dialer's link failing with the reason), and still link
 * with a node of a release that sends and accepts only the older handshake.
 */
import test, { type ExecutionContext } from 'ava'
import { WebSocketServer, type WebSocket } from 'ws'
import { computeProof, newNonce, verifyProof, type HandshakeParties } from '../../src/replication/auth'
import { isReplicationError } from '../../src/replication/errors'
import { decodeFrame, encodeFrame, PROTOCOL_VERSION, validateFrame, type ChallengeFrame } from '../../src/replication/frames'
import { describeOffer, negotiate, offerOf, ownOffer, PEER_PROTOCOLS } from '../../src/replication/protocol'
import { PEER_PATH } from '../../src/replication/peer-server'
import { captureLog, CLUSTER, handlerOf, makeLinks, RawClient, SECRET, sleep, startServer, until } from './helpers'

const echo = () => handlerOf(async () => Buffer.from('ok'))
const flush = { t: 'flush', vol: 'v1', epoch: 1 } as const
const nonce = newNonce()

test('the highest version both ranges hold is chosen; disjoint ranges have none', (t) => {
  t.is(negotiate({ min: 1, max: 3 }, { min: 2, max: 5 }), 3)
  t.is(negotiate({ min: 2, max: 5 }, { min: 1, max: 3 }), 3)
  t.is(negotiate({ min: 1, max: 1 }, { min: 1, max: 1 }), 1)
  t.is(negotiate({ min: 4, max: 9 }, { min: 1, max: 4 }), 4)
  t.is(negotiate({ min: 1, max: 2 }, { min: 3, max: 4 }), undefined)
  t.is(negotiate({ min: 3, max: 4 }, { min: 1, max: 2 }), undefined)
  t.true(PEER_PROTOCOLS.min <= PEER_PROTOCOLS.max)
})

test('a configured range or version that makes no sense is refused', (t) => {
  for (const protocols of [{ min: 0, max: 1 }, { min: 2, max: 1 }, { min: 1.5, max: 2 }]) {
    t.like(t.throws(() => ownOffer('1.0.0', protocols)), { code: 'INVALID_ARGUMENT' })
  }
  t.like(t.throws(() => ownOffer('1.0 beta', undefined)), { code: 'INVALID_ARGUMENT' })
  t.deepEqual(ownOffer('1.0.0', undefined).protocols, PEER_PROTOCOLS)
})

test('a hello without the range is of an older release: protocol 1, version unknown; half a range is refused', (t) => {
  const legacy = offerOf({ t: 'hello', v: 1, nodeId: 'a', clusterId: CLUSTER, nonce })
  t.deepEqual(legacy, { version: undefined, protocols: { min: 1, max: 1 }, legacy: true })
  t.is(describeOffer(legacy), 'pxd version unknown, peer protocol 1 (a release before protocol negotiation)')
  t.like(offerOf({ t: 'hello', v: 1, nodeId: 'a', clusterId: CLUSTER, nonce, version: '2.0.0', protoMin: 1, protoMax: 3 }),
    { version: '2.0.0', protocols: { min: 1, max: 3 }, legacy: false })
  t.like(t.throws(() => offerOf({ t: 'hello', v: 1, nodeId: 'a', clusterId: CLUSTER, nonce, protoMin: 1 })), { code: 'BAD_FRAME' })
})

test('the offer fields are optional in frames and checked when present', (t) => {
  const hello = { t: 'hello', v: PROTOCOL_VERSION, nodeId: 'a', clusterId: CLUSTER, nonce }
  t.notThrows(() => validateFrame({ ...hello }))
  t.notThrows(() => validateFrame({ ...hello, version: '0.2.0-rc.1', protoMin: 1, protoMax: 2 }))
  for (const bad of [{ version: '' }, { version: 'a b' }, { version: 'x'.repeat(65) }, { version: 7 }, { protoMin: 0 }, { protoMax: 1.5 }, { protoMin: '1' }]) {
    t.like(t.throws(() => validateFrame({ ...hello, ...bad })), { code: 'BAD_FRAME' }, JSON.stringify(bad))
  }
  const challenge = { t: 'challenge', v: PROTOCOL_VERSION, nodeId: 'a', nonce, proof: nonce }
  t.notThrows(() => validateFrame({ ...challenge, version: '1', protoMin: 1, protoMax: 1, proto: 1 }))
  t.like(t.throws(() => validateFrame({ ...challenge, proto: 0 })), { code: 'BAD_FRAME' })
})

test('the proofs cover the terms the two ends settled on', (t) => {
  const p: HandshakeParties = { clusterId: 'c', clientNodeId: 'a', serverNodeId: 'b', clientNonce: newNonce(), serverNonce: newNonce(), terms: 'client=1-2/;server=1-2/;proto=2' }
  const proof = computeProof(SECRET, 'server', p)
  t.true(verifyProof(SECRET, 'server', p, proof))
  t.false(verifyProof(SECRET, 'server', { ...p, terms: 'client=1-1/;server=1-2/;proto=1' }, proof))
  const { terms: _, ...without } = p
  t.false(verifyProof(SECRET, 'server', without, proof))
})

test('two releases with overlapping ranges settle on the highest common protocol and learn each other\'s version', async (t) => {
  const { log, records } = captureLog()
  const { server, address } = await startServer(echo(), { log, version: '0.3.0', protocols: { min: 2, max: 5 } })
  const links = makeLinks({ version: '0.2.0', protocols: { min: 1, max: 3 } })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  t.is((await link.request(flush))?.toString(), 'ok')
  t.is(link.protocol, 3)
  t.is(link.peerVersion, '0.3.0')
  await until(() => records.some((r) => r.msg === 'peer link up'))
  t.like(records.find((r) => r.msg === 'peer link up'), { protocol: 3, peerVersion: '0.2.0' })
})

test('a peer with no protocol in common is refused at the handshake: both releases named, the dialer told, the log rate-limited', async (t) => {
  const { log, records } = captureLog()
  const handler = echo()
  const { server, address } = await startServer(handler, { log, version: '0.3.0', protocols: { min: 3, max: 4 }, refusalLogIntervalMs: 300 })
  const links = makeLinks({ version: '0.1.0', protocols: { min: 1, max: 1 }, retryAfterMs: 1 })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  for (let i = 0; i < 3; i++) {
    const err = await t.throwsAsync(link.request(flush))
    t.true(isReplicationError(err, 'UNSUPPORTED_VERSION'), String(err))
    t.regex(err!.message, /node client-1 \(pxd 0\.1\.0, peer protocol 1\) and node server-1 \(pxd 0\.3\.0, peer protocols 3-4\) have no peer protocol in common/)
    await sleep(5)
  }
  t.is(handler.calls, 0)
  t.is(link.state, 'down')
  t.is(link.protocol, undefined)
  const refusals = () => records.filter((r) => r.msg === 'peer connection refused')
  t.is(refusals().length, 1, 'one line for the first refusal')
  t.like(refusals()[0], { code: 'UNSUPPORTED_VERSION', peer: 'client-1' })
  t.regex(String(refusals()[0]!.message), /pxd 0\.1\.0.*pxd 0\.3\.0/)
  t.false(records.some((r) => r.msg === 'closing peer link' && r.code === 'UNSUPPORTED_VERSION'), 'no unlimited line per connection')
  await until(() => records.some((r) => r.suppressed === 2))
})

test('a newer dialer whose range the server does not reach is refused the same way', async (t) => {
  const { server, address } = await startServer(echo(), { version: '0.1.0' })
  const links = makeLinks({ version: '0.9.0', protocols: { min: PEER_PROTOCOLS.max + 1, max: PEER_PROTOCOLS.max + 2 } })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const err = await t.throwsAsync(links.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'UNSUPPORTED_VERSION'), String(err))
  t.regex(err!.message, /pxd 0\.9\.0.*pxd 0\.1\.0/)
})

/** A hand-driven client, opened, to a server of release 0.2.0. */
async function rawClient(t: ExecutionContext): Promise<RawClient> {
  const { server, address } = await startServer(echo(), { version: '0.2.0' })
  const raw = new RawClient(address)
  t.teardown(() => { raw.close(); return server.close() })
  await raw.opened()
  return raw
}

test('a client of an older release gets a challenge without the fields it would reject, and links', async (t) => {
  const raw = await rawClient(t)
  const clientNonce = newNonce()
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'old', clusterId: CLUSTER, nonce: clientNonce })
  const ch = await raw.next('challenge') as ChallengeFrame
  t.deepEqual(Object.keys(ch).sort(), ['nodeId', 'nonce', 'proof', 't', 'v'])
  const parties: HandshakeParties = { clusterId: CLUSTER, clientNodeId: 'old', serverNodeId: 'server-1', clientNonce, serverNonce: ch.nonce }
  t.true(verifyProof(SECRET, 'server', parties, ch.proof), 'the proof is the older release\'s, without terms')
  raw.send({ t: 'auth', proof: computeProof(SECRET, 'client', parties) })
  await raw.next('ready')
  raw.send({ t: 'flush', id: 1, vol: 'v1', epoch: 1 })
  t.like(await raw.next('ack'), { id: 1, ok: true })
})

test('a new client sends its range and learns the choice in the challenge', async (t) => {
  const raw = await rawClient(t)
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, nodeId: 'raw', clusterId: CLUSTER, nonce: newNonce(), version: '0.2.0', protoMin: 1, protoMax: 99 })
  const ch = await raw.next('challenge') as ChallengeFrame
  t.like(ch, { version: '0.2.0', protoMin: PEER_PROTOCOLS.min, protoMax: PEER_PROTOCOLS.max, proto: PEER_PROTOCOLS.max })
})

/**
 * A server of the release before negotiation: it refuses a hello with fields it does not
 * know (AUTH_REQUIRED, as that release's validator does) and otherwise runs the old handshake.
 */
async function olderReleaseServer(): Promise<{ address: string; hellos: Array<Record<string, unknown>>; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: PEER_PATH })
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()))
  const hellos: Array<Record<string, unknown>> = []
  wss.on('connection', (ws: WebSocket) => {
    let parties: HandshakeParties | undefined
    ws.on('message', (data: Buffer) => {
      const f = decodeFrame(data) as unknown as Record<string, unknown>
      const send = (frame: Record<string, unknown>) => ws.send(encodeFrame(frame as never))
      if (f.t === 'hello') {
        hellos.push(f)
        const extra = Object.keys(f).filter((k) => !['t', 'v', 'nodeId', 'clusterId', 'nonce'].includes(k)).length
        if (extra > 0) {
          send({ t: 'error', code: 'AUTH_REQUIRED', message: `hello frame has ${extra} unexpected field(s)` })
          ws.close(1008)
          return
        }
        parties = { clusterId: CLUSTER, clientNodeId: f.nodeId as string, serverNodeId: 'server-1', clientNonce: f.nonce as Uint8Array, serverNonce: newNonce() }
        send({ t: 'challenge', v: 1, nodeId: 'server-1', nonce: parties.serverNonce, proof: computeProof(SECRET, 'server', parties) })
      } else if (f.t === 'auth' && parties && verifyProof(SECRET, 'client', parties, f.proof as Uint8Array)) {
        send({ t: 'ready' })
      } else if (f.t === 'ping') {
        send({ t: 'pong', id: f.id, sent: f.sent })
      } else if (f.t === 'flush') {
        send({ t: 'ack', id: f.id, ok: true, data: Buffer.from('old') })
      }
    })
  })
  const { port } = wss.address() as { port: number }
  return { address: `127.0.0.1:${port}`, hellos, close: () => new Promise((resolve) => wss.close(() => resolve())) }
}

test('a node of the release before negotiation is linked with the older hello, as protocol 1 of an unknown version', async (t) => {
  const old = await olderReleaseServer()
  const links = makeLinks({ version: '0.2.0' })
  t.teardown(async () => { await links.close(); await old.close() })
  const link = links.link('server-1', old.address)
  t.is((await link.request(flush))?.toString(), 'old')
  t.is(link.protocol, 1)
  t.is(link.peerVersion, undefined)
  t.is(old.hellos.length, 2)
  t.like(old.hellos[0], { version: '0.2.0', protoMin: PEER_PROTOCOLS.min, protoMax: PEER_PROTOCOLS.max })
  t.is(old.hellos[1]!.protoMin, undefined)
  // While the link stays up, and after it drops and comes back, it keeps working.
  link.disconnect()
  t.is((await link.request(flush))?.toString(), 'old')
  t.is(old.hellos.length, 4, 'after a drop the range is offered again (the node may have been upgraded)')
})

test('a dialer that speaks only newer protocols refuses a node of the older release itself', async (t) => {
  const old = await olderReleaseServer()
  const links = makeLinks({ version: '0.9.0', protocols: { min: 2, max: 2 } })
  t.teardown(async () => { await links.close(); await old.close() })
  const err = await t.throwsAsync(links.link('server-1', old.address).request(flush))
  t.true(isReplicationError(err, 'UNSUPPORTED_VERSION'), String(err))
  t.regex(err!.message, /node server-1 \(pxd version unknown, peer protocol 1 \(a release before protocol negotiation\)\) and node client-1 \(pxd 0\.9\.0, peer protocol 2\)/)
})
