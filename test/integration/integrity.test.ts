/**
 * Every block read is checked against its crc32c. A corrupted block on one replica is
 * served from another and rewritten (read repair); on a lone replica the read fails with
 * EIO and the log names the block: wrong bytes are never returned.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, type Cluster } from '../helpers/cluster'
import { corruptOneBlock, MiB, pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  await cluster?.stop()
})




const dropCaches = () => execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'])

test('a corrupted block is served from the other replica and repaired', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'rr', Opts: { size: '64M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('rr')
  let mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'rr', ID: '1' })).Mountpoint as string
  const payload = randomBytes(4 * MiB)
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'rr', ID: '1' })

  const block = corruptOneBlock(a, info.id)
  mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'rr', ID: '2' })).Mountpoint as string
  dropCaches()
  t.is(sha(await fs.readFile(path.join(mp, 'payload.bin'))), sha(payload), 'the right bytes, from the good replica')
  t.regex(a.logs(), new RegExp(`"block":${block}[,}].*read repair: checksum mismatch served from another replica and rewritten`))
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'rr', ID: '2' })
  t.is(await replicaDigest(a, info.id), await replicaDigest(cluster.node('node-b'), info.id), 'the bad replica was rewritten')
})

test('on a lone replica a corrupted block fails the read with EIO, naming the block', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'lone', Opts: { size: '64M', repl: '1' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('lone')
  const holder = cluster.node(info.replicas[0]!.nodeId)
  let mp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: 'lone', ID: '1' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), randomBytes(4 * MiB))
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'lone', ID: '1' })

  const block = corruptOneBlock(holder, info.id)
  mp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: 'lone', ID: '2' })).Mountpoint as string
  dropCaches()
  const err = await t.throwsAsync(fs.readFile(path.join(mp, 'payload.bin')))
  t.is((err as NodeJS.ErrnoException).code, 'EIO')
  t.regex(holder.logs(), new RegExp(`checksum mismatch in block ${block} of `))
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'lone', ID: '2' })
})
