/**
 * A second pxd started on the dirs of a running one (`npm start` while the service runs)
 * must stop before it touches anything: it used to "clean up" the live daemon's mounts,
 * loop devices and FUSE mount, and mark its volumes detached, before finding the plugin
 * socket taken.
 */
import test from 'ava'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { freePort, makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { PXD_BIN } from '../helpers/paths'
import { runCommand } from '../helpers/run'
import { DAEMON_NODE_FLAGS } from '../../src/cli/node-flags'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

test('a second pxd on the same data and run dirs exits at once and leaves the running one alone', async (t) => {
  daemon = await startDaemon({ dir })
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'busy', Opts: { size: '32M' } })).body.Err, '')
  const m = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'busy', ID: 'x' })
  t.is(m.body.Err, '', m.raw)
  const mountpoint = m.body.Mountpoint as string
  await fs.writeFile(path.join(mountpoint, 'before'), 'one')

  const second = await runCommand(process.execPath, [
    ...DAEMON_NODE_FLAGS, PXD_BIN,
    '--data-dir', daemon.dataDir, '--run-dir', daemon.runDir,
    '--plugin-socket', path.join(dir, 'other.sock'), '--api-listen', `127.0.0.1:${await freePort()}`,
  ], 60_000)
  t.is(second.code, 1, second.stdout + second.stderr)
  t.regex(second.stdout + second.stderr, new RegExp(`another pxd \\(pid ${daemon.pid}\\) is using`))
  t.notRegex(second.stdout + second.stderr, /left by an earlier run/, 'it cleaned up nothing')

  // The running daemon still serves its volume, and the metadata still says so.
  await fs.writeFile(path.join(mountpoint, 'after'), 'two')
  t.is(await fs.readFile(path.join(mountpoint, 'before'), 'utf8'), 'one')
  const mounts = await fs.readFile('/proc/self/mounts', 'utf8')
  t.true(mounts.split('\n').some((l) => l.split(' ')[1] === mountpoint), 'the volume is still mounted')
  const info = await new ApiClient(daemon.apiUrl).inspectVolume('busy')
  t.is(info.state, 'attached')
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'busy', ID: 'x' })).body.Err, '')
})

test('the lock goes with the process: after a kill -9 the next start takes it', async (t) => {
  await daemon?.stop()
  daemon = await startDaemon({ dir })
  await daemon.kill()
  daemon = await startDaemon({ dir })
  t.is((await pluginCall(daemon.pluginSocket, '/Plugin.Activate', {})).status, 200)
})
