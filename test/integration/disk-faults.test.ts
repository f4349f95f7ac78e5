/**
 * A replica's disk that stops answering, or fails an fsync: the coordinator must not wait on
 * it for ever, must not acknowledge a write it does not hold, and must bring it back once
 * the disk answers again. The replica node's data dir is on the power-loss file system,
 * which stalls and fails on command.
 */
import test from 'ava'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import type { VolumeInfo } from '../../src/volumes/types'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { lostAfterFailover, startRecordWriter } from '../helpers/records'
import { pluginOk } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
const RECORD = 4096

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'], { powerLoss: ['node-b'] })
})

test.after.always(async () => {
  await cluster?.stop()
})

const inSync = (v: VolumeInfo) => v.replicas.filter((r) => r.inSync).map((r) => r.nodeId).sort()

test.serial('a replica whose disk stalls is demoted, writes go on, and it is resynced once the disk answers', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'stall', Opts: { size: '64M', repl: '2' } })
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'stall', ID: 'w' })).Mountpoint as string
  const writer = startRecordWriter(path.join(mp, 'records'), { recordBytes: RECORD })
  await writer.waitFor(20)
  await b.disk!.stall(20_000)
  const stalledAt = Date.now()
  await waitFor('the stalled replica demoted', async () => inSync(await api.inspectVolume('stall')).length === 1, 30_000, 250)
  const before = writer.acked.size
  await writer.waitFor(before + 20)
  t.log(`demoted and writing again ${((Date.now() - stalledAt) / 1000).toFixed(1)} s into a 20 s stall`)
  t.true(Date.now() - stalledAt < 20_000, 'the coordinator did not wait for the disk')
  await waitFor('the replica back in sync', async () => inSync(await api.inspectVolume('stall')).length === 2, 90_000, 500)
  await writer.stop()
  t.is(writer.error, undefined)
  t.deepEqual(await lostAfterFailover('stall', a, b, 'records', RECORD, writer.acked), [], 'every acknowledged record, read from the resynced replica')
})

test.serial('a replica whose fsync fails is demoted, never reports that flush as done later, and is resynced from a fresh open', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'eio', Opts: { size: '64M', repl: '2' } })
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'eio', ID: 'w' })).Mountpoint as string
  const writer = startRecordWriter(path.join(mp, 'records'), { recordBytes: RECORD, intervalMs: 5 })
  await writer.waitFor(20)
  await b.disk!.failFsyncs(1)
  await waitFor('the failed fsync seen', async () => (await b.disk!.status()).failedFsyncs > 0, 30_000, 100)
  await waitFor('the replica back in sync after its failed flush', async () => {
    const v = await api.inspectVolume('eio')
    return inSync(v).length === 2 && v.lastResync?.state === 'done' && v.lastResync.nodeId === 'node-b'
  }, 90_000, 500)
  t.regex(b.logs(), /reopening a replica whose flush had failed/)
  const before = writer.acked.size
  await writer.waitFor(before + 10)
  await writer.stop()
  t.is(writer.error, undefined, 'the application never saw the replica\'s failure')
  t.deepEqual(await lostAfterFailover('eio', a, b, 'records', RECORD, writer.acked), [], 'every acknowledged record, read from the replica whose fsync failed')
})
