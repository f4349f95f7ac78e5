/**
 * Replicas move on a real three-node cluster: a node lost for good has its replicas
 * replaced on another node after --replace-after (and its copy is quarantined when it comes
 * back), `pxctl cluster drain` moves every replica off a node while the volumes stay
 * mounted and written, `pxctl cluster remove` forgets only an offline node that holds
 * nothing, and `pxctl cluster rebalance` evens out the nodes, one move at a time.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { PXCTL_BIN } from '../helpers/paths'
import { runCommand } from '../helpers/run'
import { MiB, pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'], { extraArgs: ['--replace-after', '5s'] })
})

test.after.always(async () => {
  await cluster?.stop()
})

const api = (n: ClusterNode) => new ApiClient(n.apiUrl)
const pxctl = (n: ClusterNode, args: string[], timeoutMs = 120_000) => runCommand(process.execPath, [PXCTL_BIN, '--api', n.apiUrl, ...args], timeoutMs)
const placed = async (n: ClusterNode, name: string) => (await api(n).inspectVolume(name)).replicas.map((r) => r.nodeId).sort()
const healthy = async (n: ClusterNode, name: string) => {
  const v = await api(n).inspectVolume(name)
  return v.replicas.length === v.repl && v.replicas.every((r) => r.inSync) && !v.degraded
}

/** Writes fsynced files until stopped; what it wrote, by file name. */
function startWriter(dir: string) {
  const written: Record<string, string> = {}
  let stop = false
  let error: unknown
  const done = (async () => {
    for (let i = 0; !stop; i++) {
      const data = randomBytes(MiB)
      const name = `w${i}.bin`
      try {
        await writeSynced(path.join(dir, name), data)
      } catch (err) {
        error = err
        return
      }
      written[name] = sha(data)
      await new Promise((r) => setTimeout(r, 50))
    }
  })()
  return { written, get error() { return error }, stop: async () => { stop = true; await done } }
}

async function check(dir: string, files: Record<string, string>): Promise<string[]> {
  const bad: string[] = []
  for (const [name, digest] of Object.entries(files)) if (sha(await fs.readFile(path.join(dir, name))) !== digest) bad.push(name)
  return bad
}

test.serial('a replica node lost for good is replaced on the third node after --replace-after; its copy is quarantined when it returns', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'lost', Opts: { size: '128M', repl: '2' } })
  const info = await api(a).inspectVolume('lost')
  const [keep, gone] = info.replicas.map((r) => cluster.node(r.nodeId))
  const third = cluster.nodes.find((n) => n !== keep && n !== gone)!
  const mp = (await pluginOk(keep!, '/VolumeDriver.Mount', { Name: 'lost', ID: 'w' })).Mountpoint as string
  const data = randomBytes(8 * MiB)
  await writeSynced(path.join(mp, 'data.bin'), data)
  await pluginOk(keep!, '/VolumeDriver.Unmount', { Name: 'lost', ID: 'w' })

  await gone!.kill()
  const degraded = await waitFor('the status to say why the volume is degraded', async () => {
    const s = await pxctl(keep!, ['status'])
    return /lost/.test(s.stdout) && new RegExp(`${gone!.nodeId}: node offline since`).test(s.stdout) && s.stdout
  }, 30_000, 500)
  t.log(degraded.split('\n').filter((l) => l.includes(gone!.nodeId)).join('\n'))
  await waitFor('the replica replaced on the third node, in sync, the old one dropped', async () => {
    const now = await placed(keep!, 'lost')
    return now.join() === [keep!.nodeId, third.nodeId].sort().join() && (await healthy(keep!, 'lost'))
  }, 60_000, 250)
  const metrics = await (await fetch(`${keep!.apiUrl}/metrics`)).text()
  t.regex(metrics, /^pxd_replica_replacements_total [1-9]/m, 'the replacement is counted')
  t.is(await replicaDigest(keep!, info.id), await replicaDigest(third, info.id), 'the new replica is identical')

  await cluster.start(gone!.nodeId)
  const quarantined = await api(gone!).listQuarantined()
  t.true(quarantined.some((q) => q.volumeId === info.id), 'the old copy is quarantined, not used')
  t.deepEqual(await placed(gone!, 'lost'), [keep!.nodeId, third.nodeId].sort())
  await keep!.stop()
  const mp2 = (await pluginOk(third, '/VolumeDriver.Mount', { Name: 'lost', ID: 'f' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mp2, 'data.bin'))), sha(data), 'a failover to the new replica serves the file')
  await pluginOk(third, '/VolumeDriver.Unmount', { Name: 'lost', ID: 'f' })
  await cluster.start(keep!.nodeId)
  await pxctl(gone!, ['quarantine', 'purge', quarantined.find((q) => q.volumeId === info.id)!.name])
})

