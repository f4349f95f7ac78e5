/**
 * A secure volume's blocks cross the peer link as ciphertext whatever the link's own
 * encryption: with the link in plaintext (PXD_PEER_PLAINTEXT=1, the bench's mode), node-b
 * advertises a relay in the test process that keeps every byte of node-a's link to it. A
 * marker written through the mount of a secure repl=2 volume appears nowhere in those
 * bytes, although node-b's replica received the volume's data and the volume reads back;
 * the same marker in a plain volume does appear on that wire (the capture can find it).
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, type Cluster } from '../helpers/cluster'
import { startCapturingRelay, type CapturingRelay } from '../helpers/relay'
import { pluginOk as call, replicaFiles, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
let relay: CapturingRelay

test.before(async () => {
  relay = await startCapturingRelay(() => cluster.node('node-b').peerPort)
  cluster = await startCluster(['node-a', 'node-b'], {
    env: { PXD_PEER_PLAINTEXT: '1' },
    extraArgs: (id) => (id === 'node-b' ? ['--advertise', `127.0.0.1:${relay.port}`] : []),
  })
})

test.after.always(async () => {
  await cluster?.stop()
  await relay?.close()
})

/** Write `payload` into a new repl=2 volume on node-a; what crossed the relay meanwhile, and node-b's replica data. */
async function writeThrough(name: string, opts: Record<string, string>, payload: Buffer) {
  const a = cluster.node('node-a')
  await call(a, '/VolumeDriver.Create', { Name: name, Opts: { size: '32M', repl: '2', ...opts } })
  const info = await new ApiClient(a.apiUrl).inspectVolume(name)
  const before = relay.length
  const mp = (await call(a, '/VolumeDriver.Mount', { Name: name, ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  const back = await fs.readFile(path.join(mp, 'payload.bin'))
  await call(a, '/VolumeDriver.Unmount', { Name: name, ID: 'w' })
  const wire = relay.bytes().subarray(before)
  const { data } = await replicaFiles(cluster.node('node-b'), info.id)
  return { wire, replicaB: data, back }
}

test('a secure volume sends only ciphertext to its peer replica; a plain one on the same link does not', async (t) => {
  const marker = Buffer.from(`pxd-wire-marker-${randomBytes(12).toString('hex')}`)
  const payload = Buffer.alloc(2 * 1024 * 1024)
  for (let o = 0; o + marker.length <= payload.length; o += 4096) marker.copy(payload, o)

  const secure = await writeThrough('sealed', { secure: 'true' }, payload)
  t.is(sha(secure.back), sha(payload), 'the secure volume reads back what was written')
  t.true(secure.wire.length > payload.length, `the relay carried ${secure.wire.length} bytes of the secure volume's writes`)
  t.false(secure.wire.includes(marker), 'the marker crossed the link in the clear')
  t.false(secure.replicaB.includes(marker), "node-b's replica holds the marker")

  const plain = await writeThrough('open', {}, payload)
  t.true(plain.wire.includes(marker), 'the capture sees a plain volume\'s data on the plaintext link')
  t.true(plain.replicaB.includes(marker))
})
