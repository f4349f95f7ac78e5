/**
 * A real three-node cluster (etcd + three pxd processes on loopback): replicated
 * volumes created through one node's plugin socket, written on one node, byte-identical
 * on every replica, and readable from any node, also one that holds no replica.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode, TEST_NODE_TTL } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { pluginOk, replicaFiles, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'])
})

test.after.always(async () => {
  await cluster?.stop()
})

const api = (n: ClusterNode) => new ApiClient(n.apiUrl)




test('every node sees the whole cluster online', async (t) => {
  for (const n of cluster.nodes) {
    const nodes = await api(n).listNodes()
    t.deepEqual(nodes.map((x) => [x.nodeId, x.online]).sort(), [['node-a', true], ['node-b', true], ['node-c', true]])
    t.true(nodes.every((x) => typeof x.peerAddress === 'string' && x.capacity !== null))
  }
  const status = await api(cluster.node('node-a')).status()
  t.deepEqual(status.cluster, { nodes: 3, online: 3 })
  t.regex(status.kvdb, /^etcd:\/\//)
})

test('repl=2: written on A, identical on both replicas, read back on every node', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'r2', Opts: { size: '64M', repl: '2' } })
  const info = await api(a).inspectVolume('r2')
  t.is(info.repl, 2)
  t.is(info.replicas.length, 2)
  t.is(new Set(info.replicas.map((r) => r.nodeId)).size, 2, 'replicas on distinct nodes')
  t.true(info.replicas.every((r) => r.inSync && r.online))

  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'r2', ID: 'w' })).Mountpoint as string
  const payload = randomBytes(6 * 1024 * 1024)
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await writeSynced(path.join(mp, 'note.txt'), Buffer.from('replicated\n'))
  const attached = await api(cluster.node('node-b')).inspectVolume('r2')
  t.is(attached.attachedOn, 'node-a')
  t.true(attached.epoch >= 1)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'r2', ID: 'w' })

  const holders = info.replicas.map((r) => cluster.node(r.nodeId))
  const [first, second] = await Promise.all(holders.map((n) => replicaFiles(n, info.id)))
  t.is(sha(first!.crc), sha(second!.crc), 'checksum files are byte-identical')
  t.is(sha(first!.data), sha(second!.data), 'data files are byte-identical')
  t.true(first!.crc.some((b) => b !== 0), 'the checksum file holds checksums')

  // Every node reads the same bytes: the one without a replica does all its I/O remotely.
  for (const n of cluster.nodes) {
    const m = (await pluginOk(n, '/VolumeDriver.Mount', { Name: 'r2', ID: `r-${n.nodeId}` })).Mountpoint as string
    t.is(sha(await fs.readFile(path.join(m, 'payload.bin'))), sha(payload), `payload read on ${n.nodeId}`)
    t.is(await fs.readFile(path.join(m, 'note.txt'), 'utf8'), 'replicated\n')
    await pluginOk(n, '/VolumeDriver.Unmount', { Name: 'r2', ID: `r-${n.nodeId}` })
  }
  const after = await api(a).inspectVolume('r2')
  t.is(after.epoch, attached.epoch + 3, 'each attach bumped the epoch')
  t.false(after.degraded)
})

test('a volume attached on one node cannot be mounted on another', async (t) => {
  const [a, b] = [cluster.node('node-a'), cluster.node('node-b')]
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'busy', Opts: { size: '32M', repl: '2' } })
  await pluginOk(a, '/VolumeDriver.Mount', { Name: 'busy', ID: '1' })
  const refused = await pluginCall(b.pluginSocket, '/VolumeDriver.Mount', { Name: 'busy', ID: '2' })
  t.regex(String(refused.body.Err), /attached on node node-a/)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'busy', ID: '1' })
  await pluginOk(b, '/VolumeDriver.Remove', { Name: 'busy' })
})

test('repl=3 on three nodes; with a node down repl=3 fails clearly', async (t) => {
  const b = cluster.node('node-b')
  await pluginOk(b, '/VolumeDriver.Create', { Name: 'r3', Opts: { size: '48M', repl: '3' } })
  const info = await api(b).inspectVolume('r3')
  t.deepEqual(info.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b', 'node-c'])
  const mp = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'r3', ID: 'x' })).Mountpoint as string
  await writeSynced(path.join(mp, 'three.bin'), randomBytes(2 * 1024 * 1024))
  await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'r3', ID: 'x' })
  const files = await Promise.all(cluster.nodes.map((n) => replicaFiles(n, info.id)))
  t.is(new Set(files.map((f) => sha(f.crc))).size, 1, 'three identical checksum files')
  t.is(new Set(files.map((f) => sha(f.data))).size, 1, 'three identical data files')

  const c = cluster.node('node-c')
  await c.stop()
  await waitFor('node-c to be offline', async () => {
    const nodes = await api(b).listNodes()
    return nodes.find((n) => n.nodeId === 'node-c')?.online === false
  }, (TEST_NODE_TTL + 10) * 1000)
  const refused = await pluginCall(b.pluginSocket, '/VolumeDriver.Create', { Name: 'r3b', Opts: { size: '32M', repl: '3' } })
  t.regex(String(refused.body.Err), /repl=3 needs 3 online nodes.*only 2 are available.*offline: node-c/)
  t.deepEqual((await api(b).listVolumes()).map((v) => v.name).sort(), ['r2', 'r3'], 'nothing was created')
  await cluster.start('node-c')
  await waitFor('node-c to be online again', async () => (await api(b).listNodes()).every((n) => n.online))
})
