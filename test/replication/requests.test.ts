import { randomBytes } from 'node:crypto'
import test from 'ava'
import { PxdError } from '../../src/errors'
import { native } from '../../src/native/binding'
import { isReplicationError } from '../../src/replication/errors'
import type { RequestFrame } from '../../src/replication/frames'
import { deferred, handlerOf, makeLinks, sleep, startServer, until } from './helpers'

const codeOf = (err: unknown) => (err as { code?: string }).code

test('acks correlate with 1000 concurrent requests answered in random order', async (t) => {
  const handler = handlerOf(async (_peer, req) => {
    await sleep(Math.random() * 30)
    if (req.t !== 'read') throw new Error('unexpected')
    return Buffer.from(`${req.vol}@${req.offset}`)
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const results = await Promise.all(Array.from({ length: 1000 }, (_, i) =>
    link.request({ t: 'read', vol: `vol-${i % 7}`, epoch: 1, offset: i * 4096, length: 16 })))
  results.forEach((data, i) => t.is(data?.toString(), `vol-${i % 7}@${i * 4096}`))
  t.is(handler.calls, 1000)
  t.is(link.bytesInFlight, 0)
  t.is(link.requestsInFlight, 0)
})

test('handler errors come back with their code and message; uncoded ones as INTERNAL', async (t) => {
  const handler = handlerOf(async (_peer, req) => {
    if (req.t === 'open') throw Object.assign(new Error('epoch 1 is older than 4'), { code: 'STALE_EPOCH' })
    if (req.t === 'close') throw Object.assign(new Error('no such replica'), { code: 'not a code!' })
    throw new TypeError('boom')
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const stale = await t.throwsAsync(link.request({ t: 'open', vol: 'v', epoch: 1, size: 4096 }))
  t.true(stale instanceof PxdError)
  t.like(stale, { code: 'STALE_EPOCH', message: 'epoch 1 is older than 4', peer: 'server-1' })
  t.like(await t.throwsAsync(link.request({ t: 'close', vol: 'v', epoch: 1 })), { code: 'INTERNAL', message: 'no such replica' })
  t.like(await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 })), { code: 'INTERNAL', message: 'boom' })
  // The link survives handler errors.
  t.is(link.state, 'ready')
})

test('a handler error that names a block comes back with it: its own block, else its cause\'s', async (t) => {
  const handler = handlerOf(async (_peer, req) => {
    if (req.t === 'read') throw new PxdError('CHECKSUM_MISMATCH', 'block 7 is bad', { block: 7 })
    if (req.t === 'digest') throw new PxdError('CHECKSUM_MISMATCH', 'a bad block', { cause: Object.assign(new Error('checksum mismatch in block 9'), { code: 'ECHECKSUM', block: 9 }) })
    if (req.t === 'flush') throw Object.assign(new Error('odd block'), { code: 'IO_ERROR', block: -1 })
    throw new PxdError('IO_ERROR', 'no block here')
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const own = await t.throwsAsync(link.request({ t: 'read', vol: 'v', epoch: 1, offset: 0, length: 4096 }))
  t.true(own instanceof PxdError)
  t.like(own, { code: 'CHECKSUM_MISMATCH', message: 'block 7 is bad', peer: 'server-1', block: 7 })
  t.like(await t.throwsAsync(link.request({ t: 'digest', vol: 'v', epoch: 1, offset: 0, length: 4096 })), { code: 'CHECKSUM_MISMATCH', block: 9 })
  const invalid = await t.throwsAsync<PxdError>(link.request({ t: 'flush', vol: 'v', epoch: 1 }))
  t.is(invalid?.code, 'IO_ERROR')
  t.is(invalid?.block, undefined, 'a block that is not a non-negative integer is not sent')
  const none = await t.throwsAsync<PxdError>(link.request({ t: 'close', vol: 'v', epoch: 1 }))
  t.is(none?.code, 'IO_ERROR')
  t.is(none?.block, undefined)
  t.is(link.state, 'ready')
})

test('writes deliver exactly the bytes sent; reads return the handler bytes', async (t) => {
  const stored = new Map<number, Buffer>()
  const handler = handlerOf(async (_peer, req: RequestFrame) => {
    if (req.t === 'write') stored.set(req.offset, Buffer.from(req.data))
    else if (req.t === 'read') return stored.get(req.offset)!.subarray(0, req.length)
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const sizes = [0, 1, 4096, 128 * 1024, 1024 * 1024]
  const blocks = sizes.map((n) => randomBytes(n))
  for (const [i, data] of blocks.entries()) {
    t.is(await link.request({ t: 'write', vol: 'v', epoch: 1, seq: i + 1, offset: i * 2 ** 20, data }), undefined)
  }
  for (const [i, data] of blocks.entries()) {
    t.true(stored.get(i * 2 ** 20)!.equals(data), `write ${sizes[i]}`)
    const back = await link.request({ t: 'read', vol: 'v', epoch: 1, offset: i * 2 ** 20, length: data.length })
    t.true(back?.equals(data), `read ${sizes[i]}`)
  }
})

test('a large write frees its message memory once handled; small writes sharing a buffer are left alone', async (t) => {
  const kept: Uint8Array[] = []
  const copies: Buffer[] = []
  const handler = handlerOf(async (_peer, req: RequestFrame) => {
    if (req.t !== 'write') return
    kept.push(req.data)
    copies.push(Buffer.from(req.data))
  })
  const { server, address } = await startServer(handler, { releaseBuffer: native.releaseArrayBuffer })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const big = randomBytes(1024 * 1024)
  const small = randomBytes(100)
  await link.request({ t: 'write', vol: 'v', epoch: 1, seq: 1, offset: 0, data: big })
  await Promise.all([1, 2, 3].map((i) => link.request({ t: 'write', vol: 'v', epoch: 1, seq: 1 + i, offset: i * 4096, data: small })))
  t.true(copies[0]!.equals(big), 'the handler saw the whole payload')
  t.is(kept[0]!.length, 0, 'the 1 MiB message was released after its write')
  for (let i = 1; i < 4; i++) t.true(Buffer.from(kept[i]!).equals(small), `small write ${i} still reads its bytes`)
})

test('without releaseBuffer a large write keeps its memory after it is handled', async (t) => {
  const kept: Uint8Array[] = []
  const { server, address } = await startServer(handlerOf(async (_peer, req: RequestFrame) => {
    if (req.t === 'write') kept.push(req.data)
  }))
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const big = randomBytes(1024 * 1024)
  await links.link('server-1', address).request({ t: 'write', vol: 'v', epoch: 1, seq: 1, offset: 0, data: big })
  t.true(Buffer.from(kept[0]!).equals(big))
})

test('a request without an ack in time fails with PEER_TIMEOUT; others keep flowing', async (t) => {
  const stuck = deferred()
  const handler = handlerOf(async (_peer, req) => {
    if (req.t === 'flush') await stuck.promise
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks({ requestTimeoutMs: 150 })
  t.teardown(() => { stuck.resolve(); return Promise.all([links.close(), server.close()]) })
  const link = links.link('server-1', address)
  // Connect first, with room to spare: the handshake must not eat the 150 ms under test.
  t.is(await link.request({ t: 'close', vol: 'v', epoch: 1 }, { timeoutMs: 10_000 }), undefined)
  const started = Date.now()
  const err = await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }))
  t.is(codeOf(err), 'PEER_TIMEOUT')
  t.true(Date.now() - started >= 140)
  // Per-request override, here generous so a loaded machine does not fail the request that should pass.
  t.is(await link.request({ t: 'close', vol: 'v', epoch: 1 }, { timeoutMs: 10_000 }), undefined)
  const err2 = await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }, { timeoutMs: 30 }))
  t.is(codeOf(err2), 'PEER_TIMEOUT')
  // The late ack is absorbed without harm.
  stuck.resolve()
  await until(() => link.requestsInFlight === 0)
  t.is(link.state, 'ready')
})

test('an aborted request fails with ABORTED', async (t) => {
  const stuck = deferred()
  const { server, address } = await startServer(handlerOf(() => stuck.promise))
  const links = makeLinks()
  t.teardown(() => { stuck.resolve(); return Promise.all([links.close(), server.close()]) })
  const link = links.link('server-1', address)
  const ac = new AbortController()
  const p = link.request({ t: 'flush', vol: 'v', epoch: 1 }, { signal: ac.signal })
  await sleep(20)
  ac.abort()
  t.is(codeOf(await t.throwsAsync(p)), 'ABORTED')
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }, { signal: ac.signal }))), 'ABORTED')
})

