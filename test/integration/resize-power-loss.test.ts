/**
 * A replica grown on open, then its node loses power (the power-loss file system drops
 * every page that was not made durable): the grow was durable, so the replica comes back at
 * the new size, resyncs, and a failover to it serves every file, old and new, on the grown
 * file system.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs, statSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { MiB, pluginOk, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'], { powerLoss: ['node-b'] })
})

test.after.always(async () => {
  await cluster?.stop()
})

test('a replica grown at its open keeps the new size through a power loss of its node', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'grow-pl', Opts: { size: '128M', repl: '2' } })
  const info = await api.inspectVolume('grow-pl')
  const expected = new Map<string, string>()
  let mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-pl', ID: '1' })).Mountpoint as string
  const old = randomBytes(8 * MiB)
  await writeSynced(path.join(mp, 'old.bin'), old)
  expected.set('old.bin', sha(old))
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-pl', ID: '1' })

  await api.resize('grow-pl', '320M')
  // The mount opens both replicas at the new size: node-b's grows on its power-loss disk.
  mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-pl', ID: '2' })).Mountpoint as string
  const dataB = path.join(b.dataDir, 'replicas', info.id, 'data')
  t.is(statSync(dataB).size, 320 * MiB)
  await cluster.powerLoss('node-b', 7)
  t.is(statSync(dataB).size, 320 * MiB, 'the grown size survived the power loss')
  const superB = JSON.parse(await fs.readFile(path.join(b.dataDir, 'replicas', info.id, 'super.json'), 'utf8')) as { size: number; growingTo?: number }
  t.is(superB.size, 320 * MiB)
  t.is(superB.growingTo, undefined)

  // Past the old end of the volume, while node-b is away.
  const big = randomBytes(150 * MiB)
  await writeSynced(path.join(mp, 'big.bin'), big)
  expected.set('big.bin', sha(big))
  await cluster.start('node-b')
  await waitFor('node-b back in sync', async () => (await api.inspectVolume('grow-pl')).replicas.every((r) => r.inSync), 90_000, 250)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-pl', ID: '2' })

  const mpB = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'grow-pl', ID: '3' })).Mountpoint as string
  try {
    for (const [name, digest] of expected) t.is(sha(await fs.readFile(path.join(mpB, name))), digest, `${name} on node-b after the failover`)
  } finally {
    await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'grow-pl', ID: '3' })
  }
})
