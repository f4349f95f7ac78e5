/**
 * The default peer link (no --peer-tls-*) is TLS with a key derived from the cluster secret.
 * node-b advertises a TCP relay run by the test, so node-a's link to it passes through the
 * test process, which keeps every byte. A marker written in a repl=2 volume on node-a reaches
 * node-b's replica, and appears in none of the bytes on the wire. A plain ws:// client and a
 * TLS-PSK client with another cluster secret are refused.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { ApiClient } from '../../src/api/client'
import { PEER_PATH, PeerLinks } from '../../src/replication'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { startCapturingRelay, type CapturingRelay } from '../helpers/relay'
import { plainDialError } from '../helpers/tls'
import { pluginOk as call, replicaFiles, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
let relay: CapturingRelay
const log = pino({ level: 'silent' })

test.before(async () => {
  relay = await startCapturingRelay(() => cluster.node('node-b').peerPort)
  cluster = await startCluster(['node-a', 'node-b'], {
    extraArgs: (id) => (id === 'node-b' ? ['--advertise', `127.0.0.1:${relay.port}`] : []),
  })
})

test.after.always(async () => {
  await cluster?.stop()
  await relay?.close()
})

test('a marker written on node-a reaches node-b and never crosses the link in the clear', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const marker = Buffer.from(`pxd-marker-${randomBytes(12).toString('hex')}`)
  const payload = Buffer.alloc(2 * 1024 * 1024)
  for (let o = 0; o + marker.length <= payload.length; o += 4096) marker.copy(payload, o)
  await call(a, '/VolumeDriver.Create', { Name: 'clear', Opts: { size: '32M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('clear')
  t.deepEqual(info.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
  const mp = (await call(a, '/VolumeDriver.Mount', { Name: 'clear', ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await call(a, '/VolumeDriver.Unmount', { Name: 'clear', ID: 'w' })

  // The replica on node-b holds the marker, so it crossed the relay...
  const { data } = await replicaFiles(b, info.id)
  t.true(data.includes(marker), 'node-b\'s replica holds the marker')
  t.true(relay.length > payload.length, `the relay carried ${relay.length} bytes`)
  // ...encrypted: the wire holds neither the marker nor the frame protocol's field names.
  const all = relay.bytes()
  t.false(all.includes(marker), 'the marker appears in the link bytes')
  t.false(all.includes(Buffer.from(PEER_PATH)), 'the WebSocket upgrade appears in the link bytes')
  t.is(all[0], 0x16, 'the link starts with a TLS handshake record')
  t.true(a.logs().split('\n').some((l) => l.includes('"msg":"peer link up"') && l.includes('"tls":"psk"')), 'node-a logs a TLS-PSK link')

  const mpB = (await call(b, '/VolumeDriver.Mount', { Name: 'clear', ID: 'r' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mpB, 'payload.bin'))), sha(payload))
  await call(b, '/VolumeDriver.Unmount', { Name: 'clear', ID: 'r' })
})

test('a plain ws:// client is refused, and so is a TLS-PSK client with another secret', async (t) => {
  const b = cluster.node('node-b')
  const err = await plainDialError(b.peerPort)
  t.not(err.message, 'opened')
  await waitFor('node-b to log the plain connection', async () => /plain \(non-TLS\) connection reached the TLS-PSK peer port/.test(b.logs()), 5000)
  // Without the psk option a client is plain, and is refused as well.
  for (const o of [{ secret: randomBytes(32), psk: true }, { secret: cluster.secret, psk: false }]) {
    const links = new PeerLinks({ nodeId: 'node-a', clusterId: cluster.clusterId, log, ...o })
    try {
      const e = await t.throwsAsync(links.link('node-b', `127.0.0.1:${b.peerPort}`).request({ t: 'flush', vol: '00000000deadbeef', epoch: 1 }))
      t.regex(String((e as { code?: string }).code), /AUTH_FAILED|PEER_UNAVAILABLE/)
    } finally {
      await links.close()
    }
  }
  // Refusals of one kind from one address are logged once per 10 s, then summed up: the wrong key may come in that line.
  await waitFor('node-b to log the wrong key', async () => /TLS-PSK handshake failed/.test(b.logs()), 15_000)
  t.pass()
})
