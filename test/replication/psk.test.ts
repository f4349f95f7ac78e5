import test from 'ava'
import { peerPsk } from '../../src/replication/psk'
import { native } from '../../src/native/binding'
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

test('a rolling upgrade from plain links: acceptPlaintext takes psk and plain clients on one port; plaintextFallback dials a plain server plain after its first answer', async (t) => {
  const handler = echo()
  const { server, address } = await startServer(handler, { psk: true, acceptPlaintext: true, peekByte: native.peekByte })
  const psk = makeLinks({ psk: true })
  const plain = makeLinks()
  t.teardown(() => Promise.all([psk.close(), plain.close(), server.close()]))
  t.is((await psk.link('server-1', address).request(flush))?.toString(), 'ok', 'a TLS-PSK client')
  t.is((await plain.link('server-1', address).request(flush))?.toString(), 'ok', 'a plain client (the older release)')
  const wrong = makeLinks({ psk: true, secret: OTHER_SECRET })
  t.teardown(() => wrong.close())
  await t.throwsAsync(wrong.link('server-1', address).request(flush), undefined, 'another secret is refused all the same')

  const old = await startServer(echo(), { nodeId: 'server-2' })
  const upgraded = makeLinks({ psk: true, plaintextFallback: true, retryAfterMs: 50 })
  const strict = makeLinks({ psk: true })
  t.teardown(() => Promise.all([upgraded.close(), strict.close(), old.server.close()]))
  await t.throwsAsync(strict.link('server-2', old.address).request(flush), undefined, 'without the fallback a plain server is not reached')
  const link = upgraded.link('server-2', old.address)
  let answer: string | undefined
  for (let i = 0; i < 40 && answer === undefined; i++) {
    answer = await link.request(flush).then((b) => b?.toString(), () => undefined)
    if (answer === undefined) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.is(answer, 'ok', 'with the fallback the plain server is reached')
})
