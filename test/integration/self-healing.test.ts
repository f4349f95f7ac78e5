/**
 * Self-healing of volumes nobody has mounted, on a real three-node cluster (each node and
 * etcd in its own network namespace, so that one peer link can be cut): a replica that was
 * away is resynced in the background by the node with the in-sync copy; a resync resumes
 * after its coordinator is killed, after a mount on another node takes the volume over and
 * after a lost link, copying nothing twice; a target that loses power mid-copy (its data dir
 * on the power-loss file system) is resynced again and then serves every fsynced byte; the
 * copy rate holds to --resync-rate. Bytes
 * copied are counted where they land: the target node's pxd_replica_written_bytes_total.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { MiB, pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

const RATE = 24 * MiB

let cluster: Cluster

test.before(async () => {
  // Every data dir on the power-loss file system, so that any replica's node can lose power.
  cluster = await startCluster(['node-a', 'node-b', 'node-c'], { network: true, powerLoss: true, extraArgs: ['--resync-rate', `${RATE / MiB}M`, '--replace-after', '0'] })
})

test.after.always(async () => {
  await cluster?.stop()
})

const api = (n: ClusterNode) => new ApiClient(n.apiUrl, cluster.apiToken)
const inSyncOf = async (n: ClusterNode, name: string) => (await api(n).inspectVolume(name)).replicas.filter((r) => r.inSync).map((r) => r.nodeId).sort()

/** A node's count of bytes written to the replicas it holds (since it started). */
async function writtenTo(n: ClusterNode): Promise<number> {
  const text = await (await fetch(`${n.apiUrl}/metrics`)).text()
  const m = /^pxd_replica_written_bytes_total (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text)
  if (!m) throw new Error(`no pxd_replica_written_bytes_total on ${n.nodeId}`)
  return Number(m[1])
}

/**
 * A repl=2 volume whose second replica missed `bytes` of new file data: mounted on the first
 * replica's node, the second stopped, the data written and fsynced, then unmounted. The
 * second node is still stopped when this returns.
 */
async function degradedVolume(name: string, size: string, bytes: number) {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: name, Opts: { size, repl: '2' } })
  const info = await api(a).inspectVolume(name)
  const [source, away] = info.replicas.map((r) => cluster.node(r.nodeId))
  const third = cluster.nodes.find((n) => n !== source && n !== away)!
  const mp = (await pluginOk(source!, '/VolumeDriver.Mount', { Name: name, ID: 'w' })).Mountpoint as string
  const before = randomBytes(4 * MiB)
  await writeSynced(path.join(mp, 'before.bin'), before)
  await away!.stop()
  const meanwhile = randomBytes(bytes)
  await writeSynced(path.join(mp, 'meanwhile.bin'), meanwhile)
  await waitFor('the stopped replica demoted', async () => (await inSyncOf(source!, name)).length === 1, 30_000, 250)
  await pluginOk(source!, '/VolumeDriver.Unmount', { Name: name, ID: 'w' })
  return { source: source!, away: away!, third, id: info.id, files: { 'before.bin': sha(before), 'meanwhile.bin': sha(meanwhile) } }
}

/**
 * Once the healing claim is let go, the replicas must be identical; then `source` is stopped
 * and the volume mounted on `away` alone. Returns the digests of the files it reads there;
 * `source` is started again.
 */
async function failoverTo(away: ClusterNode, source: ClusterNode, name: string, id: string): Promise<Record<string, string>> {
  await waitFor('the healing claim let go', async () => (await api(source).inspectVolume(name)).state === 'detached', 20_000, 250)
  if (await replicaDigest(source, id) !== await replicaDigest(away, id)) throw new Error(`${name}: the replicas differ after the resync`)
  await source.stop()
  const mp = (await pluginOk(away, '/VolumeDriver.Mount', { Name: name, ID: 'f' })).Mountpoint as string
  const files = await filesOn(mp, { 'before.bin': '', 'meanwhile.bin': '' })
  await pluginOk(away, '/VolumeDriver.Unmount', { Name: name, ID: 'f' })
  await cluster.start(source.nodeId)
  return files
}

async function filesOn(mp: string, files: Record<string, string>): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  for (const name of Object.keys(files)) out[name] = sha(await fs.readFile(path.join(mp, name)))
  return out
}

test.serial('an unmounted degraded volume is resynced in the background once its replica is back, and a failover to that replica serves every fsynced byte', async (t) => {
  const { source, away, id, files } = await degradedVolume('heal-off', '256M', 16 * MiB)
  const back = Date.now()
  await cluster.start(away.nodeId)
  await waitFor('both replicas in sync, with nobody mounting', async () => (await inSyncOf(source, 'heal-off')).length === 2, 60_000, 250)
  const seconds = (Date.now() - back) / 1000
  // The in-sync set is committed a moment before the resync's record says it is done.
  const info = await waitFor('the resync recorded as done', async () => {
    const v = await api(source).inspectVolume('heal-off')
    return v.lastResync?.state === 'done' ? v : undefined
  }, 5_000, 100).catch(async () => api(source).inspectVolume('heal-off'))
  t.log(`in sync ${seconds.toFixed(1)} s after the node was started again; ${info.lastResync?.method} resync copied ${info.lastResync?.copiedBytes} bytes`)
  t.true(seconds < 30, `in sync within seconds of the restart (took ${seconds.toFixed(1)} s)`)
  t.is(info.lastResync?.state, 'done')
  t.is(info.lastResync?.coordinator, source.nodeId, 'the node with the in-sync copy ran it')
  t.false(info.degraded)
  t.deepEqual(await failoverTo(away, source, 'heal-off', id), files, 'every fsynced file, byte for byte, on the resynced replica')
  await waitFor('the first node back in sync too', async () => (await inSyncOf(away, 'heal-off')).length === 2, 60_000, 250)
})

