/**
 * Live restart of the nodes of a shared volume (real etcd, real pxd processes, the addon's
 * FUSE client, the serving node's ext4), while an application on a client mount keeps
 * writing fsynced records and reading them, and holds a lock:
 * - a client node: its FUSE connection goes to the next pxd with its nodeid table, by
 *   `pxd --takeover` (the handoff socket) and by a systemctl restart (the fd store, a
 *   stand-in): the mount stays, nothing fails, the lock stays held (the server never saw
 *   the client go);
 * - the serving node, by `pxd --takeover` and by kill -9 under the fd store: the volume
 *   stays attached and mounted at the same epoch, the clients' requests wait and go on,
 *   and each client takes its locks again (the new server asks it to, in a grace period),
 *   the idle holder of one too.
 */
import test, { type ExecutionContext } from 'ava'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { startFdStore, type FdStore } from '../helpers/fd-store'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { checkRecords, fakeSystemctl, mounted, mountIdOf, startApp, stopApp, type App } from '../helpers/record-app'
import { pluginOk } from '../helpers/volume-io'
import { endAllChildren, holdLock, tryLock, waitForLock, type Child } from '../faults/cross-node'

assertIntegrationPreconditions()

const VOLUME = 'shlive'
let cluster: Cluster
let store: FdStore
const mp: Record<string, string> = {}
/** Every application started, ended by pid after the tests whatever happened. */
const apps: App[] = []

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
  for (const app of apps) for (const child of [app.writer, app.reader]) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
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
  apps.push(app)
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

test.serial('pxd --takeover on a client node: the shared mount stays, nothing fails, a lock stays held, a blocked lock waits on', async (t) => {
  const old = cluster.node('node-b')
  const load = await underLoad('node-b')
  // A process on the client waits for a lock a process on the server holds.
  const holder = await holdLock('lockf', path.join(mp['node-a']!, 'lock-wait'))
  const waiter = waitForLock('lockf', path.join(mp['node-b']!, 'lock-wait'))
  await waiter.waitFor(/^waiting$/)
  await sleep(500)
  const oldExit = exitOf(old)
  const next = await cluster.start('node-b', { extraArgs: ['--takeover'], after: old.child }).catch((err) => {
    t.log(`the old pxd said:\n${old.logs()}`)
    throw err
  })
  t.is(await oldExit, 0, 'the old pxd exits cleanly once it handed over')
  t.regex(old.logs(), /"sharedClients":1.*FUSE session handed over/)
  t.regex(next.logs(), /"client":"[^"]+".*live restart: the shared volume was taken over/)
  await checkAfter(t, 'takeover', 'node-b', load)
  t.false(waiter.lines.some((l) => l.startsWith('got ')), 'the waiter did not get the lock while it was held')
  holder.send('release')
  await waiter.waitFor(/^got /, 20_000)
  t.is(await waiter.exited(), 0, 'the waiter got the lock once it was let go, through the new pxd')
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
  t.regex(next.logs(), /"client":"[^"]+".*live restart: the shared volume was taken over/)
  await waitFor('the store to let go of the client connection', async () => store.messages.some((m) => m.includes('FDSTOREREMOVE=1\nFDNAME=pxd-share-0')))
  await checkAfter(t, 'systemctl restart', 'node-c', load)
  await pluginOk(next, '/VolumeDriver.Unmount', { Name: VOLUME, ID: 'm-node-c' })
  t.is(mounted(mp['node-c']!), undefined)
})


/** Node `id`'s client mount and the lock `file` on it, held by a process with nothing else to do. */
async function idleLock(id: string, file: string): Promise<Child> {
  return holdLock('lockf', path.join(mp[id]!, file))
}

const RECLAIMED = /locks held from the last server taken again on the new one/g
const reclaims = (id: string) => cluster.node(id).logs().match(RECLAIMED)?.length ?? 0

