/**
 * End to end through the real plugin socket of a real pxd process: create, mount, write
 * with fsync, check the whole stack (ext4 on a loop device on a file on pxd's FUSE
 * mount), unmount, restart the daemon, mount again and read the same bytes.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { leftoversUnder, makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

function mountOf(target: string) {
  for (const line of execFileSync('cat', ['/proc/self/mounts'], { encoding: 'utf8' }).split('\n')) {
    const [source, mountpoint, fstype] = line.split(' ')
    if (mountpoint === target) return { source: source!, fstype: fstype! }
  }
  return undefined
}

function loopBackingFile(device: string): string {
  return execFileSync('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE', device], { encoding: 'utf8' }).trim()
}



test('create, mount, write with fsync, unmount, restart, mount again, read back, remove', async (t) => {
  daemon = await startDaemon({ dir })
  const sock = daemon.pluginSocket

  const activate = await pluginCall(sock, '/Plugin.Activate')
  t.deepEqual(activate.body, { Implements: ['VolumeDriver'] })
  t.is(activate.contentType, 'application/vnd.docker.plugins.v1+json')
  t.deepEqual((await pluginCall(sock, '/VolumeDriver.Capabilities', {})).body, { Capabilities: { Scope: 'global' } })

  const created = await pluginCall(sock, '/VolumeDriver.Create', { Name: 'data1', Opts: { size: '64M' } })
  t.is(created.status, 200, created.raw)
  t.is(created.body.Err, '')
  // The same create again is not an error.
  t.is((await pluginCall(sock, '/VolumeDriver.Create', { Name: 'data1', Opts: { size: '64M' } })).body.Err, '')

  const got = await pluginCall(sock, '/VolumeDriver.Get', { Name: 'data1' })
  t.is((got.body.Volume as { Name: string }).Name, 'data1')
  t.is((got.body.Volume as { Mountpoint: string }).Mountpoint, '')

  const mounted = await pluginCall(sock, '/VolumeDriver.Mount', { Name: 'data1', ID: 'mount-1' })
  t.is(mounted.body.Err, '', mounted.raw)
  const mountpoint = mounted.body.Mountpoint as string
  t.is(mountpoint, path.join(daemon.runDir, 'mounts', 'data1'))
  t.is((await pluginCall(sock, '/VolumeDriver.Path', { Name: 'data1' })).body.Mountpoint, mountpoint)

  // The stack: ext4 on a loop device whose backing file is on pxd's FUSE mount.
  const fsMount = mountOf(mountpoint)
  t.truthy(fsMount, 'volume is mounted')
  t.is(fsMount!.fstype, 'ext4')
  t.regex(fsMount!.source, /^\/dev\/loop\d+$/)
  const backing = loopBackingFile(fsMount!.source)
  t.true(backing.startsWith(path.join(daemon.runDir, 'dev') + '/'), `loop backing file ${backing}`)
  const fuseMount = mountOf(path.join(daemon.runDir, 'dev'))
  t.truthy(fuseMount)
  t.regex(fuseMount!.fstype, /^fuse/)

  const big = randomBytes(8 * 1024 * 1024)
  const small = Buffer.from(`hello from pxd ${Date.now()}\n`)
  await writeSynced(path.join(mountpoint, 'big.bin'), big)
  await fs.mkdir(path.join(mountpoint, 'sub'))
  await writeSynced(path.join(mountpoint, 'sub', 'small.txt'), small)

  // A second mount ID shares the mount; the first unmount keeps it mounted.
  t.is((await pluginCall(sock, '/VolumeDriver.Mount', { Name: 'data1', ID: 'mount-2' })).body.Mountpoint, mountpoint)
  t.is((await pluginCall(sock, '/VolumeDriver.Unmount', { Name: 'data1', ID: 'mount-1' })).body.Err, '')
  t.truthy(mountOf(mountpoint), 'still mounted while mount-2 holds it')
  // Unknown and repeated IDs change nothing.
  t.is((await pluginCall(sock, '/VolumeDriver.Unmount', { Name: 'data1', ID: 'never-mounted' })).body.Err, '')
  t.is((await pluginCall(sock, '/VolumeDriver.Unmount', { Name: 'data1', ID: 'mount-1' })).body.Err, '')
  t.truthy(mountOf(mountpoint))
  t.is((await pluginCall(sock, '/VolumeDriver.Unmount', { Name: 'data1', ID: 'mount-2' })).body.Err, '')
  t.is(mountOf(mountpoint), undefined, 'unmounted after the last unmount')
  t.deepEqual(leftoversUnder(path.join(daemon.runDir, 'mounts')), [])

  // Restart: specs and data survive.
  await daemon.stop()
  t.deepEqual(leftoversUnder(dir), [], 'a clean stop leaves nothing mounted or attached')
  daemon = await startDaemon({ dir })
  const list = await pluginCall(daemon.pluginSocket, '/VolumeDriver.List', {})
  t.deepEqual((list.body.Volumes as Array<{ Name: string }>).map((v) => v.Name), ['data1'])
  // Mesos (dvdcli) mounts with no ID at all.
  const again = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'data1' })
  t.is(again.body.Err, '', again.raw)
  const mp2 = again.body.Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mp2, 'big.bin'))), sha(big))
  t.deepEqual(await fs.readFile(path.join(mp2, 'sub', 'small.txt')), small)
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'data1' })).body.Err, '')
  t.is(mountOf(mp2), undefined)

  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Remove', { Name: 'data1' })).body.Err, '')
  t.deepEqual((await pluginCall(daemon.pluginSocket, '/VolumeDriver.List', {})).body.Volumes, [])
  t.regex(String((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Get', { Name: 'data1' })).body.Err), /not found/)
})

test('dvdcli sequence with an inline spec: Get fails, Create, Mount without ID; the full name works everywhere', async (t) => {
  daemon ??= await startDaemon({ dir })
  const sock = daemon.pluginSocket
  const full = 'name=px_inline,size=32M,repl=1'
  const get1 = await pluginCall(sock, '/VolumeDriver.Get', { Name: full })
  t.regex(String(get1.body.Err), /px_inline not found/)
  t.is((await pluginCall(sock, '/VolumeDriver.Create', { Name: full, Opts: { io_priority: 'high' } })).body.Err, '')
  const get2 = await pluginCall(sock, '/VolumeDriver.Get', { Name: full })
  t.is((get2.body.Volume as { Name: string }).Name, full, 'Docker knows the volume by the name it asked with')
  const m = await pluginCall(sock, '/VolumeDriver.Mount', { Name: full })
  t.is(m.body.Mountpoint, path.join(daemon.runDir, 'mounts', 'px_inline'))
  await fs.writeFile(path.join(m.body.Mountpoint as string, 'f'), 'x')
  t.is((await pluginCall(sock, '/VolumeDriver.Path', { Name: full })).body.Mountpoint, m.body.Mountpoint)
  // Removing a mounted volume is refused and changes nothing.
  t.regex(String((await pluginCall(sock, '/VolumeDriver.Remove', { Name: full })).body.Err), /mounted/)
  t.is((await pluginCall(sock, '/VolumeDriver.Unmount', { Name: full })).body.Err, '')
  t.is((await pluginCall(sock, '/VolumeDriver.Remove', { Name: full })).body.Err, '')
  t.deepEqual(leftoversUnder(path.join(daemon.runDir, 'mounts')), [])
})