test.serial('drain moves every replica off a node while the volumes stay mounted and written; remove and rebalance follow', async (t) => {
  const a = cluster.node('node-a')
  await waitFor('every node online', async () => (await api(a).listNodes()).every((n) => n.online), 30_000, 250)
  for (const name of ['drain-1', 'drain-2']) await pluginOk(a, '/VolumeDriver.Create', { Name: name, Opts: { size: '128M', repl: '2' } })
  // Two repl=2 volumes on three nodes share a node: drain that one. The first volume is
  // coordinated by the node being drained, the second by another node.
  const [p1, p2] = [await placed(a, 'drain-1'), await placed(a, 'drain-2')]
  const x = cluster.node(p1.find((n) => p2.includes(n))!)
  const others = cluster.nodes.filter((n) => n !== x)
  const y = others[0]!
  const vols = [{ name: 'drain-1', mountOn: x }, { name: 'drain-2', mountOn: cluster.node(p2.find((n) => n !== x.nodeId)!) }]
  const writers = []
  for (const v of vols) {
    const mp = (await pluginOk(v.mountOn, '/VolumeDriver.Mount', { Name: v.name, ID: 'w' })).Mountpoint as string
    await writeSynced(path.join(mp, 'before.bin'), randomBytes(4 * MiB))
    writers.push({ mp, writer: startWriter(mp), v })
  }
  const refused = await pxctl(y, ['cluster', 'remove', x.nodeId])
  t.is(refused.code, 1)
  t.regex(refused.stderr, /still holds replicas of .*drain-1.*drain-2.*; drain it first/)

  const drained = await pxctl(y, ['cluster', 'drain', x.nodeId], 180_000)
  t.is(drained.code, 0, drained.stderr)
  t.log(drained.stdout.trim())
  t.regex(drained.stdout, new RegExp(`drain-1: moved off ${x.nodeId}`))
  t.regex(drained.stdout, new RegExp(`drain-2: moved off ${x.nodeId}`))
  for (const { mp, writer, v } of writers) {
    await writer.stop()
    t.is(writer.error, undefined, `the writer on ${v.name} never saw an error`)
    t.true(Object.keys(writer.written).length > 0)
    t.deepEqual(await check(mp, writer.written), [], `every file written to ${v.name} during the drain is intact`)
    t.false((await placed(y, v.name)).includes(x.nodeId))
    t.true(await healthy(y, v.name), `${v.name} is healthy on two other nodes`)
    await pluginOk(v.mountOn, '/VolumeDriver.Unmount', { Name: v.name, ID: 'w' })
  }
  const create = await pxctl(y, ['volume', 'create', 'drain-3', '--size', '64M', '--repl', '3'])
  t.is(create.code, 1, 'a draining node takes no new replica')
  t.regex(create.stderr, /repl=3 needs 3 online nodes/)

  // Remove: refused while the node is online; once stopped, it is forgotten.
  const online = await pxctl(y, ['cluster', 'remove', x.nodeId])
  t.regex(online.stderr, /is online; stop pxd on it first/)
  await x.stop()
  const removed = await pxctl(y, ['cluster', 'remove', x.nodeId])
  t.is(removed.code, 0, removed.stderr)
  t.false((await api(y).listNodes()).some((n) => n.nodeId === x.nodeId))

  // Back as a new, empty node: rebalance moves one replica onto it.
  await cluster.start(x.nodeId)
  const rebalanced = await pxctl(y, ['cluster', 'rebalance'], 180_000)
  t.is(rebalanced.code, 0, rebalanced.stderr)
  t.log(rebalanced.stdout.trim())
  t.regex(rebalanced.stdout, new RegExp(`moved drain-[12] from node-[abc] to ${x.nodeId}`))
  t.regex(rebalanced.stdout, /Rebalanced: [1-9]\d* replica\(s\) moved/)
  const all = await api(y).listVolumes()
  t.true(all.some((v) => v.replicas.some((r) => r.nodeId === x.nodeId)), 'the empty node holds a replica again')
  for (const v of all) t.true(await healthy(y, v.name), `${v.name} healthy after the moves`)
})
