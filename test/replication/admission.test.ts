import test from 'ava'
import { connect, type Socket } from 'node:net'
import { Admission, RefusalLog } from '../../src/replication/admission'
import { captureLog, handlerOf, makeLinks, startServer, until } from './helpers'

const flush = { t: 'flush', vol: 'v1', epoch: 1 } as const

test('admission caps slots per address and in total; a release frees exactly one', (t) => {
  const a = new Admission({ perAddress: 2, total: 3 })
  t.is(a.admit('10.0.0.1'), undefined)
  t.is(a.admit('10.0.0.1'), undefined)
  t.is(a.admit('10.0.0.1'), 'per-address')
  t.is(a.admit('10.0.0.2'), undefined)
  t.is(a.admit('10.0.0.3'), 'total')
  t.is(a.total, 3)
  a.release('10.0.0.1')
  t.is(a.held('10.0.0.1'), 1)
  t.is(a.admit('10.0.0.3'), undefined)
  // A release for an address that holds nothing changes nothing.
  a.release('10.0.0.9')
  t.is(a.total, 3)
  t.throws(() => new Admission({ perAddress: 0, total: 3 }), { message: /perAddress limit .* positive integer/ })
})

test('refusals log once per reason and address per interval, then one line with the count', async (t) => {
  const { log, records } = captureLog()
  const refusals = new RefusalLog(log, 100)
  for (let i = 0; i < 50; i++) refusals.refused('per-address', '10.0.0.1')
  refusals.refused('total', '10.0.0.1')
  refusals.refused('per-address', '10.0.0.2')
  t.is(records.length, 3)
  await until(() => records.length === 4, 2000)
  t.like(records[3], { remote: '10.0.0.1', suppressed: 49, msg: 'refused 49 more connections from 10.0.0.1 in the last 0.1s' })
  // A new interval logs the first refusal again.
  refusals.refused('per-address', '10.0.0.1')
  t.is(records.length, 5)
  refusals.close()
})

function idle(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s))
    s.on('error', reject)
  })
}

test('idle connections from one address fill only its share; a peer from another address still links up', async (t) => {
  const { log, records } = captureLog()
  const { server, port, address } = await startServer(handlerOf(async () => Buffer.from('ok')),
    { log, maxHandshakesPerAddress: 4, maxHandshakes: 16, handshakeTimeoutMs: 1000 })
  const links = makeLinks()
  const flood: Socket[] = []
  t.teardown(async () => { for (const s of flood) s.destroy(); await links.close(); await server.close() })
  const closed: Array<Promise<void>> = []
  for (let i = 0; i < 20; i++) {
    const s = await idle(port, '127.0.0.9')
    flood.push(s)
    closed.push(new Promise((resolve) => s.once('close', () => resolve())))
    s.on('error', () => {})
  }
  await until(() => server.unauthenticatedCount === 4)
  t.is((await links.link('server-1', address).request(flush))?.toString(), 'ok')
  // The link is authenticated and so holds no slot; the flood holds exactly its share.
  t.is(server.unauthenticatedCount, 4)
  const refused = records.filter((r) => r['msg'] === 'peer connection refused' && r['remote'] === '127.0.0.9')
  t.is(refused.length, 1, 'one warning for sixteen refusals')
  // The four admitted idle connections are closed at the deadline, counted from the TCP accept.
  await Promise.all(closed)
  await until(() => server.unauthenticatedCount === 0)
  t.is((await links.link('server-1', address).request(flush))?.toString(), 'ok')
})
