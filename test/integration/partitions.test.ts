/**
 * Real network partitions, one link at a time: every node and etcd in its own network
 * namespace, links cut with DROP rules. A record writer on the coordinator fsyncs
 * self-checking records; after each fault the volume fails over or heals, and every record
 * the writer saw acknowledged must be there, intact, on the node that serves it next.
 */
import test from 'ava'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import type { VolumeInfo } from '../../src/volumes/types'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { checkRecords, lostAfterFailover, startRecordWriter } from '../helpers/records'
import { pluginOk } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
const RECORD = 4096

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'], { network: true })
})

test.after.always(async () => {
  await cluster?.stop()
})

const api = (n: ClusterNode) => new ApiClient(n.apiUrl, cluster.apiToken)
const inSync = (v: VolumeInfo) => v.replicas.filter((r) => r.inSync).map((r) => r.nodeId).sort()

/** A repl=2 volume mounted on one of its replicas: that node, the other replica, the third node. */
async function volumeOn(name: string) {
  const any = cluster.nodes[0]!
  // Right after a heal a peer link may still be on a connection that died in the partition
  // (TCP backs its retransmissions off); it is dropped within its 10 s silence limit.
  await waitFor(`volume ${name} created`, () => pluginOk(any, '/VolumeDriver.Create', { Name: name, Opts: { size: '64M', repl: '2' } }).then(() => true), 30_000, 500)
  const info = await api(any).inspectVolume(name)
  const [coordinator, replica] = info.replicas.map((r) => cluster.node(r.nodeId)) as [ClusterNode, ClusterNode]
  const other = cluster.nodes.find((n) => n !== coordinator && n !== replica)!
  const mountpoint = (await pluginOk(coordinator, '/VolumeDriver.Mount', { Name: name, ID: 'w' })).Mountpoint as string
  return { info, coordinator, replica, other, mountpoint }
}

/** After a heal, a node's control calls work again within seconds (a dead connection is not kept for minutes). */
async function metadataBack(t: { log(...v: unknown[]): void; true(v: boolean, m?: string): void }, n: ClusterNode): Promise<void> {
  const healed = Date.now()
  await waitFor(`${n.nodeId}'s metadata store`, async () => {
    try {
      await api(n).listVolumes()
      return (await api(n).listNodes()).find((m) => m.nodeId === n.nodeId)?.online === true
    } catch {
      return false
    }
  }, 30_000, 250)
  const seconds = (Date.now() - healed) / 1000
  t.log(`${n.nodeId}: metadata store and lease back ${seconds.toFixed(1)} s after the heal`)
  t.true(seconds < 20, `${seconds} s`)
}

const offline = (viewer: ClusterNode, nodeId: string) => waitFor(`${nodeId} offline`, async () => {
  const nodes = await api(viewer).listNodes()
  return nodes.some((n) => n.nodeId === nodeId && !n.online)
}, 30_000, 250)

test.serial('the coordinator cut from etcd only: another node takes the volume over, the old one is fenced, nothing acknowledged is lost', async (t) => {
  const { coordinator, replica, mountpoint } = await volumeOn('p-etcd')
  const writer = startRecordWriter(path.join(mountpoint, 'records'), { recordBytes: RECORD })
  await writer.waitFor(20)
  cluster.network!.cut(coordinator.nodeId, 'etcd')
  await offline(replica, coordinator.nodeId)
  // The data path needs no etcd: the writer has kept going meanwhile.
  const took = (await pluginOk(replica, '/VolumeDriver.Mount', { Name: 'p-etcd', ID: 'takeover' })).Mountpoint as string
  await Promise.race([writer.done, new Promise((r) => setTimeout(r, 30_000))])
  t.truthy(writer.error, 'the old coordinator can no longer write once the replicas took the new epoch')
  await writer.stop()
  const result = checkRecords(path.join(took, 'records'), RECORD, writer.acked)
  t.log(`acknowledged ${writer.acked.size} records before the fence (${writer.error}); checked ${result.checked}`)
  t.deepEqual(result.lost, [], 'every acknowledged record is on the node that took over')
  cluster.network!.heal()
  await metadataBack(t, coordinator)
  await pluginOk(replica, '/VolumeDriver.Unmount', { Name: 'p-etcd', ID: 'takeover' })
  await pluginOk(coordinator, '/VolumeDriver.Unmount', { Name: 'p-etcd', ID: 'w' })
})

