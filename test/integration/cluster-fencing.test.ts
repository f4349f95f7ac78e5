/**
 * Fencing: a coordinator that was cut off (here: frozen with SIGSTOP, so it can neither
 * renew its lease nor answer its peers) loses the volume to another node, and when it
 * comes back it cannot get a single write acknowledged: its frames carry the old epoch,
 * the replicas refuse them, and it tears its mount down and says why.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, TEST_NODE_TTL, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { MiB, replicaDigest, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
let frozen: ClusterNode | undefined

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  if (frozen) process.kill(frozen.pid, 'SIGCONT')
  await cluster?.stop()
})


test('a cut-off coordinator cannot get a write acknowledged after another node took the volume', async (t) => {
  const [p, q] = [cluster.node('node-a'), cluster.node('node-b')]
  t.is((await pluginCall(p.pluginSocket, '/VolumeDriver.Create', { Name: 'fence', Opts: { size: '64M', repl: '2' } })).body.Err, '')
  const mpP = (await pluginCall(p.pluginSocket, '/VolumeDriver.Mount', { Name: 'fence', ID: 'p' })).body.Mountpoint as string
  const first = randomBytes(MiB)
  await writeSynced(path.join(mpP, 'first.bin'), first)

  process.kill(p.pid, 'SIGSTOP')
  frozen = p
  // A write the cut-off node will only see when it wakes up.
  const late = writeSynced(path.join(mpP, 'late.bin'), randomBytes(MiB)).then(() => 'acknowledged', (err: NodeJS.ErrnoException) => `failed: ${err.code ?? err.message}`)

  await waitFor('the frozen node to go offline', async () => {
    const nodes = await new ApiClient(q.apiUrl).listNodes()
    return nodes.find((n) => n.nodeId === p.nodeId)?.online === false
  }, (TEST_NODE_TTL + 15) * 1000, 200)
  const mpQ = await waitFor('node-b to take the volume over', async () => {
    const r = await pluginCall(q.pluginSocket, '/VolumeDriver.Mount', { Name: 'fence', ID: 'q' })
    return r.body.Err === '' ? (r.body.Mountpoint as string) : undefined
  }, 40_000, 500)
  const third = randomBytes(MiB)
  await writeSynced(path.join(mpQ, 'third.bin'), third)
  const taken = await new ApiClient(q.apiUrl).inspectVolume('fence')
  t.is(taken.attachedOn, 'node-b')
  t.deepEqual(taken.replicas.filter((r) => r.inSync).map((r) => r.nodeId), ['node-b'], 'the unreachable replica was demoted')

  process.kill(p.pid, 'SIGCONT')
  frozen = undefined
  const outcome = await Promise.race([late, new Promise<string>((r) => setTimeout(() => r('still pending'), 30_000))])
  t.regex(outcome, /^failed/, 'the old coordinator got no acknowledgement')
  await waitFor('the old coordinator to log that it was fenced', async () => /fenced/.test(p.logs()), 15_000)
  await waitFor('the old coordinator to tear its mount down', async () => {
    const mounts = await fs.readFile('/proc/self/mounts', 'utf8')
    return !mounts.includes(` ${mpP} `)
  }, 15_000)

  t.deepEqual(await fs.readFile(path.join(mpQ, 'first.bin')), first)
  t.deepEqual(await fs.readFile(path.join(mpQ, 'third.bin')), third)

  // The old coordinator's replica took a write nobody acknowledged; resync repairs it.
  await waitFor('node-a to be resynced', async () => (await new ApiClient(q.apiUrl).inspectVolume('fence')).replicas.every((r) => r.inSync), 60_000, 250)
  t.is((await pluginCall(q.pluginSocket, '/VolumeDriver.Unmount', { Name: 'fence', ID: 'q' })).body.Err, '')
  t.is(await replicaDigest(p, taken.id), await replicaDigest(q, taken.id), 'the fenced node\'s replica is identical again')
})