test('bad requests are refused locally, without harming the link', async (t) => {
  const { server, address } = await startServer(handlerOf(async () => undefined))
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const big = await t.throwsAsync(link.request({ t: 'write', vol: 'v', epoch: 1, seq: 1, offset: 0, data: Buffer.alloc(2 ** 20 + 1) }))
  t.is(codeOf(big), 'FRAME_TOO_LARGE')
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'flush', vol: 'bad/name', epoch: 1 }))), 'BAD_FRAME')
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: -1 }))), 'BAD_FRAME')
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'ping', sent: 1 } as never))), 'BAD_FRAME')
  t.is(await link.request({ t: 'flush', vol: 'v', epoch: 1 }), undefined)
})

test('server closed mid-request: pending requests fail at once with PEER_UNAVAILABLE', async (t) => {
  const stuck = deferred()
  const handler = handlerOf(() => stuck.promise)
  const { server, address } = await startServer(handler)
  const links = makeLinks({ requestTimeoutMs: 30_000 })
  t.teardown(() => links.close())
  const link = links.link('server-1', address)
  const pending = Array.from({ length: 20 }, (_, i) =>
    link.request({ t: 'write', vol: 'v', epoch: 1, seq: i, offset: i * 4096, data: Buffer.alloc(4096) }))
  await until(() => handler.calls === 20)
  const started = Date.now()
  const closing = server.close()
  const results = await Promise.allSettled(pending)
  t.true(Date.now() - started < 1000, 'failed fast')
  for (const r of results) t.is(r.status === 'rejected' ? codeOf(r.reason) : 'fulfilled', 'PEER_UNAVAILABLE')
  t.is(link.state, 'down')
  t.is(link.bytesInFlight, 0)
  // close() waits for the handler calls still running.
  let closed = false
  void closing.then(() => { closed = true })
  await sleep(50)
  t.false(closed)
  stuck.resolve()
  await closing
})

