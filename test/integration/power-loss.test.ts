/**
 * Power loss, not kill -9: a node's data dir sits on the power-loss file system, so when
 * the node "loses power" every write it took since its last flush is gone, as on real
 * hardware. The property under test: a replica is in sync only if it holds every
 * acknowledged write, also after it lost writes it had taken into its page cache.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { MiB, pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'], { powerLoss: ['node-b'] })
})

test.after.always(async () => {
  await cluster?.stop()
})

const FILES = 8
const FILE_BYTES = 2 * MiB

test('a replica that lost power is resynced with every write it had taken but not flushed', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'pl', Opts: { size: '128M', repl: '2' } })
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'pl', ID: 'w' })).Mountpoint as string
  const expected = new Map<string, string>()
  // Files that exist durably (data and metadata) on both replicas.
  for (let i = 0; i < FILES; i++) {
    const data = randomBytes(FILE_BYTES)
    await writeSynced(path.join(mp, `f${i}`), data)
    expected.set(`f${i}`, sha(data))
  }
  // Overwritten in place with direct I/O and no fsync: both replicas take the writes into
  // their page caches; nothing in the volume flushes (no metadata changes).
  const src = path.join(cluster.dir, 'v1.bin')
  for (let i = 0; i < FILES; i++) {
    const data = randomBytes(FILE_BYTES)
    await fs.writeFile(src, data)
    const dd = await runCommand('dd', [`if=${src}`, `of=${path.join(mp, `f${i}`)}`, 'bs=1M', 'oflag=direct', 'conv=notrunc', 'status=none'], 30_000)
    t.is(dd.code, 0, dd.stderr)
    expected.set(`f${i}`, sha(data))
  }
  t.true((await b.disk!.status()).dirtyPages > 0, 'node-b holds the overwrites in its page cache only')

  await cluster.powerLoss('node-b')
  // A flush in the volume makes the overwrites durable (on node-a, the one replica left).
  const more = randomBytes(4 * MiB)
  await writeSynced(path.join(mp, 'after'), more)
  expected.set('after', sha(more))
  const api = new ApiClient(a.apiUrl)
  t.deepEqual((await api.inspectVolume('pl')).replicas.filter((r) => r.inSync).map((r) => r.nodeId), ['node-a'])

  await cluster.start('node-b')
  await waitFor('node-b back in sync', async () => (await api.inspectVolume('pl')).replicas.every((r) => r.inSync), 60_000, 250)
  const info = await api.inspectVolume('pl')
  t.log(`resync: ${info.lastResync?.method}, compared ${info.lastResync?.scannedBytes} bytes, copied ${info.lastResync?.copiedBytes}`)

  // Fail over to node-b: its own replica serves the reads there.
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'pl', ID: 'w' })
  t.is(await replicaDigest(a, info.id), await replicaDigest(b, info.id), 'the replicas are byte-identical')
  const mpB = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'pl', ID: 'r' })).Mountpoint as string
  const wrong: string[] = []
  for (const [name, digest] of expected) if (sha(await fs.readFile(path.join(mpB, name))) !== digest) wrong.push(name)
  await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'pl', ID: 'r' })
  t.deepEqual(wrong, [], 'every acknowledged and flushed write is there after the failover')
})
