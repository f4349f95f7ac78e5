/**
 * Live restart of a node that mounts a shared volume as a client (real etcd, real pxd
 * processes, the addon's FUSE client, the serving node's ext4): the client mount's FUSE
 * connection goes to the next pxd with its nodeid table, so the mount stays, an
 * application on it keeps writing fsynced records and reading them without an error, and
 * a lock held on it stays held (the server never saw the client go).
 * - `pxd --takeover`: the connection passes over the handoff socket.
 * - SIGTERM while systemd restarts the unit: it waits in the fd store (a stand-in).
 */
import test, { type ExecutionContext } from 'ava'
import path from 'node:path'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { startFdStore, type FdStore } from '../helpers/fd-store'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { checkRecords, fakeSystemctl, mounted, mountIdOf, startApp, stopApp, type App } from '../helpers/record-app'
import { pluginOk } from '../helpers/volume-io'
import { endAllChildren, holdLock, tryLock, type Child } from '../faults/cross-node'

assertIntegrationPreconditions()

const VOLUME = 'shlive'
let cluster: Cluster
let store: FdStore
const mp: Record<string, string> = {}

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
  store = startFdStore(cluster.dir)
  await cluster.start('node-c', { env: { NOTIFY_SOCKET: store.socket, PXD_FD_STORE: '1', PATH: fakeSystemctl(cluster.dir, 'restart') } })
  await store.waitFor('pxd-fuse')
  await pluginOk(cluster.node('node-a'), '/VolumeDriver.Create', { Name: VOLUME, Opts: { size: '256M', repl: '2', shared: 'true' } })
  for (const id of ['node-a', 'node-b', 'node-c']) mp[id] = (await pluginOk(cluster.node(id), '/VolumeDriver.Mount', { Name: VOLUME, ID: `m-${id}` })).Mountpoint as string
})

test.after.always(async () => {
  endAllChildren()
  for (const id of ['node-c', 'node-b', 'node-a']) await pluginOk(cluster.node(id), '/VolumeDriver.Unmount', { Name: VOLUME, ID: `m-${id}` }).catch(() => undefined)
  await cluster?.stop()
  await store?.close()
})

const exitOf = (n: ClusterNode) => new Promise<number | null>((resolve) => n.child.once('exit', (code) => resolve(code)))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** A writer, a reader and a lock holder on node `id`'s client mount, and the mount's id before the restart. */
interface Load { app: App; lock: Child; lockFile: string; mountId: string | undefined }

async function underLoad(id: string): Promise<Load> {
  const app = startApp(mp[id]!, `records-${id}`)
  const lockFile = `lock-${id}`
  const lock = await holdLock('lockf', path.join(mp[id]!, lockFile))
  await sleep(1500)
  return { app, lock, lockFile, mountId: mountIdOf(mp[id]!) }
}

/** After the restart: same mount, no error, every record (seen from the server too), the lock still held and then let go through the new pxd. */
async function checkAfter(t: ExecutionContext, what: string, id: string, load: Load): Promise<void> {
  await sleep(1000)
  const atServer = path.join(mp['node-a']!, load.lockFile)
  t.regex(await tryLock('lockf', atServer), /^(EAGAIN|EACCES)$/, 'the lock taken before the restart is still held')
  const reports = await stopApp(load.app)
  t.log(`${what}: ${reports.writer.ops} fsynced records, longest write ${reports.writer.maxOpMs.toFixed(0)} ms, longest read ${reports.reader.maxOpMs.toFixed(0)} ms`)
  t.deepEqual(reports.writer.errors, [], 'no write failed')
  t.deepEqual(reports.reader.errors, [], 'no read failed')
  t.true(reports.writer.ops > 10 && reports.reader.ops > 10)
  t.is(mountIdOf(mp[id]!), load.mountId, 'the same mount, never remounted')
  checkRecords(t, load.app.file, reports.writer.ops)
  checkRecords(t, path.join(mp['node-a']!, path.basename(load.app.file)), reports.writer.ops)
  load.lock.send('release')
  t.is(await load.lock.exited(), 0)
  t.is(await tryLock('lockf', atServer), 'ok', 'the unlock went through the new pxd')
}

test.serial('pxd --takeover on a client node: the shared mount stays, nothing fails, a lock stays held', async (t) => {
  const old = cluster.node('node-b')
  const load = await underLoad('node-b')
  const oldExit = exitOf(old)
  const next = await cluster.start('node-b', { extraArgs: ['--takeover'], after: old.child }).catch((err) => {
    t.log(`the old pxd said:\n${old.logs()}`)
    throw err
  })
  t.is(await oldExit, 0, 'the old pxd exits cleanly once it handed over')
  t.regex(old.logs(), /"sharedClients":1.*FUSE session handed over/)
  t.regex(next.logs(), /the shared volume's client mount was taken over/)
  await checkAfter(t, 'takeover', 'node-b', load)
  // The new pxd owns the mount: its unmount takes it down.
  await pluginOk(next, '/VolumeDriver.Unmount', { Name: VOLUME, ID: 'm-node-b' })
  t.is(mounted(mp['node-b']!), undefined)
})

test.serial('SIGTERM of a systemctl restart on a client node: the connection waits in the fd store, the next pxd serves it', async (t) => {
  const old = cluster.node('node-c')
  const load = await underLoad('node-c')
  const exited = exitOf(old)
  old.child.kill('SIGTERM')
  t.is(await exited, 0)
  await store.waitFor('pxd-share-0')
  t.truthy(mounted(mp['node-c']!), 'the client mount stays while no pxd runs')
  const next = await cluster.start('node-c', { ...store.startWith(), env: { ...store.startWith().env, PXD_FD_STORE: '1', PATH: fakeSystemctl(cluster.dir, 'stop') } })
  t.regex(next.logs(), /the shared volume's client mount was taken over/)
  await waitFor('the store to let go of the client connection', async () => store.messages.some((m) => m.includes('FDSTOREREMOVE=1\nFDNAME=pxd-share-0')))
  await checkAfter(t, 'systemctl restart', 'node-c', load)
  await pluginOk(next, '/VolumeDriver.Unmount', { Name: VOLUME, ID: 'm-node-c' })
  t.is(mounted(mp['node-c']!), undefined)
})
