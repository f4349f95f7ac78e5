import test from 'ava'
import { MAX_FRAME_BYTES } from '../../src/replication/frames'
import { captureLog, deferred, handlerOf, makeLinks, RawClient, sleep, startServer, until, type Deferred } from './helpers'

const KiB = 1024
const MiB = 1024 * 1024

test('an oversized frame gets an error frame, closes that link (1009) and is logged; the server still serves new links', async (t) => {
  const handler = handlerOf(async () => undefined)
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log })
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  await raw.handshake()
  await raw.next('ready')
  raw.send(Buffer.alloc(MAX_FRAME_BYTES + 1))
  t.like(await raw.next('error'), { code: 'FRAME_TOO_LARGE' })
  const { code } = await raw.closed
  t.is(code, 1009)
  t.is(handler.calls, 0)
  await until(() => records.some((r) => r['code'] === 'FRAME_TOO_LARGE'))
  const links = makeLinks()
  t.teardown(() => links.close())
  t.is(await links.link('server-1', address).request({ t: 'flush', vol: 'v', epoch: 1 }), undefined)
  t.is(handler.calls, 1)
})

test('an undecodable frame after the handshake gets an error frame and a close; other links are unharmed', async (t) => {
  const handler = handlerOf(async () => undefined)
  const { log, records } = captureLog()
  const { server, address } = await startServer(handler, { log })
  const links = makeLinks()
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  await link.request({ t: 'flush', vol: 'v', epoch: 1 }, { timeoutMs: 10_000 })
  const raw = new RawClient(address)
  await raw.handshake()
  await raw.next('ready')
  raw.send(Buffer.from([0xc1, 0x00, 0x13]))
  t.like(await raw.next('error'), { code: 'BAD_FRAME' })
  await raw.closed
  t.truthy(records.find((r) => r['code'] === 'BAD_FRAME' && r['level'] === 40))
  t.is(await link.request({ t: 'flush', vol: 'v', epoch: 1 }), undefined)
  t.is(link.state, 'ready')
})

test('flow control: a 1 MiB window holds 8 writes of 128 KiB; the rest wait, then proceed', async (t) => {
  const held: Array<Deferred<void>> = []
  const handler = handlerOf(() => {
    const d = deferred()
    held.push(d)
    return d.promise
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks({ maxBytesInFlight: MiB, requestTimeoutMs: 30_000 })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  const link = links.link('server-1', address)
  const settled: boolean[] = []
  const writes = Array.from({ length: 20 }, (_, i) => {
    settled[i] = false
    return link.request({ t: 'write', vol: 'v', epoch: 1, seq: i, offset: i * 128 * KiB, data: Buffer.alloc(128 * KiB, i) })
      .finally(() => { settled[i] = true })
  })
  await until(() => handler.calls === 8)
  await sleep(150)
  // The server would call its handler for any frame it had received: only 8 were sent.
  t.is(handler.calls, 8)
  t.is(link.requestsInFlight, 8)
  t.is(link.bytesInFlight, MiB)
  t.is(link.waiting, 12)
  t.false(settled.some(Boolean), 'nothing rejected or resolved')
  // Each ack lets the next waiting write go, in order.
  held[0]!.resolve()
  await until(() => handler.calls === 9)
  t.is(link.bytesInFlight, MiB)
  while (!settled.every(Boolean)) {
    for (const d of held.splice(0)) d.resolve()
    await sleep(5)
  }
  await Promise.all(writes)
  t.is(handler.calls, 20)
  t.is(link.bytesInFlight, 0)
  t.is(link.waiting, 0)
})

test('flow control: timed-out writes keep their bytes counted until acked', async (t) => {
  const held: Array<Deferred<void>> = []
  const handler = handlerOf(async (_peer, req) => {
    if (req.t !== 'write') return
    const d = deferred()
    held.push(d)
    return d.promise
  })
  const { server, address } = await startServer(handler)
  const links = makeLinks({ maxBytesInFlight: 256 * KiB, requestTimeoutMs: 300 })
  t.teardown(() => { for (const d of held) d.resolve(); return Promise.all([links.close(), server.close()]) })
  const link = links.link('server-1', address)
  await link.request({ t: 'flush', vol: 'v', epoch: 1 }, { timeoutMs: 10_000 })
  const write = (i: number) => link.request({ t: 'write', vol: 'v', epoch: 1, seq: i, offset: 0, data: Buffer.alloc(128 * KiB) })
  const results = await Promise.allSettled([write(1), write(2), write(3)])
  t.deepEqual(results.map((r) => r.status === 'rejected' && (r.reason as { code: string }).code), ['PEER_TIMEOUT', 'PEER_TIMEOUT', 'PEER_TIMEOUT'])
  await until(() => handler.calls === 3)
  await sleep(50)
  t.is(handler.calls, 3, 'the third write never left: the window was full')
  t.is(link.bytesInFlight, 256 * KiB)
  for (const d of held.splice(0)) d.resolve()
  await until(() => link.bytesInFlight === 0)
  for (const d of held.splice(0)) d.resolve()
  const fourth = write(4).catch(() => undefined)
  await until(() => handler.calls === 4)
  for (const d of held.splice(0)) d.resolve()
  await fourth
})

test('server cap: a flood of requests never runs more handler calls at once than the cap', async (t) => {
  let running = 0
  let peak = 0
  const release = deferred()
  const handler = handlerOf(async () => {
    running++
    peak = Math.max(peak, running)
    await release.promise
    await sleep(Math.random() * 3)
    running--
  })
  const { server, address } = await startServer(handler, { maxConcurrentRequests: 16 })
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  t.teardown(() => raw.close())
  await raw.handshake()
  await raw.next('ready')
  const N = 2000
  for (let id = 1; id <= N; id++) raw.send({ t: 'flush', id, vol: 'v', epoch: 1 })
  await until(() => handler.calls === 16)
  await sleep(100)
  t.is(handler.calls, 16)
  release.resolve()
  await until(() => raw.frames.filter((f) => f.t === 'ack').length === N, 20_000)
  t.is(handler.calls, N)
  t.true(peak <= 16, `peak ${peak}`)
  const ids = new Set(raw.frames.map((f) => (f.t === 'ack' ? f.id : 0)))
  t.is(ids.size, N)
})

test('server cap: over its byte cap the server stops reading, so the bytes stay with the sender', async (t) => {
  let running = 0
  let peak = 0
  const release = deferred()
  const handler = handlerOf(async () => {
    running++
    peak = Math.max(peak, running)
    await release.promise
    running--
  })
  const { server, address } = await startServer(handler, { maxBytesInFlight: 256 * KiB })
  t.teardown(() => server.close())
  const raw = new RawClient(address)
  t.teardown(() => raw.close())
  await raw.handshake()
  await raw.next('ready')
  const N = 48
  const data = Buffer.alloc(MiB)
  for (let id = 1; id <= N; id++) raw.send({ t: 'write', id, vol: 'v', epoch: 1, seq: id, offset: 0, data })
  await sleep(300)
  t.is(handler.calls, 1, 'one 1 MiB write fills a 256 KiB cap')
  // The server stopped reading: what the kernel's buffers cannot hold stays queued in the sender.
  t.true(raw.ws.bufferedAmount > 16 * MiB, `sender still holds ${raw.ws.bufferedAmount} bytes`)
  release.resolve()
  await until(() => raw.frames.filter((f) => f.t === 'ack').length === N, 20_000)
  t.is(peak, 1)
  t.is(raw.ws.bufferedAmount, 0)
})
