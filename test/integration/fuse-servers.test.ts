/**
 * Both FUSE servers of the device directory (`--fuse-server addon|fuse-native`) through a
 * real daemon: a volume written under one is read back under the other, so switching
 * servers is only a restart.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { leftoversUnder, makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginOk, sha, writeSynced, MiB } from '../helpers/volume-io'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

function fstypeOf(target: string): string | undefined {
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, mountpoint, fstype] = line.split(' ')
    if (mountpoint === target) return fstype
  }
  return undefined
}

test('a volume written through fuse-native reads back through the addon server, and the other way round', async (t) => {
  const data = randomBytes(8 * MiB)
  const more = randomBytes(3 * MiB + 5)

  daemon = await startDaemon({ dir, extraArgs: ['--fuse-server', 'fuse-native'] })
  const devDir = path.join(daemon.runDir, 'dev')
  t.is(fstypeOf(devDir), 'fuse', 'fuse-native mounts through libfuse (type fuse)')
  await pluginOk(daemon, '/VolumeDriver.Create', { Name: 'both', Opts: { size: '64M' } })
  let mp = (await pluginOk(daemon, '/VolumeDriver.Mount', { Name: 'both', ID: 'm' })).Mountpoint as string
  await writeSynced(path.join(mp, 'first.bin'), data)
  await pluginOk(daemon, '/VolumeDriver.Unmount', { Name: 'both', ID: 'm' })
  await daemon.stop()
  t.deepEqual(leftoversUnder(dir), [], 'fuse-native: a clean stop leaves nothing mounted or attached')

  daemon = await startDaemon({ dir })
  t.is(fstypeOf(devDir), 'fuse.pxd', 'the default is the addon server (type fuse.pxd)')
  mp = (await pluginOk(daemon, '/VolumeDriver.Mount', { Name: 'both', ID: 'm' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mp, 'first.bin'))), sha(data), 'written under fuse-native, read under the addon server')
  await writeSynced(path.join(mp, 'second.bin'), more)
  await pluginOk(daemon, '/VolumeDriver.Unmount', { Name: 'both', ID: 'm' })
  await daemon.stop()
  t.deepEqual(leftoversUnder(dir), [], 'addon: a clean stop leaves nothing mounted or attached')

  daemon = await startDaemon({ dir, extraArgs: ['--fuse-server', 'fuse-native'] })
  mp = (await pluginOk(daemon, '/VolumeDriver.Mount', { Name: 'both', ID: 'm' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mp, 'second.bin'))), sha(more), 'written under the addon server, read under fuse-native')
  t.is(sha(await fs.readFile(path.join(mp, 'first.bin'))), sha(data))
  await pluginOk(daemon, '/VolumeDriver.Unmount', { Name: 'both', ID: 'm' })
  await pluginOk(daemon, '/VolumeDriver.Remove', { Name: 'both' })
})

test('an unknown --fuse-server is refused at start with the choices', async (t) => {
  const other = makeTempDir()
  t.teardown(() => removeDir(other))
  const err = await t.throwsAsync(() => startDaemon({ dir: other, extraArgs: ['--fuse-server', 'kernel'] }))
  t.regex(String(err?.message), /invalid --fuse-server "kernel": addon or fuse-native/)
})
