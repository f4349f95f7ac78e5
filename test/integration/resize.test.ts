/**
 * Growing volumes (`pxctl volume update --size`), on a two-node cluster with repl=2: a
 * detached volume's replicas grow when next opened and its ext4 at the mount; a mounted xfs
 * grows online (df shows the new size, a file larger than the old volume fits, xfs_repair is
 * clean after), a mounted ext4 online where pxd may (CAP_SYS_RESOURCE), else at the next mount;
 * shrinking, nonsense, unknown volumes and sizes no replica node has room for are refused
 * and change nothing.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promises as fs, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { isPxdError } from '../../src/errors'
import { startCluster, type Cluster, type ClusterNode } from '../helpers/cluster'
import { REPO_ROOT } from '../helpers/paths'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { MiB, pluginOk, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  await cluster?.stop()
})

const dfBytes = (mp: string): number => Number(execFileSync('df', ['-B1', '--output=size', mp], { encoding: 'utf8' }).trim().split('\n')[1])
const replicaSize = (n: ClusterNode, volumeId: string): number => statSync(path.join(n.dataDir, 'replicas', volumeId, 'data')).size

test.serial('a detached volume grows: the record at once, each replica when it is next opened; its files are intact and the file system takes the new size at the mount', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'grow-off', Opts: { size: '256M', repl: '2' } })
  const info = await api.inspectVolume('grow-off')
  let mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-off', ID: '1' })).Mountpoint as string
  const payload = randomBytes(8 * MiB)
  await writeSynced(path.join(mp, 'before.bin'), payload)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-off', ID: '1' })
  try {
    const grown = await api.resize('grow-off', '512M')
    t.is(grown.size, 512 * MiB)
    t.is((await api.inspectVolume('grow-off')).size, 512 * MiB)
    for (const r of info.replicas) t.is(replicaSize(cluster.node(r.nodeId), info.id), 256 * MiB, `${r.nodeId}: not opened yet, not grown yet`)
    mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-off', ID: '2' })).Mountpoint as string
    for (const r of info.replicas) t.is(replicaSize(cluster.node(r.nodeId), info.id), 512 * MiB, `${r.nodeId}: grown at the open`)
    t.is(sha(await fs.readFile(path.join(mp, 'before.bin'))), sha(payload))
    t.true(dfBytes(mp) > 400 * MiB, `df shows ${dfBytes(mp)} bytes`)
  } finally {
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-off', ID: '2' }).catch(() => undefined)
  }
})

test.serial('a mounted xfs volume grows online: df shows the new size, a file larger than the old volume fits, both replicas grow, xfs_repair -n is clean', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'grow-on', Opts: { size: '320M', repl: '2', fs: 'xfs' } })
  const info = await api.inspectVolume('grow-on')
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-on', ID: '1' })).Mountpoint as string
  let unmounted = false
  try {
    const first = randomBytes(16 * MiB)
    await writeSynced(path.join(mp, 'first.bin'), first)
    const before = dfBytes(mp)
    t.true(before < 320 * MiB)
    const grown = await api.resize('grow-on', '640M')
    t.is(grown.size, 640 * MiB)
    const after = dfBytes(mp)
    t.true(after > 560 * MiB, `df: ${before} bytes before, ${after} after`)
    t.log(`df: ${Math.round(before / MiB)} MiB before, ${Math.round(after / MiB)} MiB after`)
    const big = randomBytes(400 * MiB)
    await writeSynced(path.join(mp, 'big.bin'), big)
    t.is(sha(await fs.readFile(path.join(mp, 'first.bin'))), sha(first))
    for (const r of info.replicas) t.is(replicaSize(cluster.node(r.nodeId), info.id), 640 * MiB, `${r.nodeId} grew`)
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-on', ID: '1' })
    unmounted = true
    for (const r of info.replicas) {
      const data = path.join(cluster.node(r.nodeId).dataDir, 'replicas', info.id, 'data')
      execFileSync('xfs_repair', ['-n', '-f', data], { stdio: 'pipe' })
      t.pass(`${r.nodeId}: xfs_repair -n clean`)
    }
  } finally {
    if (!unmounted) await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-on', ID: '1' }).catch(() => undefined)
  }
})

test.serial('a mounted ext4 volume grows online where pxd has CAP_SYS_RESOURCE; where it has not, the call says so and the file system grows at the next mount; e2fsck is clean', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'grow-ext4', Opts: { size: '128M', repl: '2' } })
  const info = await api.inspectVolume('grow-ext4')
  let mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-ext4', ID: '1' })).Mountpoint as string
  const first = randomBytes(16 * MiB)
  await writeSynced(path.join(mp, 'first.bin'), first)
  // The daemons run as this test does: the same capabilities.
  const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!
  const canResizeMounted = ((BigInt(`0x${capEff}`) >> 24n) & 1n) === 1n
  try {
    if (canResizeMounted) {
      await api.resize('grow-ext4', '384M')
      t.true(dfBytes(mp) > 300 * MiB, 'grown online')
    } else {
      t.log('pxd lacks CAP_SYS_RESOURCE here: a mounted ext4 cannot grow online')
      const err = await t.throwsAsync(api.resize('grow-ext4', '384M'))
      t.regex(err?.message ?? '', /CAP_SYS_RESOURCE.*grows at its next mount/)
      t.is((await api.inspectVolume('grow-ext4')).size, 384 * MiB, 'the new size is recorded')
      t.true(dfBytes(mp) < 128 * MiB, 'the mounted file system keeps its size')
      await writeSynced(path.join(mp, 'second.bin'), randomBytes(MiB))
      await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-ext4', ID: '1' })
      mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'grow-ext4', ID: '2' })).Mountpoint as string
      t.true(dfBytes(mp) > 300 * MiB, `grown at the next mount: df says ${dfBytes(mp)} bytes`)
      t.is((await fs.stat(path.join(mp, 'second.bin'))).size, MiB)
    }
    t.is(sha(await fs.readFile(path.join(mp, 'first.bin'))), sha(first))
    for (const r of info.replicas) t.is(replicaSize(cluster.node(r.nodeId), info.id), 384 * MiB, `${r.nodeId} grew`)
  } finally {
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'grow-ext4', ID: canResizeMounted ? '1' : '2' }).catch(() => undefined)
  }
  for (const r of info.replicas) execFileSync('e2fsck', ['-fn', path.join(cluster.node(r.nodeId).dataDir, 'replicas', info.id, 'data')], { stdio: 'pipe' })
  t.pass('e2fsck -fn clean on both replicas')
})

test.serial('shrinking, a nonsense size, an unknown volume and a size no replica node has room for are refused and change nothing', async (t) => {
  const a = cluster.node('node-a')
  const api = new ApiClient(a.apiUrl)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'grow-bad', Opts: { size: '64M', repl: '2' } })
  const refused = async (size: string, code: string, pattern: RegExp, name = 'grow-bad') => {
    const err = await t.throwsAsync(api.resize(name, size))
    t.true(isPxdError(err, code as never), `${size}: ${String(err)}`)
    t.regex(err?.message ?? '', pattern)
  }
  await refused('32M', 'INVALID_ARGUMENT', /shrinking it to 32 MiB is refused/)
  await refused('lots', 'INVALID_ARGUMENT', /invalid value "lots" for option "size"/)
  await refused('100T', 'NO_SPACE', /free; growing grow-bad by .* needs that much/)
  await refused('1G', 'NOT_FOUND', /not found/, 'no-such-volume')
  t.is((await api.inspectVolume('grow-bad')).size, 64 * MiB)
  const out = execFileSync(path.join(REPO_ROOT, 'bin', 'pxctl'), ['--api', a.apiUrl, 'volume', 'update', 'grow-bad', '--size', '96M'], { encoding: 'utf8' })
  t.regex(out, /Volume grow-bad: 96 MiB/)
  t.is((await api.inspectVolume('grow-bad')).size, 96 * MiB)
})