test.serial('pxd --takeover on the serving node: the volume stays served at the same epoch, clients go on, take their locks again, a blocked lock waits on', async (t) => {
  mp['node-b'] = (await pluginOk(cluster.node('node-b'), '/VolumeDriver.Mount', { Name: VOLUME, ID: 'm-node-b' })).Mountpoint as string
  mp['node-c'] = (await pluginOk(cluster.node('node-c'), '/VolumeDriver.Mount', { Name: VOLUME, ID: 'm-node-c' })).Mountpoint as string
  const old = cluster.node('node-a')
  const epoch = (await new ApiClient(old.apiUrl).inspectVolume(VOLUME)).epoch
  const serverMount = mountIdOf(mp['node-a']!)
  const load = await underLoad('node-b')
  const idle = await idleLock('node-c', 'lock-idle')
  // A process on a client waits for a lock a process on the server holds, across the restart.
  const holder = await holdLock('lockf', path.join(mp['node-a']!, 'lock-srv'))
  const waiter = waitForLock('lockf', path.join(mp['node-c']!, 'lock-srv'))
  await waiter.waitFor(/^waiting$/)
  const [b, c] = [reclaims('node-b'), reclaims('node-c')]
  const oldExit = exitOf(old)
  const next = await cluster.start('node-a', { extraArgs: ['--takeover'], after: old.child })
  t.is(await oldExit, 0)
  t.regex(next.logs(), /"served":true.*live restart: the shared volume was taken over/)
  await waitFor('both clients to take their locks again', async () => reclaims('node-b') > b && reclaims('node-c') > c, 20_000)
  t.is(mountIdOf(mp['node-a']!), serverMount, 'the server\'s file system was never unmounted')
  t.regex(await tryLock('lockf', path.join(mp['node-a']!, 'lock-idle')), /^(EAGAIN|EACCES)$/, 'the idle holder\'s lock is held again')
  await checkAfter(t, 'server takeover', 'node-b', load)
  idle.send('release')
  t.is(await idle.exited(), 0)
  t.is(await tryLock('lockf', path.join(mp['node-a']!, 'lock-idle')), 'ok')
  t.false(waiter.lines.some((l) => l.startsWith('got ')), 'the waiter did not get the lock while it was held')
  holder.send('release')
  await waiter.waitFor(/^got /, 20_000)
  t.is(await waiter.exited(), 0, 'the waiter got the lock from the new server once it was let go')
  const after = await new ApiClient(next.apiUrl).inspectVolume(VOLUME)
  t.is(after.epoch, epoch, 'no new epoch')
  t.is(after.sharing?.server, 'node-a')
})

test.serial('kill -9 of the serving node under the fd store: the next pxd serves the volume again, its clients go on', async (t) => {
  const name = 'shcrash'
  const server = cluster.node('node-c')
  await pluginOk(server, '/VolumeDriver.Create', { Name: name, Opts: { size: '256M', repl: '2', shared: 'true' } })
  const served = (await pluginOk(server, '/VolumeDriver.Mount', { Name: name, ID: 'c1' })).Mountpoint as string
  const client = (await pluginOk(cluster.node('node-b'), '/VolumeDriver.Mount', { Name: name, ID: 'b1' })).Mountpoint as string
  try {
    const epoch = (await new ApiClient(server.apiUrl).inspectVolume(name)).epoch
    // Records written at their place: an append in flight when its server crashed fails
    // (EIO: it may have landed), where a write at an offset is sent again.
    const app = startApp(client, 'records', true)
    apps.push(app)
    const lock = await holdLock('lockf', path.join(client, 'lock'))
    await sleep(1500)
    const before = reclaims('node-b')
    await server.kill()
    await sleep(500)
    const next = await cluster.start('node-c', { ...store.startWith(), env: { ...store.startWith().env, PXD_FD_STORE: '1' } })
    t.regex(next.logs(), /"served":true.*live restart: the shared volume was taken over/)
    await waitFor('the client to take its lock again', async () => reclaims('node-b') > before, 20_000)
    t.regex(await tryLock('lockf', path.join(served, 'lock')), /^(EAGAIN|EACCES)$/, 'the client\'s lock is held again')
    await sleep(1000)
    const reports = await stopApp(app)
    t.log(`server kill -9: ${reports.writer.ops} fsynced records, longest write ${reports.writer.maxOpMs.toFixed(0)} ms`)
    t.deepEqual(reports.writer.errors, [], 'no write failed')
    t.deepEqual(reports.reader.errors, [], 'no read failed')
    checkRecords(t, path.join(served, path.basename(app.file)), reports.writer.ops)
    lock.send('release')
    t.is(await lock.exited(), 0)
    t.is((await new ApiClient(next.apiUrl).inspectVolume(name)).epoch, epoch, 'no new epoch')
    // The new pxd knows the server's own mount: its unmount is the last but the client's.
    await pluginOk(cluster.node('node-b'), '/VolumeDriver.Unmount', { Name: name, ID: 'b1' })
    await pluginOk(next, '/VolumeDriver.Unmount', { Name: name, ID: 'c1' })
    await waitFor('the volume to be detached', async () => mounted(served) === undefined, 20_000)
  } finally {
    await pluginOk(cluster.node('node-b'), '/VolumeDriver.Unmount', { Name: name, ID: 'b1' }).catch(() => undefined)
  }
})
