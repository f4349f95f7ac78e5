/**
 * An Unmount that fails (a process still has a file open in the volume: EBUSY) keeps the
 * mount ID, so Docker's retry really detaches the volume instead of getting success while
 * it stays attached for good. And a volume whose first record of "formatted" was lost gets
 * it on the next mount.
 */
import test from 'ava'
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon

test.before(async () => {
  daemon = await startDaemon({ dir })
})

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

const mounted = (target: string) => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === target)

test('after an Unmount refused as busy, the retry detaches the volume', async (t) => {
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'busy', Opts: { size: '32M' } })).body.Err, '')
  const m = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'busy', ID: 'c1' })
  t.is(m.body.Err, '', m.raw)
  const mountpoint = m.body.Mountpoint as string
  const open = await fs.open(path.join(mountpoint, 'held'), 'w')
  try {
    const refused = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'busy', ID: 'c1' })
    t.regex(String(refused.body.Err), /busy/i, refused.raw)
    t.true(mounted(mountpoint), 'still mounted')
  } finally {
    await open.close()
  }
  const retried = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'busy', ID: 'c1' })
  t.is(retried.body.Err, '', retried.raw)
  t.false(mounted(mountpoint), 'the retry unmounted it')
  const info = await new ApiClient(daemon.apiUrl).inspectVolume('busy')
  t.is(info.state, 'detached')
  t.is(info.mounts, 0)
})

test('a volume whose record of its mkfs was lost gets it back on the next mount', async (t) => {
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'fmt', Opts: { size: '32M' } })).body.Err, '')
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'fmt', ID: 'f1' })).body.Err, '')
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'fmt', ID: 'f1' })).body.Err, '')
  await daemon.stop()
  // As if the kvdb write after mkfs had failed: the record says never formatted.
  const file = path.join(daemon.dataDir, 'kvdb.json')
  const doc = JSON.parse(readFileSync(file, 'utf8')) as { entries: Record<string, { value: { formatted?: boolean } }> }
  const entry = doc.entries['volumes/fmt']!
  t.true(entry.value.formatted)
  delete entry.value.formatted
  await fs.writeFile(file, JSON.stringify(doc))
  daemon = await startDaemon({ dir })
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'fmt', ID: 'f2' })).body.Err, '')
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'fmt', ID: 'f2' })).body.Err, '')
  await daemon.stop()
  const after = JSON.parse(readFileSync(file, 'utf8')) as typeof doc
  t.true(after.entries['volumes/fmt']!.value.formatted, 'the mount recorded that the volume holds a file system')
  daemon = await startDaemon({ dir })
})