test.serial('a background resync copies at --resync-rate', async (t) => {
  const { source, away } = await degradedVolume('heal-rate', '256M', 96 * MiB)
  await cluster.start(away.nodeId)
  const samples: Array<[number, number]> = []
  await waitFor('the resync done', async () => {
    samples.push([Date.now(), await writtenTo(away)])
    return (await inSyncOf(source, 'heal-rate')).length === 2
  }, 60_000, 200)
  // The middle of the copy: from the first sample past 20% of the bytes to the last below 80%.
  const total = samples[samples.length - 1]![1]
  const from = samples.find(([, b]) => b >= total * 0.2)!
  const to = [...samples].reverse().find(([, b]) => b <= total * 0.8)!
  const rate = (to[1] - from[1]) / ((to[0] - from[0]) / 1000)
  t.log(`copied ${total} bytes; ${(rate / MiB).toFixed(1)} MiB/s in the middle of the copy, limit ${RATE / MiB} MiB/s`)
  t.true(to[0] - from[0] >= 1000, 'the window is long enough to measure')
  t.true(Math.abs(rate / RATE - 1) <= 0.2, `within 20% of the limit (${(rate / MiB).toFixed(1)} MiB/s)`)
})

test.serial('a resync interrupted by a coordinator kill, a mount on another node and a lost link resumes each time, copies nothing twice and ends in sync', async (t) => {
  const changed = 144 * MiB
  const { source, away, third, id, files } = await degradedVolume('heal-resume', '512M', changed)
  await cluster.start(away.nodeId)
  const copiedPast = (bytes: number, what: string) => waitFor(what, async () => (await writtenTo(away)) >= bytes, 60_000, 100)

  // 1. The coordinator (the only in-sync node) is killed mid-copy and started again.
  await copiedPast(changed * 0.2, 'a fifth copied')
  await source.kill()
  const atKill = await writtenTo(away)
  await cluster.start(source.nodeId)

  // 2. A mount on the third node takes the volume over while the resumed resync runs.
  await copiedPast(atKill + changed * 0.15, 'the resync resumed by the restarted node')
  const mountStart = Date.now()
  const mp = (await pluginOk(third, '/VolumeDriver.Mount', { Name: 'heal-resume', ID: 'm' })).Mountpoint as string
  const mountSeconds = (Date.now() - mountStart) / 1000
  t.true(mountSeconds < 10, `the mount took ${mountSeconds.toFixed(1)} s`)
  const attached = await api(third).inspectVolume('heal-resume')
  t.is(attached.attachedOn, third.nodeId)

  // 3. The new coordinator loses its link to the replica being resynced, then gets it back.
  const atMount = await writtenTo(away)
  await copiedPast(atMount + changed * 0.1, 'the resync continued by the mounting node')
  cluster.network!.cut(third.nodeId, away.nodeId)
  await waitFor('the resync failed on the cut link', async () => (await api(third).inspectVolume('heal-resume')).lastResync?.state === 'failed', 40_000, 250)
  cluster.network!.heal()
  await waitFor('in sync at last', async () => (await inSyncOf(third, 'heal-resume')).length === 2, 90_000, 250)

  const total = await writtenTo(away)
  const info = await api(third).inspectVolume('heal-resume')
  t.log(`${changed} bytes of file data changed; ${total} bytes written to the returning replica in all (${info.lastResync?.attempt} attempts; mount took ${mountSeconds.toFixed(1)} s)`)
  // What had to be copied, plus ext4's own metadata, plus at most one 128 KiB region in flight per interruption.
  t.true(total <= changed + 12 * MiB + 3 * 128 * 1024, `nothing copied twice: ${total} bytes for ${changed} changed`)
  t.true((info.lastResync?.attempt ?? 0) >= 3, 'it took several attempts')
  t.deepEqual(await filesOn(mp, files), files, 'the files read back whole on the mounting node')
  await pluginOk(third, '/VolumeDriver.Unmount', { Name: 'heal-resume', ID: 'm' })
  t.is(await replicaDigest(source, id), await replicaDigest(away, id), 'replicas identical')
})

test.serial('the replica being resynced loses power mid-copy: once back it is resynced again and a failover to it serves every fsynced byte', async (t) => {
  const { source, away, id, files } = await degradedVolume('heal-power', '256M', 64 * MiB)
  await cluster.start(away.nodeId)
  await waitFor('a third copied', async () => (await writtenTo(away)) >= 24 * MiB, 60_000, 100)
  // Its page cache and every write it had not flushed are gone.
  await cluster.powerLoss(away.nodeId, 11)
  await cluster.start(away.nodeId)
  await waitFor('in sync after the power loss', async () => (await inSyncOf(source, 'heal-power')).length === 2, 90_000, 250)
  t.deepEqual(await failoverTo(away, source, 'heal-power', id), files, 'every fsynced file, byte for byte, on the replica that lost power')
})
