/**
 * Crashes while a snapshot is taken, on a two-node cluster with repl=2 whose node-b keeps
 * its data dir on the power-loss file system (a power cut drops every page not made
 * durable): kill -9 of the coordinator part way, and a power cut of the other replica's
 * node part way, at several moments each. After each, the volume is intact (every file
 * acknowledged before reads back, both replicas read the same once resynced) and the
 * snapshot exists whole (listed, mountable, the same on every node that has it) or not at
 * all (not listed, no layer of it left on any node once the nodes have started again).
 * A snapshot that was taken survives a power cut of its node.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { MiB, pluginOk, replicaViewHash, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'], { powerLoss: ['node-b'] })
})

test.after.always(async () => {
  await cluster?.stop()
})

const api = () => new ApiClient(cluster.node('node-a').apiUrl)
/** `losetup -a` lines of loop devices over a volume's device file (its id names the file). */
const loopsOf = (volumeId: string): string[] => execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(volumeId))
const snapDirs = async (volumeId: string): Promise<string[]> => {
  const out: string[] = []
  for (const node of cluster.nodes) {
    const dir = path.join(node.dataDir, 'replicas', volumeId, 'snaps')
    for (const id of await fs.readdir(dir).catch(() => [] as string[])) out.push(`${node.nodeId}/${id}`)
  }
  return out
}

/** Files acknowledged on the volume so far, by name. */
const acked = new Map<string, string>()

async function writeSome(mp: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const name = `rec-${acked.size}`
    const data = randomBytes(256 * 1024)
    await writeSynced(path.join(mp, name), data)
    acked.set(name, sha(data))
  }
}

/** The volume mounted on node-a has every file acknowledged; both replicas read the same once in sync. */
async function checkVolume(t: import('ava').ExecutionContext, name: string, volumeId: string): Promise<void> {
  const a = cluster.node('node-a')
  await waitFor('both replicas in sync', async () => (await api().inspectVolume(name)).replicas.every((r) => r.inSync), 120_000)
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: name, ID: 'check' })).Mountpoint as string
  try {
    for (const [file, digest] of acked) t.is(sha(await fs.readFile(path.join(mp, file))), digest, `${file} after the crash`)
  } finally {
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: name, ID: 'check' })
  }
  t.is(await replicaViewHash(a, volumeId), await replicaViewHash(cluster.node('node-b'), volumeId), 'both replicas read the same')
}

/** The snapshot is listed, mounts, holds `before`, and reads the same on every node it names; or it is gone without a trace. */
async function checkSnapshot(t: import('ava').ExecutionContext, snap: string, volumeId: string, before: Map<string, string>): Promise<'whole' | 'none'> {
  const all = await api().listSnapshots()
  const known = new Set(all.map((s) => s.id))
  const onDisk = await snapDirs(volumeId)
  t.deepEqual(onDisk.filter((d) => !known.has(d.split('/')[1]!)), [], 'no layer of a snapshot that does not exist')
  const listed = all.find((s) => s.name === snap)
  if (!listed) return 'none'
  const a = cluster.node('node-a')
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: snap, ID: 'check' })).Mountpoint as string
  try {
    for (const [file, digest] of before) t.is(sha(await fs.readFile(path.join(mp, file))), digest, `${file} in the snapshot`)
  } finally {
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: snap, ID: 'check' })
  }
  const views = await Promise.all(listed.replicas.map((r) => replicaViewHash(cluster.node(r.nodeId), volumeId, listed.id)))
  t.is(new Set(views).size, 1, 'every copy of the snapshot reads the same')
  t.deepEqual(onDisk.filter((d) => d.endsWith(`/${listed.id}`)).sort(), listed.replicas.map((r) => `${r.nodeId}/${listed.id}`).sort(), 'a layer only where the snapshot names the node')
  return 'whole'
}

/** node-b starts again: its start deletes the layers the kvdb does not list. */
async function restartB(): Promise<void> {
  await cluster.node('node-b').stop()
  await cluster.start('node-b')
}

