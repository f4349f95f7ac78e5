/**
 * Shared volumes on a real three-node cluster (real etcd, real daemons, real FUSE): one
 * repl=2 volume mounted on every node at once. The first node to mount serves it from its
 * ext4; the other two mount the FUSE client. What one node does, the others see.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { ApiClient } from '../../src/api/client'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { MiB, pluginOk, sha, writeSynced } from '../helpers/volume-io'
import { appendFromAll, checkAppendRecords, flockBlocksAcross, lockBlocksAcross } from '../faults/cross-node'

assertIntegrationPreconditions()

const run = promisify(execFile)
const POSIX_SUITE = path.join(__dirname, '..', 'faults', 'posix-suite.js')

let cluster: Cluster
let a: ClusterNode, b: ClusterNode, c: ClusterNode
const mp: Record<string, string> = {}

async function mountTypeOf(mountpoint: string): Promise<string | undefined> {
  const mounts = await fs.readFile('/proc/self/mounts', 'utf8')
  return mounts.split('\n').map((l) => l.split(' ')).find((f) => f[1] === mountpoint)?.[2]
}

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'])
  ;[a, b, c] = [cluster.node('node-a'), cluster.node('node-b'), cluster.node('node-c')]
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'shared1', Opts: { size: '256M', repl: '2', shared: 'true' } })
  for (const n of [a, b, c]) mp[n.nodeId] = (await pluginOk(n, '/VolumeDriver.Mount', { Name: 'shared1', ID: `m-${n.nodeId}` })).Mountpoint as string
})

test.after.always(async () => {
  for (const n of [c, b, a]) if (n) await pluginCall(n.pluginSocket, '/VolumeDriver.Unmount', { Name: 'shared1', ID: `m-${n.nodeId}` }).catch(() => undefined)
  await cluster?.stop()
})

test.serial('the first node serves the ext4 itself, the others mount the FUSE client, every one at <run-dir>/mounts/<name>', async (t) => {
  t.is(await mountTypeOf(mp['node-a']!), 'ext4')
  t.is(await mountTypeOf(mp['node-b']!), 'fuse.pxd-shared')
  t.is(await mountTypeOf(mp['node-c']!), 'fuse.pxd-shared')
  for (const n of [a, b, c]) t.is(mp[n.nodeId], path.join(n.runDir, 'mounts', 'shared1'))
  const info = await new ApiClient(c.apiUrl).inspectVolume('shared1')
  t.true(info.shared)
  t.is(info.sharing?.server, 'node-a')
  t.deepEqual(info.sharing?.clients.map((x) => x.nodeId).sort(), ['node-b', 'node-c'])
  t.true(info.sharing!.clients.every((x) => x.mounts === 1))
})

test.serial('a file written on each node reads back byte-exact on the other two', async (t) => {
  const data = new Map<string, Buffer>()
  for (const n of [a, b, c]) {
    const bytes = randomBytes(3 * MiB + 123)
    data.set(n.nodeId, bytes)
    await writeSynced(path.join(mp[n.nodeId]!, `from-${n.nodeId}.bin`), bytes)
  }
  for (const reader of [a, b, c]) {
    for (const [writer, bytes] of data) {
      t.is(sha(await fs.readFile(path.join(mp[reader.nodeId]!, `from-${writer}.bin`))), sha(bytes), `${writer}'s file read on ${reader.nodeId}`)
    }
  }
})

test.serial('directories created and renamed on one node are seen on the others at once', async (t) => {
  await fs.mkdir(path.join(mp['node-b']!, 'd1', 'd2'), { recursive: true })
  await fs.writeFile(path.join(mp['node-b']!, 'd1', 'd2', 'f'), 'hello')
  t.deepEqual(await fs.readdir(path.join(mp['node-c']!, 'd1')), ['d2'])
  await fs.rename(path.join(mp['node-c']!, 'd1'), path.join(mp['node-c']!, 'renamed'))
  for (const n of [a, b, c]) {
    t.is(await fs.readFile(path.join(mp[n.nodeId]!, 'renamed', 'd2', 'f'), 'utf8'), 'hello', `seen on ${n.nodeId}`)
    await t.throwsAsync(fs.stat(path.join(mp[n.nodeId]!, 'd1')), { code: 'ENOENT' }, `old name gone on ${n.nodeId}`)
  }
  await fs.chmod(path.join(mp['node-a']!, 'renamed', 'd2', 'f'), 0o640)
  await fs.chown(path.join(mp['node-a']!, 'renamed', 'd2', 'f'), 1234, 5678)
  await fs.truncate(path.join(mp['node-a']!, 'renamed', 'd2', 'f'), 2)
  // Attributes are cached for at most a second on a client.
  await new Promise((r) => setTimeout(r, 1500))
  for (const n of [b, c]) {
    const st = await fs.stat(path.join(mp[n.nodeId]!, 'renamed', 'd2', 'f'))
    t.is(st.mode & 0o777, 0o640)
    t.is(st.uid, 1234)
    t.is(st.gid, 5678)
    t.is(st.size, 2)
  }
  await fs.rm(path.join(mp['node-b']!, 'renamed'), { recursive: true })
  t.deepEqual((await fs.readdir(mp['node-a']!)).filter((x) => x === 'renamed'), [])
})

test.serial('concurrent writers in separate files on two client nodes', async (t) => {
  const writes = [b, c].map(async (n) => {
    const bytes = randomBytes(8 * MiB)
    const file = path.join(mp[n.nodeId]!, `parallel-${n.nodeId}.bin`)
    await writeSynced(file, bytes)
    return { n, bytes }
  })
  for (const { n, bytes } of await Promise.all(writes)) {
    t.is(sha(await fs.readFile(path.join(mp['node-a']!, `parallel-${n.nodeId}.bin`))), sha(bytes))
  }
})

test.serial('O_APPEND records from two nodes are all present and whole', async (t) => {
  const file = 'appends.log'
  const expected = await appendFromAll([mp['node-b']!, mp['node-c']!, mp['node-a']!], file, 300, 128)
  const result = await checkAppendRecords(path.join(mp['node-a']!, file), expected)
  t.true(result.ok, result.detail)
})

test.serial('an fcntl lock and a flock held on one node block the same lock on another until released', async (t) => {
  await fs.writeFile(path.join(mp['node-a']!, 'lockfile'), 'x')
  const posix = await lockBlocksAcross(mp['node-b']!, mp['node-c']!, 'lockfile')
  t.true(posix.ok, posix.detail)
  const server = await lockBlocksAcross(mp['node-a']!, mp['node-b']!, 'lockfile')
  t.true(server.ok, `server-side holder: ${server.detail}`)
  const flock = await flockBlocksAcross(mp['node-c']!, mp['node-b']!, 'lockfile')
  t.true(flock.ok, flock.detail)
})

for (const node of ['node-a', 'node-b']) {
  test.serial(`the POSIX suite passes on ${node === 'node-a' ? 'the server\'s ext4' : 'a client\'s FUSE mount'} (${node})`, async (t) => {
    const r = await run(process.execPath, [POSIX_SUITE, mp[node]!], { timeout: 300_000, maxBuffer: 16 * MiB }).catch((err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? '', stderr: err.stderr ?? '', failed: true }))
    const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { check?: string; ok?: boolean; detail?: string; done?: boolean; failed?: number })
    const failed = lines.filter((l) => l.check && !l.ok)
    t.deepEqual(failed, [], 'every check passes')
    t.true(lines.some((l) => l.done && l.failed === 0), `the suite ran to the end: ${r.stderr}`)
  })
}

test.serial('a shared volume cannot be removed while any node has it mounted; the last unmount anywhere detaches it', async (t) => {
  const api = new ApiClient(a.apiUrl)
  const list = await api.listVolumes()
  t.true(list.find((v) => v.name === 'shared1')?.shared)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'shared1', ID: 'm-node-a' })
  // The server keeps the volume attached for its clients.
  t.is((await api.inspectVolume('shared1')).attachedOn, 'node-a')
  t.is(await fs.readFile(path.join(mp['node-b']!, 'from-node-c.bin')).then((x) => x.length), 3 * MiB + 123)
  for (const n of [a, b, c]) t.regex(String((await pluginCall(n.pluginSocket, '/VolumeDriver.Remove', { Name: 'shared1' })).body.Err), /mounted|in use|attached/i)
  await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'shared1', ID: 'm-node-b' })
  t.is(await mountTypeOf(mp['node-b']!), undefined, 'nothing left mounted on node-b')
  await pluginOk(c, '/VolumeDriver.Unmount', { Name: 'shared1', ID: 'm-node-c' })
  await waitFor('the server to detach once no node has the volume mounted', async () => (await api.inspectVolume('shared1')).attachedOn === null, 20_000)
  t.is(await mountTypeOf(mp['node-a']!), undefined)
  t.is((await pluginCall(c.pluginSocket, '/VolumeDriver.Remove', { Name: 'shared1' })).body.Err, '')
})
