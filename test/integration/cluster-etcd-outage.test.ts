/**
 * etcd stops while the cluster runs: control operations fail with a clear error and
 * change nothing, a mounted volume keeps its data path, and work resumes when etcd is
 * back, with nothing corrupted.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  await cluster?.stop()
})


test('control calls fail clearly while etcd is down; the data path and the data survive', async (t) => {
  const [a, b] = [cluster.node('node-a'), cluster.node('node-b')]
  t.is((await pluginCall(a.pluginSocket, '/VolumeDriver.Create', { Name: 'steady', Opts: { size: '48M', repl: '2' } })).body.Err, '')
  const mp = (await pluginCall(a.pluginSocket, '/VolumeDriver.Mount', { Name: 'steady', ID: 'm' })).body.Mountpoint as string
  const before = randomBytes(2 * 1024 * 1024)
  await writeSynced(path.join(mp, 'before.bin'), before)

  await cluster.etcd.kill()

  const started = Date.now()
  const create = await pluginCall(b.pluginSocket, '/VolumeDriver.Create', { Name: 'during', Opts: { size: '32M' } })
  t.regex(String(create.body.Err), /metadata store etcd:\/\/.* unavailable/)
  t.true(Date.now() - started < 15_000, 'the error comes in bounded time')
  const apiErr = await t.throwsAsync(new ApiClient(b.apiUrl).listVolumes())
  t.is((apiErr as { code?: string }).code, 'KVDB_UNAVAILABLE')
  const mount = await pluginCall(b.pluginSocket, '/VolumeDriver.Mount', { Name: 'steady', ID: 'other' })
  t.regex(String(mount.body.Err), /unavailable/)

  // The mounted volume needs no metadata to write while every replica answers.
  const during = randomBytes(1024 * 1024)
  await writeSynced(path.join(mp, 'during.bin'), during)
  // Unmount works locally; the detach is recorded when etcd is back.
  t.is((await pluginCall(a.pluginSocket, '/VolumeDriver.Unmount', { Name: 'steady', ID: 'm' })).body.Err, '')

  await cluster.etcd.restart()
  await waitFor('the cluster to answer again', async () => {
    const r = await pluginCall(b.pluginSocket, '/VolumeDriver.Create', { Name: 'after', Opts: { size: '32M', repl: '2' } })
    return r.body.Err === ''
  }, 30_000, 500)
  const names = (await new ApiClient(b.apiUrl).listVolumes()).map((v) => v.name).sort()
  t.deepEqual(names, ['after', 'steady'], 'nothing half-created while etcd was down')
  await waitFor('the detach to be recorded', async () => (await new ApiClient(b.apiUrl).inspectVolume('steady')).state === 'detached', 15_000)

  const m2 = await pluginCall(b.pluginSocket, '/VolumeDriver.Mount', { Name: 'steady', ID: 'b' })
  t.is(m2.body.Err, '', m2.raw)
  t.is(sha(await fs.readFile(path.join(m2.body.Mountpoint as string, 'before.bin'))), sha(before))
  t.is(sha(await fs.readFile(path.join(m2.body.Mountpoint as string, 'during.bin'))), sha(during))
  await pluginCall(b.pluginSocket, '/VolumeDriver.Unmount', { Name: 'steady', ID: 'b' })
  const info = await new ApiClient(b.apiUrl).inspectVolume('steady')
  t.false(info.degraded, 'both replicas stayed in sync')
})
