/**
 * A rolling upgrade from a release whose peer links were plain WebSocket: node-a stands in
 * for the old release (PXD_PEER_PLAINTEXT=1: plain links, as that release had), node-b runs
 * this one with --peer-accept-plaintext. Replication works both ways: node-a's plain dial is
 * taken by node-b's port beside TLS-PSK, and node-b, whose TLS dial node-a answers as plain
 * HTTP, dials it plain from then on. Without the flag, node-b refuses the old node
 * (peer-psk.test.ts shows the refusal).
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'
import { promises as fs } from 'node:fs'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-b'], { extraArgs: (id) => (id === 'node-b' ? ['--peer-accept-plaintext'] : []) })
  await cluster.start('node-a', { env: { PXD_PEER_PLAINTEXT: '1' } })
})

test.after.always(async () => {
  await cluster?.stop()
})

/** Create a repl=2 volume through `node` (the first tries may meet a link still finding its mode), write and read it there. */
async function replicated(t: { is: (a: unknown, b: unknown, m?: string) => void }, node: ClusterNode, name: string): Promise<void> {
  await waitFor(`a repl=2 volume created through ${node.nodeId}`, async () => {
    const r = await pluginCall(node.pluginSocket, '/VolumeDriver.Create', { Name: name, Opts: { size: '64M', repl: '2' } })
    return !r.body.Err
  }, 30_000, 500)
  const mp = (await pluginOk(node, '/VolumeDriver.Mount', { Name: name, ID: '1' })).Mountpoint as string
  const payload = randomBytes(1024 * 1024)
  await writeSynced(path.join(mp, 'data.bin'), payload)
  t.is(sha(await fs.readFile(path.join(mp, 'data.bin'))), sha(payload))
  await pluginOk(node, '/VolumeDriver.Unmount', { Name: name, ID: '1' })
  const info = await new ApiClient(node.apiUrl).inspectVolume(name)
  t.is(info.replicas.filter((r) => r.inSync).length, 2, 'both replicas in sync')
  t.is(await replicaDigest(cluster.node('node-a'), info.id), await replicaDigest(cluster.node('node-b'), info.id), 'the replicas are identical')
}

test('the old node replicates to the upgraded one over a plain link the upgraded one accepts', async (t) => {
  await replicated(t, cluster.node('node-a'), 'from-old')
  t.regex(cluster.node('node-b').logs(), /peer links without TLS are accepted too/)
})

test('the upgraded node replicates to the old one, dialing it plain once it answered TLS as plain HTTP', async (t) => {
  await replicated(t, cluster.node('node-b'), 'from-new')
})