test('after the server restarts on the same port the link reconnects', async (t) => {
  const handler = handlerOf(async () => Buffer.from('one'))
  const first = await startServer(handler)
  const links = makeLinks({ retryAfterMs: 300 })
  t.teardown(() => links.close())
  const link = links.link('server-1', first.address)
  t.is((await link.request({ t: 'flush', vol: 'v', epoch: 1 }))?.toString(), 'one')
  await first.server.close()
  await until(() => link.state === 'down')
  // The peer is down: the attempt fails, then requests fail fast without new attempts.
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }))), 'PEER_UNAVAILABLE')
  const fast = Date.now()
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }))), 'PEER_UNAVAILABLE')
  t.true(Date.now() - fast < 20)
  const second = await startServer(handlerOf(async () => Buffer.from('two')), {}, first.port)
  t.teardown(() => second.server.close())
  await sleep(320)
  t.is((await link.request({ t: 'flush', vol: 'v', epoch: 1 }))?.toString(), 'two')
  t.is(link.state, 'ready')
})

test('a link follows a changed address', async (t) => {
  const a = await startServer(handlerOf(async () => Buffer.from('a')))
  const b = await startServer(handlerOf(async () => Buffer.from('b')))
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), a.server.close(), b.server.close()]))
  t.is((await links.link('server-1', a.address).request({ t: 'flush', vol: 'v', epoch: 1 }))?.toString(), 'a')
  const link = links.link('server-1', b.address)
  t.is(link.address, b.address)
  link.disconnect()
  t.is((await link.request({ t: 'flush', vol: 'v', epoch: 1 }))?.toString(), 'b')
})

test('a refused connection fails requests fast with PEER_UNAVAILABLE', async (t) => {
  const { server, port } = await startServer(handlerOf(async () => undefined))
  await server.close()
  const links = makeLinks()
  t.teardown(() => links.close())
  const link = links.link('server-1', `127.0.0.1:${port}`)
  const err = await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }))
  t.true(isReplicationError(err, 'PEER_UNAVAILABLE'), String(err))
  t.is(link.state, 'down')
})

test('close() fails pending requests with LINK_CLOSED and later calls at once', async (t) => {
  const stuck = deferred()
  const { server, address } = await startServer(handlerOf(() => stuck.promise))
  const links = makeLinks()
  t.teardown(() => { stuck.resolve(); return server.close() })
  const link = links.link('server-1', address)
  const p = link.request({ t: 'flush', vol: 'v', epoch: 1 })
  await until(() => link.requestsInFlight === 1)
  await links.close()
  t.is(codeOf(await t.throwsAsync(p)), 'LINK_CLOSED')
  t.is(codeOf(await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }))), 'LINK_CLOSED')
  t.is(codeOf(t.throws(() => links.link('server-1', address))), 'LINK_CLOSED')
  await links.close()
})

test('rttMs becomes a number after a ping', async (t) => {
  const { server, address } = await startServer(handlerOf(async () => undefined))
  const links = makeLinks({ pingIntervalMs: 50 })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  t.is(link.rttMs, undefined)
  await link.request({ t: 'flush', vol: 'v', epoch: 1 })
  await until(() => link.rttMs !== undefined)
  t.is(typeof link.rttMs, 'number')
  t.true(link.rttMs! >= 0 && link.rttMs! < 1000)
})

test('a peer that stops answering pings is dropped', async (t) => {
  // With its single call slot taken the server reads no more: a stand-in for a hung peer.
  const stuck = deferred()
  const { server, address } = await startServer(handlerOf(() => stuck.promise), { maxConcurrentRequests: 1 })
  const links = makeLinks({ pingIntervalMs: 30, deadAfterMs: 200, requestTimeoutMs: 10_000 })
  t.teardown(() => { stuck.resolve(); return Promise.all([links.close(), server.close()]) })
  const link = links.link('server-1', address)
  const started = Date.now()
  const err = await t.throwsAsync(link.request({ t: 'flush', vol: 'v', epoch: 1 }))
  t.true(isReplicationError(err, 'PEER_UNAVAILABLE'), String(err))
  t.regex((err as Error).message, /silent/)
  t.true(Date.now() - started < 2000)
})