test.serial('kill -9 of the coordinator while it takes a snapshot: the volume is intact, the snapshot whole or gone', async (t) => {
  await pluginOk(cluster.node('node-a'), '/VolumeDriver.Create', { Name: 'crashsnap', Opts: { size: '128M', repl: '2' } })
  const volumeId = (await api().inspectVolume('crashsnap')).id
  const outcomes: string[] = []
  for (const delayMs of [0, 20, 50, 80, 120, 250]) {
    const a = cluster.node('node-a')
    const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'crashsnap', ID: 'w' })).Mountpoint as string
    await writeSome(mp, 4)
    const before = new Map(acked)
    const snap = `crash-${delayMs}`
    const taking = api().createSnapshot('crashsnap', snap).catch((err: Error) => err)
    await new Promise((resolve) => setTimeout(resolve, delayMs))
    await a.kill()
    await taking
    await cluster.start('node-a')
    // The restart took down what the killed run left, a file system frozen for the snapshot too.
    t.deepEqual(loopsOf(volumeId), [], `${delayMs} ms: no loop device of the volume is left attached`)
    await restartB()
    await checkVolume(t, 'crashsnap', volumeId)
    const cleaned = cluster.nodes.some((n) => n.logs().includes('deleting a snapshot layer'))
    outcomes.push(`${delayMs} ms: ${await checkSnapshot(t, snap, volumeId, before)}${cleaned ? ' (a leftover layer deleted)' : ''}`)
  }
  t.log(`snapshot after a kill -9 at: ${outcomes.join(', ')}`)
})

test.serial('a power cut of the other replica\'s node while a snapshot is taken: the volume is intact, the snapshot whole or gone; one taken survives a power cut', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'plsnap', Opts: { size: '128M', repl: '2' } })
  const volumeId = (await api().inspectVolume('plsnap')).id
  acked.clear()
  const outcomes: string[] = []
  for (const [i, delayMs] of [0, 10, 30, 60, 100, 200].entries()) {
    const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'plsnap', ID: 'w' })).Mountpoint as string
    await writeSome(mp, 4)
    const before = new Map(acked)
    const snap = `pl-${delayMs}`
    const taking = api().createSnapshot('plsnap', snap).catch((err: Error) => err)
    await new Promise((resolve) => setTimeout(resolve, delayMs))
    await cluster.powerLoss('node-b', i)
    const result = await taking
    await cluster.start('node-b')
    await waitFor('node-b resynced', async () => (await api().inspectVolume('plsnap')).replicas.every((r) => r.inSync), 120_000)
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'plsnap', ID: 'w' })
    await checkVolume(t, 'plsnap', volumeId)
    outcomes.push(`${delayMs} ms: ${result instanceof Error ? `failed (${result.message.slice(0, 60)})` : `taken on ${result.replicas.map((r) => r.nodeId).join('+')}`}, ${await checkSnapshot(t, snap, volumeId, before)}`)
  }
  t.log(`snapshot with a power cut of node-b at: ${outcomes.join('; ')}`)

  // Taken on both, then node-b loses power: its copy is durable and reads as node-a's.
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'plsnap', ID: 'w' })).Mountpoint as string
  await writeSome(mp, 2)
  const kept = await api().createSnapshot('plsnap', 'pl-kept')
  t.deepEqual(kept.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
  await cluster.powerLoss('node-b', 99)
  await cluster.start('node-b')
  await waitFor('node-b resynced', async () => (await api().inspectVolume('plsnap')).replicas.every((r) => r.inSync), 120_000)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'plsnap', ID: 'w' })
  t.true(existsSync(path.join(cluster.node('node-b').dataDir, 'replicas', volumeId, 'snaps', kept.id)))
  t.is(await replicaViewHash(cluster.node('node-b'), volumeId, kept.id), await replicaViewHash(a, volumeId, kept.id), 'node-b\'s copy survived the power cut')
  await checkVolume(t, 'plsnap', volumeId)
})
