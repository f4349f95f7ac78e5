/**
 * Only the node the kvdb names may create or drop a replica (src/replicas/grants.ts). Three
 * real daemons and etcd, peer links in the default mode (TLS-PSK from the cluster secret).
 * A raw peer client that holds the cluster secret, as an unknown node and posing as the
 * volume's creator and holder, asks a node to drop and to create its replica of a volume:
 * refused with NOT_COORDINATOR, also once the record no longer lists that node (what the
 * old check let through), and the replica's files and the data stay as they were. The
 * ordinary flows still make and drop replicas: create with repl=2, ha-update up (from a
 * node that neither created nor holds it) and down, delete; no grant is left behind.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { existsSync, promises as fs } from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { ApiClient } from '../../src/api/client'
import { EtcdKvdb } from '../../src/kvdb/etcd'
import { keys } from '../../src/kvdb/kvdb'
import { PeerLinks, type OutgoingRequest } from '../../src/replication'
import type { VolumeRecord } from '../../src/volumes/types'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginOk as call, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
let kv: EtcdKvdb
const log = pino({ level: 'silent' })
const intruders: PeerLinks[] = []

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'])
  kv = await EtcdKvdb.open({ endpoints: [cluster.etcd.endpoint], clusterId: cluster.clusterId, log })
})

test.after.always(async () => {
  for (const links of intruders) await links.close().catch(() => undefined)
  await kv?.close().catch(() => undefined)
  await cluster?.stop()
})

/** A peer client with the cluster secret, naming itself `nodeId` in the handshake. */
function intruder(nodeId: string): PeerLinks {
  const links = new PeerLinks({ nodeId, clusterId: cluster.clusterId, secret: cluster.secret, psk: true, log })
  intruders.push(links)
  return links
}

const hasReplica = (n: ClusterNode, volumeId: string) => existsSync(path.join(n.dataDir, 'replicas', volumeId))

async function refusedCode(links: PeerLinks, target: ClusterNode, req: OutgoingRequest): Promise<string> {
  try {
    await links.link(target.nodeId, `127.0.0.1:${target.peerPort}`).request(req)
    return 'served'
  } catch (err) {
    return String((err as { code?: unknown }).code)
  }
}

test.serial('a peer holding the cluster secret that coordinates nothing cannot drop or create a replica; the replica stays intact', async (t) => {
  const a = cluster.node('node-a')
  await call(a, '/VolumeDriver.Create', { Name: 'guarded', Opts: { size: '16M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('guarded')
  const holders = info.replicas.map((r) => r.nodeId)
  const target = cluster.node(holders.find((n) => n !== 'node-a') ?? holders[0]!)
  const payload = randomBytes(1024 * 1024)
  let mp = (await call(a, '/VolumeDriver.Mount', { Name: 'guarded', ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await call(a, '/VolumeDriver.Unmount', { Name: 'guarded', ID: 'w' })
  const before = await replicaDigest(target, info.id)

  // An unknown node, and one posing as the node that created the volume.
  for (const as of ['node-x', 'node-a']) {
    const links = intruder(as)
    t.is(await refusedCode(links, target, { t: 'drop', vol: info.id }), 'NOT_COORDINATOR', `${as}: drop of a listed replica`)
    t.is(await refusedCode(links, target, { t: 'create', vol: info.id, size: info.size }), 'NOT_COORDINATOR', `${as}: create`)
  }

  // The record stops listing the target (as after a lost ha-update): the old check would have let the drop through.
  const entry = (await kv.get<VolumeRecord>(keys.volume('guarded')))!
  const unlisted = { ...entry.value, replicas: entry.value.replicas.filter((r) => r.nodeId !== target.nodeId), inSync: entry.value.inSync.filter((n) => n !== target.nodeId) }
  t.true(await kv.txn({ compares: [{ key: entry.key, modRevision: entry.modRevision }], puts: [{ key: entry.key, value: unlisted }] }))
  t.is(await refusedCode(intruder('node-y'), target, { t: 'drop', vol: info.id }), 'NOT_COORDINATOR', 'drop of a replica the kvdb does not list')
  const now = (await kv.get<VolumeRecord>(keys.volume('guarded')))!
  t.true(await kv.txn({ compares: [{ key: now.key, modRevision: now.modRevision }], puts: [{ key: now.key, value: entry.value }] }))

  t.true(hasReplica(target, info.id))
  t.is(await replicaDigest(target, info.id), before, `node ${target.nodeId}'s replica files are unchanged`)

  // Posing as the volume's holder while it is attached there: still no grant, still refused.
  mp = (await call(a, '/VolumeDriver.Mount', { Name: 'guarded', ID: 'r' })).Mountpoint as string
  t.is((await kv.get<{ nodeId: string }>(keys.attachment('guarded')))?.value.nodeId, 'node-a')
  t.is(await refusedCode(intruders[1]!, target, { t: 'drop', vol: info.id }), 'NOT_COORDINATOR', 'posing as the holder')
  t.is(sha(await fs.readFile(path.join(mp, 'payload.bin'))), sha(payload), 'the data reads back')
  await call(a, '/VolumeDriver.Unmount', { Name: 'guarded', ID: 'r' })

  const refusals = target.logs().split('\n').filter((l) => l.includes('"msg":"replica request refused"'))
  t.true(refusals.length >= 1 && refusals.length <= 4, `refusals logged once per peer and interval (${refusals.length} lines)`)
  t.true(refusals.some((l) => l.includes('"remote":"node-x"') && l.includes(info.id)), refusals.join('\n'))
})

test.serial('ordinary flows still make and drop replicas: create repl=2, ha-update up from another node and down, delete; no grant is left', async (t) => {
  const [a, b, c] = ['node-a', 'node-b', 'node-c'].map((n) => cluster.node(n))
  await call(a!, '/VolumeDriver.Create', { Name: 'flows', Opts: { size: '16M', repl: '2' } })
  const info = await new ApiClient(a!.apiUrl).inspectVolume('flows')
  const placed = info.replicas.map((r) => r.nodeId).sort()
  t.is(placed.length, 2)
  for (const n of cluster.nodes) t.is(hasReplica(n, info.id), placed.includes(n.nodeId), `${n.nodeId} holds a replica as the record says`)

  const third = cluster.nodes.find((n) => !placed.includes(n.nodeId))!
  const other = cluster.nodes.find((n) => n.nodeId !== 'node-a' && n !== third) ?? b!
  const up = await new ApiClient(other.apiUrl).haUpdate('flows', 3)
  t.is(up.replicas.length, 3)
  t.true(hasReplica(third, info.id), `ha-update on ${other.nodeId} made the replica on ${third.nodeId}`)

  const down = await new ApiClient(c!.apiUrl).haUpdate('flows', 1)
  const kept = down.replicas.map((r) => r.nodeId)
  t.is(kept.length, 1)
  for (const n of cluster.nodes) t.is(hasReplica(n, info.id), kept.includes(n.nodeId), `after lowering, ${n.nodeId} holds a replica only if kept`)

  await new ApiClient(b!.apiUrl).deleteVolume('flows')
  for (const n of cluster.nodes) t.false(hasReplica(n, info.id), `delete dropped the replica on ${n.nodeId}`)
  t.deepEqual((await kv.list(keys.replicaGrants())).map((e) => e.key), [], 'every grant was deleted after its request')
  for (const n of cluster.nodes) {
    const refused = n.logs().split('\n').filter((l) => l.includes('"msg":"replica request refused"') && l.includes(info.id))
    t.deepEqual(refused, [], `${n.nodeId} refused nothing of the ordinary flows`)
  }
})
