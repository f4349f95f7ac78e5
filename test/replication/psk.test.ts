import test from 'ava'
import { peerPsk } from '../../src/replication/psk'
import { isReplicationError } from '../../src/replication/errors'
import { CLUSTER, handlerOf, makeLinks, OTHER_SECRET, RawClient, SECRET, startServer } from './helpers'

const flush = { t: 'flush', vol: 'v1', epoch: 1 } as const
const echo = () => handlerOf(async () => Buffer.from('ok'))

test('the key depends on the secret and the cluster id, and is 32 bytes', (t) => {
  const k = peerPsk(SECRET, CLUSTER)
  t.is(k.length, 32)
  t.deepEqual(peerPsk(SECRET, CLUSTER), k)
  t.notDeepEqual(peerPsk(OTHER_SECRET, CLUSTER), k)
  t.notDeepEqual(peerPsk(SECRET, 'cluster-b'), k)
  t.notDeepEqual(k, Buffer.from(SECRET))
})

test('with psk on both ends requests flow over TLS 1.2 with a PSK AES-GCM cipher', async (t) => {
  const { server, address } = await startServer(echo(), { psk: true })
  const links = makeLinks({ psk: true })
  t.teardown(() => Promise.all([links.close(), server.close()]))
  t.is(server.security, 'psk')
  t.is((await links.link('server-1', address).request(flush))?.toString(), 'ok')
})

test('a psk client with another secret fails at TLS; a plain client is refused; the handler never runs', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, { psk: true })
  const wrong = makeLinks({ psk: true, secret: OTHER_SECRET })
  const plain = makeLinks()
  t.teardown(() => Promise.all([wrong.close(), plain.close(), server.close()]))
  const err = await t.throwsAsync(wrong.link('server-1', address).request(flush))
  t.true(isReplicationError(err, 'AUTH_FAILED'), String(err))
  t.regex(err!.message, /TLS-PSK/)
  await t.throwsAsync(plain.link('server-1', address).request(flush))
  const raw = new RawClient(address)
  await t.throwsAsync(raw.opened())
  t.is(handler.calls, 0)
})
