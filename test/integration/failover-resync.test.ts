/**
 * Failover and resync on a real three-node cluster: a replica that was away is brought
 * back by copying only what differs; a coordinator killed with SIGKILL in the middle of an
 * fio workload loses no write it had acknowledged (fio verifies every fsynced file on the
 * node that takes over); the killed node rejoins and ends byte-identical.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, TEST_NODE_TTL, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { PXCTL_BIN } from '../helpers/paths'
import { MiB, pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'
import { runCommand, runFio } from '../helpers/run'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'])
})

test.after.always(async () => {
  await cluster?.stop()
})




const fioJob = (file: string) => ['--name=job', `--filename=${file}`, '--rw=write', '--bs=64k', '--size=4M', '--ioengine=psync', '--verify=crc32c', '--verify_state_save=0']

const inSyncOf = async (n: ClusterNode, name: string) => (await new ApiClient(n.apiUrl).inspectVolume(name)).replicas.filter((r) => r.inSync).map((r) => r.nodeId).sort()

test('a replica that was away is resynced by copying only what changed meanwhile', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'rs', Opts: { size: '256M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('rs')
  const [coordinator, away] = info.replicas.map((r) => cluster.node(r.nodeId))
  const mp = (await pluginOk(coordinator!, '/VolumeDriver.Mount', { Name: 'rs', ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'first.bin'), randomBytes(8 * MiB))

  await away!.stop()
  const meanwhile = randomBytes(16 * MiB)
  await writeSynced(path.join(mp, 'meanwhile.bin'), meanwhile)
  const degraded = await new ApiClient(coordinator!.apiUrl).inspectVolume('rs')
  t.true(degraded.degraded, 'the volume says it is degraded')
  t.deepEqual(degraded.replicas.filter((r) => r.inSync).map((r) => r.nodeId), [coordinator!.nodeId])

  await cluster.start(away!.nodeId)
  // Not a terminal: plain timestamped lines, and it ends once every replica is in sync.
  const watch = await runCommand(process.execPath, [PXCTL_BIN, '--api', coordinator!.apiUrl, 'volume', 'inspect', 'rs', '--watch'], 60_000)
  t.is(watch.code, 0, watch.stdout)
  t.regex(watch.stdout, /^\d{4}-\d\d-\d\dT[\d:.]+Z rs: /m)
  t.regex(watch.stdout.trim().split('\n').pop()!, new RegExp(`${away!.nodeId} in-sync`))
  await waitFor('the returning replica to be in sync', async () => (await inSyncOf(coordinator!, 'rs')).length === 2, 60_000, 250)
  const done = await new ApiClient(coordinator!.apiUrl).inspectVolume('rs')
  t.false(done.degraded)
  t.is(done.lastResync?.state, 'done')
  const copied = done.lastResync!.copiedBytes
  t.log(`written while away: ${meanwhile.length} bytes of file data; resync compared ${done.lastResync!.scannedBytes} bytes and copied ${copied}`)
  t.true(copied > 0, 'something was copied')
  // ext4 also rewrote its journal, bitmaps and inode table while the replica was away.
  t.true(copied <= meanwhile.length + 8 * MiB, `copied ${copied} bytes for ${meanwhile.length} written`)
  t.true(copied < done.size / 4, 'far less than the whole volume')
  t.is(done.lastResync!.method, 'dirty-map', 'the coordinator did not change: its dirty-region map was used')
  t.true(done.lastResync!.scannedBytes <= meanwhile.length + 16 * MiB, 'only the dirty regions were compared')

  await pluginOk(coordinator!, '/VolumeDriver.Unmount', { Name: 'rs', ID: 'w' })
  t.is(await replicaDigest(coordinator!, info.id), await replicaDigest(away!, info.id), 'replicas identical after resync')
})

test('kill -9 of the coordinator during fio: the next node takes over, every fsynced file verifies, the old node rejoins', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'fo', Opts: { size: '256M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('fo')
  const [victim, survivor] = info.replicas.map((r) => cluster.node(r.nodeId))
  const mp = (await pluginOk(victim!, '/VolumeDriver.Mount', { Name: 'fo', ID: 'v' })).Mountpoint as string

  // Each fio run writes one file with verify headers and fsyncs it at the end: a file whose
  // run exited 0 was acknowledged as durable.
  const completed: string[] = []
  let stop = false
  const writer = (async () => {
    for (let i = 0; !stop && i < 200; i++) {
      const name = `f${i}`
      const r = await runFio([...fioJob(path.join(mp, name)), '--do_verify=0', '--end_fsync=1'])
      if (r.code !== 0) break
      completed.push(name)
    }
  })()
  await waitFor('fio to complete a few files', async () => completed.length >= 3, 60_000, 50)
  const killedAt = Date.now()
  await victim!.kill()
  stop = true
  await writer
  t.log(`${completed.length} files fsynced before the kill`)

  await waitFor('the killed node to go offline', async () => {
    const nodes = await new ApiClient(survivor!.apiUrl).listNodes()
    return nodes.find((n) => n.nodeId === victim!.nodeId)?.online === false
  }, (TEST_NODE_TTL + 15) * 1000, 100)
  const m = await waitFor('a mount on the surviving node', async () => {
    const r = await pluginCall(survivor!.pluginSocket, '/VolumeDriver.Mount', { Name: 'fo', ID: 's' })
    return r.body.Err === '' ? (r.body.Mountpoint as string) : undefined
  }, 30_000, 250)
  await writeSynced(path.join(m, 'after-failover'), Buffer.from('ok'))
  const failoverMs = Date.now() - killedAt
  t.log(`failover: ${failoverMs} ms from kill -9 to the first fsynced write on ${survivor!.nodeId} (node ttl ${TEST_NODE_TTL} s)`)

  for (const name of completed) {
    const r = await runFio([...fioJob(path.join(m, name)), '--verify_only'])
    t.is(r.code, 0, `fio verify of ${name}: ${r.out.slice(-400)}`)
  }

  // The killed node restarts, cleans up its stale mount, and is resynced from the survivor.
  await cluster.start(victim!.nodeId)
  await waitFor('the old coordinator to be back in sync', async () => (await inSyncOf(survivor!, 'fo')).length === 2, 60_000, 250)
  const rejoined = await new ApiClient(survivor!.apiUrl).inspectVolume('fo')
  t.is(rejoined.lastResync?.method, 'checksum-scan', 'a replica the old coordinator held is compared block by block')
  t.log(`rejoin resync: compared ${rejoined.lastResync?.scannedBytes} bytes, copied ${rejoined.lastResync?.copiedBytes}`)
  await pluginOk(survivor!, '/VolumeDriver.Unmount', { Name: 'fo', ID: 's' })
  t.is(await replicaDigest(survivor!, info.id), await replicaDigest(victim!, info.id), 'replicas identical after rejoin')
})

test('ha-update 1 -> 2 -> 3 -> 2 while a writer runs; data intact at each step', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'ha', Opts: { size: '128M', repl: '1' } })
  const holder = cluster.node((await new ApiClient(a.apiUrl).inspectVolume('ha')).replicas[0]!.nodeId)
  const mp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: 'ha', ID: 'w' })).Mountpoint as string
  const api = new ApiClient(holder.apiUrl)
  const written = new Map<string, string>()
  let stop = false
  let writerError: unknown
  let writes = 0
  // A check holds the writer between two files: it reads only files no write is changing.
  let held: Promise<void> | undefined
  let idle: (() => void) | undefined
  const writer = (async () => {
    // Over and over the same 64 files (16 MiB): a writer faster than the changes must not fill the 128 MiB volume.
    for (let i = 0; !stop; i++, writes++) {
      while (held) {
        idle?.()
        await held
      }
      const data = randomBytes(256 * 1024)
      await writeSynced(path.join(mp, `w${i % 64}`), data)
      written.set(`w${i % 64}`, sha(data))
    }
  })().catch((err) => { writerError = err })
  const checkData = async (step: string) => {
    let release!: () => void
    held = new Promise<void>((resolve) => { release = resolve })
    await Promise.race([new Promise<void>((resolve) => { idle = resolve }), writer])
    try {
      for (const [file, digest] of written) t.is(sha(await fs.readFile(path.join(mp, file))), digest, `${file} after ${step}`)
    } finally {
      held = undefined
      idle = undefined
      release()
    }
  }

  for (const repl of [2, 3]) {
    const v = await api.haUpdate('ha', repl)
    t.is(v.replicas.length, repl)
    await waitFor(`repl=${repl} in sync`, async () => (await inSyncOf(holder, 'ha')).length === repl, 60_000, 250)
    await checkData(`raising to ${repl}`)
  }
  const lowered = await api.haUpdate('ha', 2)
  t.is(lowered.replicas.length, 2)
  t.true(lowered.replicas.some((r) => r.nodeId === holder.nodeId), 'the coordinator keeps its own replica')
  await new Promise((r) => setTimeout(r, 1000))
  stop = true
  await writer
  t.is(writerError, undefined, 'the writer never saw an error')
  t.true(writes > 3, `${writes} files written during the changes`)
  await checkData('lowering to 2')
  const final = await api.inspectVolume('ha')
  t.false(final.degraded)
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'ha', ID: 'w' })
  const digests = await Promise.all(final.replicas.map((r) => replicaDigest(cluster.node(r.nodeId), final.id)))
  t.is(new Set(digests).size, 1, 'the remaining replicas are identical')
  const dropped = cluster.nodes.find((n) => !final.replicas.some((r) => r.nodeId === n.nodeId))!
  await waitFor('the dropped replica to be deleted', async () => {
    try {
      await fs.access(path.join(dropped.dataDir, 'replicas', final.id))
      return false
    } catch {
      return true
    }
  }, 10_000)
})

test('the dirty-region map survives a restart of the coordinator', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'dm', Opts: { size: '256M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('dm')
  const [coordinator, away] = info.replicas.map((r) => cluster.node(r.nodeId))
  let mp = (await pluginOk(coordinator!, '/VolumeDriver.Mount', { Name: 'dm', ID: 'w' })).Mountpoint as string
  await away!.stop()
  await writeSynced(path.join(mp, 'before-restart.bin'), randomBytes(6 * MiB))
  // The coordinator restarts (its volumes are unmounted at shutdown) and attaches again.
  await coordinator!.stop()
  const restarted = await cluster.start(coordinator!.nodeId)
  mp = (await pluginOk(restarted, '/VolumeDriver.Mount', { Name: 'dm', ID: 'w2' })).Mountpoint as string
  await writeSynced(path.join(mp, 'after-restart.bin'), randomBytes(6 * MiB))
  await cluster.start(away!.nodeId)
  await waitFor('the replica to be in sync', async () => (await inSyncOf(restarted, 'dm')).length === 2, 60_000, 250)
  const done = await new ApiClient(restarted.apiUrl).inspectVolume('dm')
  t.is(done.lastResync?.method, 'dirty-map')
  t.log(`resync after a coordinator restart: compared ${done.lastResync!.scannedBytes}, copied ${done.lastResync!.copiedBytes} for 12 MiB written`)
  t.true(done.lastResync!.scannedBytes < 64 * MiB)
  await pluginOk(restarted, '/VolumeDriver.Unmount', { Name: 'dm', ID: 'w2' })
  t.is(await replicaDigest(restarted, info.id), await replicaDigest(away!, info.id))
})
