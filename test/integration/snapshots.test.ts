/**
 * Snapshots on a two-node cluster with repl=2 (real daemons, FUSE, loop devices, ext4):
 * taken under a running fsync-ing writer, a snapshot holds every file acknowledged before it
 * and passes e2fsck; it mounts read-only; later writes do not change it; both replicas read
 * the same for it; restore brings the volume back to it byte for byte; deleting it gives its
 * layer's space back; a failover serves it from the other replica. Bad input is refused and
 * changes nothing.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { isPxdError } from '../../src/errors'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { MiB, pluginOk, replicaViewHash, sha, writeSynced } from '../helpers/volume-io'
import { pluginCall } from '../helpers/plugin-client'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  await cluster?.stop()
})

const layerDir = (n: ClusterNode, volumeId: string, snapId: string) => path.join(n.dataDir, 'replicas', volumeId, 'snaps', snapId)
const loopOf = (mountpoint: string): string => {
  const line = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === mountpoint)
  if (!line) throw new Error(`${mountpoint} is not mounted`)
  return line.split(' ')[0]!
}
async function filesIn(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  for (const name of await fs.readdir(dir)) if (name.startsWith('rec-')) out.set(name, sha(await fs.readFile(path.join(dir, name))))
  return out
}

test.serial('a snapshot under a running fsync-ing writer: holds every acknowledged file, passes e2fsck, mounts read-only, does not follow later writes; restore brings it back byte for byte; delete frees its layers', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'snapvol', Opts: { size: '256M', repl: '2' } })
  const vol = await api.inspectVolume('snapvol')
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'snapvol', ID: 'w' })).Mountpoint as string
  let volumeMounted = true
  let snapMounted = false
  try {
    // The writer: 64 KiB records, each fsynced; `acked` holds those whose fsync returned.
    const acked = new Map<string, string>()
    const started = new Map<string, number>()
    let stop = false
    let n = 0
    const writer = (async () => {
      while (!stop) {
        const name = `rec-${String(n++).padStart(5, '0')}`
        const data = randomBytes(64 * 1024)
        started.set(name, Date.now())
        await writeSynced(path.join(mp, name), data)
        acked.set(name, sha(data))
      }
    })()
    await waitFor('records written', async () => acked.size >= 30)
    const before = new Map(acked)
    const t0 = Date.now()
    const snap = await api.createSnapshot('snapvol', 'snap1')
    const took = Date.now() - t0
    const t1 = Date.now()
    await waitFor('records after the snapshot', async () => [...started.values()].filter((s) => s > t1).length >= 10)
    stop = true
    await writer
    t.log(`snapshot of a 256 MiB volume under a writer: ${took} ms (${before.size} records acknowledged before it)`)
    t.is(snap.parent, 'snapvol')
    t.true(snap.readOnly)
    t.deepEqual(snap.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
    t.deepEqual((await api.inspectVolume('snapvol')).snapshots.map((s) => s.name), ['snap1'])
    t.deepEqual((await api.listSnapshots('snapvol')).map((s) => s.name), ['snap1'])

    // Mounted read-only: every record acknowledged before the snapshot, as written.
    let smp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'snap1', ID: 's' })).Mountpoint as string
    snapMounted = true
    const inSnap = await filesIn(smp)
    for (const [name, digest] of before) t.is(inSnap.get(name), digest, `${name} is in the snapshot as written`)
    const after = [...started].filter(([, s]) => s > t1).map(([name]) => name)
    for (const name of after) t.false(inSnap.has(name), `${name} was written after the snapshot`)
    const err = await t.throwsAsync(fs.writeFile(path.join(smp, 'nope'), 'x'))
    t.is((err as NodeJS.ErrnoException).code, 'EROFS')
    const fsck = execFileSync('e2fsck', ['-fn', loopOf(smp)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    t.regex(fsck, /clean|files/, fsck)

    // Later writes change the volume, not the snapshot (read again from a new mount).
    const first = [...before.keys()][0]!
    await writeSynced(path.join(mp, first), randomBytes(64 * 1024))
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snap1', ID: 's' })
    smp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'snap1', ID: 's' })).Mountpoint as string
    t.is(sha(await fs.readFile(path.join(smp, first))), before.get(first)!, 'the snapshot kept the old bytes')
    const snapFiles = await filesIn(smp)
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snap1', ID: 's' })
    snapMounted = false

    // Both replicas read the same for the snapshot, block for block.
    const viewA = await replicaViewHash(a, vol.id, snap.id)
    t.is(await replicaViewHash(cluster.node('node-b'), vol.id, snap.id), viewA, 'the snapshot reads the same on both replicas')

    // Restore: refused while mounted, then the volume reads as the snapshot did.
    const busy = await t.throwsAsync(api.restore('snapvol', 'snap1'))
    t.true(isPxdError(busy, 'IN_USE'), String(busy))
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snapvol', ID: 'w' })
    volumeMounted = false
    await api.restore('snapvol', 'snap1')
    for (const node of cluster.nodes) t.is(await replicaViewHash(node, vol.id), viewA, `${node.nodeId}: the volume reads as the snapshot, block for block`)
    const rmp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'snapvol', ID: 'w' })).Mountpoint as string
    volumeMounted = true
    t.deepEqual(await filesIn(rmp), snapFiles)
    await writeSynced(path.join(rmp, 'rec-after-restore'), randomBytes(4096))

    // Delete: the layers go from both nodes; the volume keeps every file.
    const kept = await filesIn(rmp)
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snapvol', ID: 'w' })
    volumeMounted = false
    await api.deleteSnapshot('snap1')
    for (const node of cluster.nodes) t.false(existsSync(layerDir(node, vol.id, snap.id)), `${node.nodeId}: the layer is gone`)
    t.deepEqual((await api.inspectVolume('snapvol')).snapshots, [])
    const mp2 = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'snapvol', ID: 'w' })).Mountpoint as string
    volumeMounted = true
    t.deepEqual(await filesIn(mp2), kept)
    const viewNow = await replicaViewHash(a, vol.id)
    t.is(await replicaViewHash(cluster.node('node-b'), vol.id), viewNow)
  } finally {
    if (snapMounted) await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snap1', ID: 's' }).catch(() => undefined)
    if (volumeMounted) await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snapvol', ID: 'w' }).catch(() => undefined)
  }
})

test.serial('bad input is refused with a clear error and changes nothing; Docker --opt parent= makes a snapshot; at most 64 per volume', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'badsnap', Opts: { size: '64M', repl: '2' } })
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'other', Opts: { size: '64M', repl: '1' } })
  // Docker's form: a volume created with parent= is a snapshot of it.
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'dsnap', Opts: { parent: 'badsnap' } })
  t.is((await api.inspectVolume('dsnap')).parent, 'badsnap')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'osnap', Opts: { parent: 'other' } })

  const refused = async (p: Promise<unknown>, code: string, what: string) => {
    const err = await t.throwsAsync(p)
    t.true(isPxdError(err) && err.code === code, `${what}: ${String(err)}`)
  }
  const snapshotsBefore = (await api.listSnapshots()).map((s) => s.name).sort()
  await refused(api.createSnapshot('dsnap', 'x1'), 'INVALID_ARGUMENT', 'a snapshot of a snapshot')
  await refused(api.createSnapshot('badsnap', 'dsnap'), 'ALREADY_EXISTS', 'a name taken by a snapshot')
  await refused(api.createSnapshot('badsnap', 'other'), 'ALREADY_EXISTS', 'a name taken by a volume')
  await refused(api.createSnapshot('badsnap', 'bad/name'), 'INVALID_ARGUMENT', 'a name that is not a volume name')
  await refused(api.createSnapshot('nosuch', 'x2'), 'NOT_FOUND', 'an unknown volume')
  await refused(api.restore('badsnap', 'osnap'), 'INVALID_ARGUMENT', 'restoring a snapshot of another volume')
  await refused(api.restore('badsnap', 'other'), 'INVALID_ARGUMENT', 'restoring from a volume')
  await refused(api.deleteSnapshot('other'), 'INVALID_ARGUMENT', 'snapshot delete of a volume')
  await refused(api.deleteVolume('badsnap'), 'IN_USE', 'deleting a volume that has snapshots')
  await refused(api.resize('dsnap', '128M'), 'READ_ONLY', 'growing a snapshot')
  await refused(api.haUpdate('dsnap', 1), 'READ_ONLY', 'the replication of a snapshot')
  await refused(api.haUpdate('badsnap', 1), 'IN_USE', 'dropping a replica that holds snapshot copies')
  await refused(api.drainNode('node-b'), 'IN_USE', 'draining a node that holds snapshot copies')
  t.is((await api.inspectVolume('badsnap')).replicas.length, 2)
  t.false((await api.listNodes()).find((n) => n.nodeId === 'node-b')!.draining)
  const plugin = await pluginCall(a.pluginSocket, '/VolumeDriver.Create', { Name: 'psnap', Opts: { parent: 'badsnap', size: '1G' } })
  t.regex(String(plugin.body.Err), /takes its volume's options/)
  t.deepEqual((await api.listSnapshots()).map((s) => s.name).sort(), snapshotsBefore, 'no snapshot came or went')
  t.is((await api.inspectVolume('badsnap')).snapshots.length, 1)

  // The 64th goes, the 65th is refused.
  for (let i = 1; i < 64; i++) await api.createSnapshot('badsnap', `many-${i}`)
  await refused(api.createSnapshot('badsnap', 'many-64'), 'UNSATISFIABLE', 'a 65th snapshot')
  t.is((await api.listSnapshots('badsnap')).length, 64)
  for (let i = 1; i < 64; i++) await api.deleteSnapshot(`many-${i}`)
  for (const name of ['dsnap', 'osnap']) await api.deleteSnapshot(name)
  for (const name of ['badsnap', 'other']) await api.deleteVolume(name)
})

test.serial('a snapshot survives the loss of a replica node: it mounts from the other replica, and after the node is back and the volume resynced both copies still read the same', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const api = new ApiClient(b.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'snapfo', Opts: { size: '128M', repl: '2' } })
  const vol = await api.inspectVolume('snapfo')
  let mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'snapfo', ID: '1' })).Mountpoint as string
  const payload = randomBytes(4 * MiB)
  await writeSynced(path.join(mp, 'rec-payload'), payload)
  const snap = await new ApiClient(a.apiUrl).createSnapshot('snapfo', 'snapfo-1')
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'snapfo', ID: '1' })
  const view = await replicaViewHash(a, vol.id, snap.id)

  await a.kill()
  try {
    const smp = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'snapfo-1', ID: '1' })).Mountpoint as string
    t.is(sha(await fs.readFile(path.join(smp, 'rec-payload'))), sha(payload), 'served by node-b alone')
    await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'snapfo-1', ID: '1' })
    // The volume moves on without node-a: its replica there falls behind.
    mp = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'snapfo', ID: '1' })).Mountpoint as string
    await writeSynced(path.join(mp, 'rec-later'), randomBytes(2 * MiB))
  } finally {
    await cluster.start('node-a')
  }
  await waitFor('node-a resynced', async () => (await api.inspectVolume('snapfo')).replicas.every((r) => r.inSync), 120_000)
  await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'snapfo', ID: '1' })
  t.is(await replicaViewHash(cluster.node('node-a'), vol.id, snap.id), view, 'node-a\'s copy of the snapshot is as it was')
  t.is(await replicaViewHash(b, vol.id, snap.id), view, 'node-b\'s too')
  t.is(await replicaViewHash(cluster.node('node-a'), vol.id), await replicaViewHash(b, vol.id), 'the volume reads the same on both after the resync')
  t.deepEqual((await api.inspectVolume('snapfo-1')).replicas.map((r) => r.inSync), [true, true])
  await api.deleteSnapshot('snapfo-1')
  await api.deleteVolume('snapfo')
})

test.serial('clones of a snapshot and of a mounted volume share the blocks and diverge on their own; either side can be deleted first', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'cvol', Opts: { size: '128M', repl: '2' } })
  const vol = await api.inspectVolume('cvol')
  const mounted = new Map<string, string>()
  const mount = async (name: string) => {
    const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: name, ID: 'c' })).Mountpoint as string
    mounted.set(name, mp)
    return mp
  }
  const unmount = async (name: string) => {
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: name, ID: 'c' })
    mounted.delete(name)
  }
  try {
    let vmp = await mount('cvol')
    const original = randomBytes(8 * MiB)
    await writeSynced(path.join(vmp, 'rec-original'), original)
    await api.createSnapshot('cvol', 'cs1')
    await writeSynced(path.join(vmp, 'rec-second'), randomBytes(MiB))
    const c2 = await api.clone('cvol', 'c2')
    t.is(c2.parent, 'cvol')
    t.false(c2.readOnly)
    const c1 = await api.clone('cs1', 'c1')
    t.is(c1.parent, 'cs1')
    t.deepEqual(c1.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
    const clash = await t.throwsAsync(api.clone('cs1', 'c2'))
    t.true(isPxdError(clash, 'ALREADY_EXISTS'), String(clash))

    // Shared on the host: the clone's layers are links to the volume's; its own files start empty.
    for (const node of cluster.nodes) {
      const dir = path.join(node.dataDir, 'replicas', c1.id)
      const layers = await fs.readdir(path.join(dir, 'snaps'))
      t.true(layers.length >= 1)
      for (const id of layers) t.true((await fs.stat(path.join(dir, 'snaps', id, 'data'))).nlink >= 2, `${node.nodeId}: layer ${id} is shared`)
      t.true((await fs.stat(path.join(dir, 'data'))).blocks * 512 < MiB, `${node.nodeId}: the clone's own data starts empty`)
    }

    // Each diverges on its own.
    const c1mp = await mount('c1')
    t.is(sha(await fs.readFile(path.join(c1mp, 'rec-original'))), sha(original))
    t.false(existsSync(path.join(c1mp, 'rec-second')), 'c1 is the snapshot, taken before rec-second')
    await writeSynced(path.join(c1mp, 'rec-original'), randomBytes(8 * MiB))
    await writeSynced(path.join(c1mp, 'rec-c1'), randomBytes(MiB))
    const c2mp = await mount('c2')
    t.true(existsSync(path.join(c2mp, 'rec-second')), 'c2 is the volume as it was at the clone')
    await writeSynced(path.join(vmp, 'rec-third'), randomBytes(MiB))
    t.false(existsSync(path.join(c2mp, 'rec-third')))
    t.is(sha(await fs.readFile(path.join(vmp, 'rec-original'))), sha(original), 'writes to the clone did not reach the volume')
    await unmount('cvol')
    vmp = await mount('cvol')
    t.is(sha(await fs.readFile(path.join(vmp, 'rec-original'))), sha(original), 'not after a remount either')
    t.false(existsSync(path.join(vmp, 'rec-c1')))
    const c1Files = await filesIn(c1mp)
    const c2Files = await filesIn(c2mp)
    for (const name of ['cvol', 'c1', 'c2']) await unmount(name)

    // The source goes first; the clones keep every block.
    await api.deleteSnapshot('cs1')
    await api.deleteVolume('cvol')
    for (const node of cluster.nodes) t.false(existsSync(path.join(node.dataDir, 'replicas', vol.id)))
    t.deepEqual(await filesIn(await mount('c1')), c1Files)
    t.deepEqual(await filesIn(await mount('c2')), c2Files)
    for (const name of ['c1', 'c2']) await unmount(name)
    t.is(await replicaViewHash(a, c1.id), await replicaViewHash(cluster.node('node-b'), c1.id), 'both replicas of the clone read the same')
    for (const name of ['c1', 'c2']) await api.deleteVolume(name)
  } finally {
    for (const name of [...mounted.keys()]) await unmount(name).catch(() => undefined)
  }
})
