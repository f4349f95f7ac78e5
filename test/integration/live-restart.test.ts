/**
 * Live restart on a real cluster (etcd, pxd processes, FUSE, loop devices, ext4): pxd is
 * replaced under a repl=2 volume that an application keeps writing (fsynced records) and
 * reading, and the mount never goes away.
 * - `pxd --takeover` of a new version: the old process hands its FUSE session over and
 *   exits; nothing the application does fails, every record is there, the epoch is the same.
 * - kill -9 under a file-descriptor store (a stand-in for systemd's): the next pxd gets the
 *   session from the store, takes it over, and answers what the dead one had read.
 * - SIGTERM while systemd restarts the unit (stand-ins for systemctl and the fd store).
 * - `pxctl node restart`: the daemon starts its own successor, which takes over.
 * The longest single write or read (the pause the restart caused) is printed.
 */
import test, { type ExecutionContext } from 'ava'
import { cpSync, existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { makeTempDir, removeDir } from '../helpers/daemon'
import { startFdStore, type FdStore } from '../helpers/fd-store'
import { PXCTL_BIN, REPO_ROOT } from '../helpers/paths'
import { guardProcess, releaseProcess } from '../helpers/exit-guard'
import { pluginCall } from '../helpers/plugin-client'
import { runCommand } from '../helpers/run'
import { checkRecords, fakeSystemctl, mounted, startApp, stopApp, type App } from '../helpers/record-app'
import { pluginOk } from '../helpers/volume-io'

assertIntegrationPreconditions()

const NEXT_VERSION = '0.1.0-next'
let cluster: Cluster
let store: FdStore
let nextBuild: string

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
  store = startFdStore(cluster.dir)
  // Another build of pxd: the same code under a new version string.
  nextBuild = makeTempDir('pxd-next-')
  cpSync(path.join(REPO_ROOT, 'dist'), path.join(nextBuild, 'dist'), { recursive: true })
  cpSync(path.join(REPO_ROOT, 'bin'), path.join(nextBuild, 'bin'), { recursive: true })
  for (const shared of ['build', 'node_modules']) symlinkSync(path.join(REPO_ROOT, shared), path.join(nextBuild, shared))
  const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }
  writeFileSync(path.join(nextBuild, 'package.json'), JSON.stringify({ ...pkg, version: NEXT_VERSION }))
})

test.after.always(async () => {
  await cluster?.stop()
  await store?.close()
  if (nextBuild) removeDir(nextBuild)
})

const api = (n: ClusterNode) => new ApiClient(n.apiUrl)

/** A repl=2 volume mounted on `node`, an application writing and reading it, and what it was before the restart. */
interface Load { name: string; mountpoint: string; device: string | undefined; epoch: number; app: App }

/** `passphrase`: a secure volume opened with it (the successor gets it in memory only). */
async function underLoad(node: ClusterNode, name: string, passphrase?: string): Promise<Load> {
  const ref = passphrase ? `name=${name},passphrase=${passphrase}` : name
  await pluginOk(node, '/VolumeDriver.Create', { Name: ref, Opts: { repl: '2', size: '256M', ...(passphrase ? { secure: 'true' } : {}) } })
  const mountpoint = (await pluginOk(node, '/VolumeDriver.Mount', { Name: ref, ID: 'm1' }))['Mountpoint'] as string
  const epoch = (await api(node).inspectVolume(name)).epoch
  const app = startApp(mountpoint)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  return { name, mountpoint, device: mounted(mountpoint), epoch, app }
}

/** After the restart: the application saw no error, the same mount, every record, the same epoch; the new pxd unmounts it. */
async function checkAfterRestart(t: ExecutionContext, what: string, load: Load, next: ClusterNode, nodeId: string): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const reports = await stopApp(load.app)
  t.log(`${what}: ${reports.writer.ops} fsynced records, longest write ${reports.writer.maxOpMs.toFixed(0)} ms, longest read ${reports.reader.maxOpMs.toFixed(0)} ms`)
  t.deepEqual(reports.writer.errors, [], 'no write failed')
  t.deepEqual(reports.reader.errors, [], 'no read failed')
  t.true(reports.writer.ops > 10 && reports.reader.ops > 10)
  t.is(mounted(load.mountpoint), load.device, 'the same device is mounted at the same place')
  checkRecords(t, load.app.file, reports.writer.ops)
  const after = await api(next).inspectVolume(load.name)
  t.is(after.epoch, load.epoch, 'no new epoch')
  t.is(after.attachedOn, nodeId)
  // The new pxd owns the mount: an unmount takes it down.
  await pluginOk(next, '/VolumeDriver.Unmount', { Name: load.name, ID: 'm1' })
  t.is(mounted(load.mountpoint), undefined)
}

const exitOf = (n: ClusterNode) => new Promise<number | null>((resolve) => n.child.once('exit', (code) => resolve(code)))

/** The passphrase is in no file the restart wrote and no log. */
function checkPassphraseNowhere(t: ExecutionContext, node: ClusterNode, passphrase: string, logs: string[]): void {
  t.false(readFileSync(path.join(node.runDir, 'session.json'), 'utf8').includes(passphrase), 'the session file holds no passphrase')
  for (const l of logs) t.false(l.includes(passphrase), 'no log holds the passphrase')
}

const PASSPHRASE = 'live-restart-pass-3c9d'