test.serial('the coordinator cut from its peer replica only: the replica is demoted, writes go on, it resyncs after the heal, nothing is lost', async (t) => {
  const { coordinator, replica, mountpoint } = await volumeOn('p-peer')
  const writer = startRecordWriter(path.join(mountpoint, 'records'), { recordBytes: RECORD })
  await writer.waitFor(20)
  cluster.network!.cut(coordinator.nodeId, replica.nodeId)
  await waitFor('the unreachable replica demoted', async () => inSync(await api(coordinator).inspectVolume('p-peer')).length === 1, 40_000, 250)
  const before = writer.acked.size
  await writer.waitFor(before + 20)
  t.is(writer.error, undefined, 'the writer never saw an error')
  cluster.network!.heal()
  await waitFor('the replica back in sync', async () => inSync(await api(coordinator).inspectVolume('p-peer')).length === 2, 60_000, 250)
  await writer.stop()
  const lost = await lostAfterFailover('p-peer', coordinator, replica, 'records', RECORD, writer.acked)
  t.log(`acknowledged ${writer.acked.size} records, ${writer.acked.size - before} of them while degraded`)
  t.deepEqual(lost, [], 'after a failover to the resynced replica')
})

test.serial('a one-way cut (the coordinator cannot send to its replica) is a demotion too, not a hang', async (t) => {
  const { coordinator, replica, mountpoint } = await volumeOn('p-oneway')
  const writer = startRecordWriter(path.join(mountpoint, 'records'), { recordBytes: RECORD })
  await writer.waitFor(10)
  cluster.network!.cut(coordinator.nodeId, replica.nodeId, 'to')
  await waitFor('the replica demoted', async () => inSync(await api(coordinator).inspectVolume('p-oneway')).length === 1, 40_000, 250)
  const before = writer.acked.size
  await writer.waitFor(before + 10)
  cluster.network!.heal()
  await waitFor('the replica back in sync', async () => inSync(await api(coordinator).inspectVolume('p-oneway')).length === 2, 60_000, 250)
  await writer.stop()
  t.is(writer.error, undefined)
  t.deepEqual(await lostAfterFailover('p-oneway', coordinator, replica, 'records', RECORD, writer.acked), [])
})

test.serial('the coordinator cut from everything: its writes fail unacknowledged, the volume fails over, nothing acknowledged is lost', async (t) => {
  const { coordinator, replica, mountpoint } = await volumeOn('p-isolated')
  const writer = startRecordWriter(path.join(mountpoint, 'records'), { recordBytes: RECORD })
  await writer.waitFor(20)
  cluster.network!.isolate(coordinator.nodeId)
  await offline(replica, coordinator.nodeId)
  const took = (await pluginOk(replica, '/VolumeDriver.Mount', { Name: 'p-isolated', ID: 'takeover' })).Mountpoint as string
  const result = checkRecords(path.join(took, 'records'), RECORD, writer.acked)
  t.log(`acknowledged ${writer.acked.size} records; writer: ${writer.error ?? 'still blocked'}`)
  t.deepEqual(result.lost, [], 'every record acknowledged before (or while) the coordinator was cut off is on the new one')
  cluster.network!.heal()
  await Promise.race([writer.done, new Promise((r) => setTimeout(r, 30_000))])
  await writer.stop()
  t.deepEqual(checkRecords(path.join(took, 'records'), RECORD, writer.acked).lost, [], 'nor any acknowledged after the heal: the old coordinator is fenced')
  await pluginOk(replica, '/VolumeDriver.Unmount', { Name: 'p-isolated', ID: 'takeover' })
  await pluginOk(coordinator, '/VolumeDriver.Unmount', { Name: 'p-isolated', ID: 'w' })
})

test.serial('a replica cut from etcd only keeps its place: writes go on and it stays in sync', async (t) => {
  const { coordinator, replica, mountpoint } = await volumeOn('p-replica-etcd')
  const writer = startRecordWriter(path.join(mountpoint, 'records'), { recordBytes: RECORD })
  await writer.waitFor(10)
  cluster.network!.cut(replica.nodeId, 'etcd')
  await offline(coordinator, replica.nodeId)
  const before = writer.acked.size
  await writer.waitFor(before + 20)
  t.deepEqual(inSync(await api(coordinator).inspectVolume('p-replica-etcd')), [coordinator.nodeId, replica.nodeId].sort())
  cluster.network!.heal()
  await writer.stop()
  t.is(writer.error, undefined)
  // The failover mounts on the replica: its metadata store must be back first (its client
  // retries on a backoff after the calls it made while cut off failed).
  await metadataBack(t, replica)
  t.deepEqual(await lostAfterFailover('p-replica-etcd', coordinator, replica, 'records', RECORD, writer.acked), [])
})

test.serial('a node cut from etcd for longer than a call deadline has its metadata store back within seconds of the heal', async (t) => {
  const n = cluster.node('node-c')
  cluster.network!.cut(n.nodeId, 'etcd')
  const refused = await t.throwsAsync(api(n).createVolume('p-heal', { size: '32M' }))
  t.regex(String(refused), /metadata store|unavailable/)
  await new Promise((r) => setTimeout(r, 8_000))
  cluster.network!.heal()
  await metadataBack(t, n)
  await api(n).createVolume('p-heal', { size: '32M' })
})
