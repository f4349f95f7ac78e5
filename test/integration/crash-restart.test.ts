/**
 * A daemon killed with SIGKILL leaves its file system mounted, its loop device attached
 * and its FUSE mount dead. The next start must clean all of that up, and data that was
 * fsynced before the crash must read back intact.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { leftoversUnder, makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { sha } from '../helpers/volume-io'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})


test('kill -9 while mounted: restart cleans up and fsynced data survives', async (t) => {
  daemon = await startDaemon({ dir })
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'crashy', Opts: { size: '64M' } })).body.Err, '')
  const m = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'crashy', ID: 'c1' })
  const mountpoint = m.body.Mountpoint as string
  const payload = randomBytes(3 * 1024 * 1024)
  const h = await fs.open(path.join(mountpoint, 'synced.bin'), 'w')
  await h.writeFile(payload)
  await h.sync()
  await h.close()
  const dirHandle = await fs.open(mountpoint, 'r')
  await dirHandle.sync()
  await dirHandle.close()

  await daemon.kill()
  const left = leftoversUnder(dir)
  t.true(left.some((l) => l.startsWith('mount ') && l.includes('/mounts/crashy')), `stale mount expected, got ${left.join('; ')}`)
  t.true(left.some((l) => l.startsWith('loop ')), 'stale loop device expected')

  daemon = await startDaemon({ dir })
  t.deepEqual(leftoversUnder(path.join(daemon.runDir, 'mounts')), [], 'stale mounts removed at start')
  t.false(leftoversUnder(dir).some((l) => l.startsWith('loop ')), 'stale loop devices detached at start')
  t.regex(daemon.logs(), /left by an earlier run/)

  const info = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Get', { Name: 'crashy' })
  t.is((info.body.Volume as { Status: { state: string } }).Status.state, 'detached', 'the crashed attachment is released')
  const again = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'crashy', ID: 'c2' })
  t.is(again.body.Err, '', again.raw)
  t.is(sha(await fs.readFile(path.join(again.body.Mountpoint as string, 'synced.bin'))), sha(payload))
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'crashy', ID: 'c2' })).body.Err, '')
  await daemon.stop()
  daemon = undefined
  t.deepEqual(leftoversUnder(dir), [])
})