test.serial('pxd --takeover of a new version: a passphrase volume stays mounted, nothing fails, the epoch stays', async (t) => {
  const old = cluster.node('node-a')
  const load = await underLoad(old, 'live-takeover', PASSPHRASE)
  const oldExit = exitOf(old)
  const next = await cluster.start('node-a', { extraArgs: ['--takeover'], bin: path.join(nextBuild, 'bin', 'pxd'), after: old.child }).catch((err) => {
    t.log(`the old pxd said:\n${old.logs()}`)
    throw err
  })
  t.is(await oldExit, 0, 'the old pxd exits cleanly once it handed over')
  t.regex(old.logs(), /FUSE session handed over/)
  t.regex(next.logs(), /live restart: the FUSE session and its volumes were taken over/)
  await checkAfterRestart(t, 'takeover', load, next, 'node-a')
  checkPassphraseNowhere(t, next, PASSPHRASE, [old.logs(), next.logs()])
  const self = (await api(next).listNodes()).find((n) => n.nodeId === 'node-a')
  t.is(self?.version, NEXT_VERSION)
  t.true(self?.online)
  await pluginOk(next, '/VolumeDriver.Remove', { Name: 'live-takeover' })
})

test.serial('kill -9 under an fd store: the next pxd takes over the same mount (a passphrase volume: its key waits in the store)', async (t) => {
  const first = await cluster.start('node-c', { env: { NOTIFY_SOCKET: store.socket, PXD_FD_STORE: '1' } })
  await store.waitFor('pxd-fuse')
  await store.waitFor('pxd-keys')
  const load = await underLoad(first, 'live-crash', PASSPHRASE)
  await first.kill()
  // The application's requests wait in the kernel meanwhile.
  await new Promise((resolve) => setTimeout(resolve, 500))
  const next = await cluster.start('node-c', { ...store.startWith(), env: { ...store.startWith().env, PXD_FD_STORE: '1' } })
  t.regex(next.logs(), /the service manager kept the FUSE session/)
  await checkAfterRestart(t, 'kill -9', load, next, 'node-c')
  checkPassphraseNowhere(t, next, PASSPHRASE, [first.logs(), next.logs()])
  await pluginOk(next, '/VolumeDriver.Remove', { Name: 'live-crash' })
  // A clean stop takes the session out of the store.
  await next.stop()
  await waitFor('the session to leave the fd store', async () => store.messages.some((m) => m.includes('FDSTOREREMOVE=1')))
})

test.serial('SIGTERM of a systemctl restart leaves the session in the fd store; SIGTERM of a stop unmounts', async (t) => {
  const first = await cluster.start('node-d', { env: { NOTIFY_SOCKET: store.socket, PXD_FD_STORE: '1', PATH: fakeSystemctl(cluster.dir, 'restart') } })
  await store.waitFor('pxd-fuse')
  const load = await underLoad(first, 'live-sigterm')
  const exited = exitOf(first)
  first.child.kill('SIGTERM')
  t.is(await exited, 0)
  t.regex(first.logs(), /the service is restarting: handing the FUSE session to the fd store/)
  t.is(mounted(load.mountpoint), load.device, 'the volume stays mounted while no pxd runs')
  const next = await cluster.start('node-d', { ...store.startWith(), env: { ...store.startWith().env, PXD_FD_STORE: '1', PATH: fakeSystemctl(cluster.dir, 'stop') } })
  await checkAfterRestart(t, 'systemctl restart', load, next, 'node-d')

  // A stop (no restart job): everything is taken down as before, and the store let go.
  await pluginOk(next, '/VolumeDriver.Mount', { Name: 'live-sigterm', ID: 'm2' })
  t.truthy(mounted(load.mountpoint))
  const stopped = exitOf(next)
  next.child.kill('SIGTERM')
  t.is(await stopped, 0)
  t.is(mounted(load.mountpoint), undefined, 'a stop unmounts the volume')
  t.true(store.messages.some((m) => m.includes('FDSTOREREMOVE=1')))
})

test.serial('pxctl node restart: a successor of the same command line takes over, every volume stays mounted', async (t) => {
  const old = cluster.node('node-a')
  const load = await underLoad(old, 'live-pxctl')
  const oldExit = exitOf(old)
  const r = await runCommand(PXCTL_BIN, ['--api', old.apiUrl, '--json', 'node', 'restart'], 30_000)
  t.is(r.code, 0, r.out)
  const pid = (JSON.parse(r.out) as { pid: number }).pid
  guardProcess(pid)
  try {
    t.is(await oldExit, 0)
    await waitFor('the successor to serve the plugin socket', async () => (await pluginCall(old.pluginSocket, '/Plugin.Activate', {})).status === 200, 30_000)
    // The successor answers on the same socket and port: `old` names them.
    await checkAfterRestart(t, 'pxctl node restart', load, old, 'node-a')
  } finally {
    // The successor is this test's too: ended by its pid.
    process.kill(pid, 'SIGTERM')
    await waitFor('the successor to exit', async () => !existsSync(`/proc/${pid}`), 60_000)
    releaseProcess(pid)
  }
})

test.serial('pxd --takeover with no pxd running on the dirs fails at start, saying so, and makes nothing', async (t) => {
  const dir = makeTempDir('pxd-takeover-')
  try {
    const r = await runCommand(process.execPath, [path.join(REPO_ROOT, 'bin', 'pxd'), '--takeover', '--data-dir', path.join(dir, 'data'), '--run-dir', path.join(dir, 'run'),
      '--plugin-socket', path.join(dir, 'pxd.sock'), '--api-listen', '127.0.0.1:1'], 30_000)
    t.is(r.code, 1, r.out)
    t.regex(r.stderr, /no running pxd answers at .*handoff\.sock/)
    t.false(existsSync(path.join(dir, 'data')), 'no data dir was made')
    t.false(existsSync(path.join(dir, 'pxd.sock')))
  } finally {
    removeDir(dir)
  }
})
