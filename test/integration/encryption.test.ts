/**
 * Encryption at rest on a real two-node cluster (etcd, peer links): a marker written
 * through the mount of a secure repl=2 volume is in no replica file on either node and in
 * no etcd file; it reads back, also on the other node after a failover (use_cluster_secret);
 * scrub and resync work on the ciphertext; a corrupted ciphertext block is read-repaired;
 * a passphrase volume refuses a mount without or with a wrong passphrase and changes
 * nothing, and the passphrase is in no etcd file and no log; a secret_key volume opens
 * with its file under --secrets-dir and not with another one; a shared passphrase volume
 * needs the passphrase on every node that mounts it, server or client.
 *
 * What crosses the peer link is captured in encryption-wire.test.ts.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { promises as fs, readdirSync, statSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { parseVolumeRef } from '../../src/volumes/options'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, TEST_NODE_TTL, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { corruptOneBlock, MiB, pluginOk, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
const secretsDir = mkdtempSync(path.join(tmpdir(), 'pxd-secrets-'))

test.before(async () => {
  writeFileSync(path.join(secretsDir, 'k1'), 'a-volume-secret-of-enough-bytes\n', { mode: 0o600 })
  cluster = await startCluster(['node-a', 'node-b'], { extraArgs: ['--secrets-dir', secretsDir] })
})

test.after.always(async () => {
  await cluster?.stop()
  rmSync(secretsDir, { recursive: true, force: true })
})

const MARKER = 'PXD-SECRET-MARKER-7f3a9c'
const markerFile = (): Buffer => Buffer.from(MARKER.repeat(Math.ceil(MiB / MARKER.length)).slice(0, MiB))
/** Mount `ref` on `node` as mount `id`, write the marker file through it, unmount; the bytes written. */
async function writeMarkerThrough(node: ClusterNode, ref: string, id: string): Promise<Buffer> {
  const mp = (await pluginOk(node, '/VolumeDriver.Mount', { Name: ref, ID: id })).Mountpoint as string
  const payload = markerFile()
  await writeSynced(path.join(mp, 'marker.bin'), payload)
  await pluginOk(node, '/VolumeDriver.Unmount', { Name: parseVolumeRef(ref).name, ID: id })
  return payload
}

const dropCaches = () => execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'])

/** Every regular file under `dir` whose bytes contain `needle`. */
async function filesHolding(dir: string, needle: string): Promise<string[]> {
  const found: string[] = []
  const walk = async (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) await walk(p)
      else if (e.isFile() && statSync(p).size > 0 && (await fs.readFile(p)).includes(needle)) found.push(p)
    }
  }
  await walk(dir)
  return found
}

const inSyncOf = async (n: ClusterNode, name: string) => (await new ApiClient(n.apiUrl).inspectVolume(name)).replicas.filter((r) => r.inSync).map((r) => r.nodeId).sort()


test('secure repl=2: ciphertext on both replicas and in etcd, plaintext through the mount, failover, scrub and resync', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'sec', Opts: { size: '128M', repl: '2', secure: 'true', use_cluster_secret: 'true' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('sec')
  t.deepEqual(info.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
  const [first, second] = info.replicas.map((r) => cluster.node(r.nodeId))
  let mp = (await pluginOk(first!, '/VolumeDriver.Mount', { Name: 'sec', ID: '1' })).Mountpoint as string
  const payload = markerFile()
  await writeSynced(path.join(mp, 'marker.bin'), payload)
  dropCaches()
  t.is(sha(await fs.readFile(path.join(mp, 'marker.bin'))), sha(payload), 'reads back through the mount')
  await pluginOk(first!, '/VolumeDriver.Unmount', { Name: 'sec', ID: '1' })

  for (const n of [first!, second!]) {
    const dir = path.join(n.dataDir, 'replicas', info.id)
    t.true((await fs.stat(path.join(dir, 'data'))).size > 0)
    t.deepEqual(await filesHolding(dir, MARKER), [], `no replica file on ${n.nodeId} holds the marker`)
    t.deepEqual(await filesHolding(n.dataDir, MARKER), [], `nothing in ${n.nodeId}'s data dir holds it`)
  }
  t.deepEqual(await filesHolding(cluster.etcd.dataDir, MARKER), [], 'no etcd file holds it')
  t.is(await replicaDigest(first!, info.id), await replicaDigest(second!, info.id), 'the replicas hold the same ciphertext')

  // Scrub on the ciphertext: every written block checks.
  mp = (await pluginOk(first!, '/VolumeDriver.Mount', { Name: 'sec', ID: '2' })).Mountpoint as string
  const scrub = await new ApiClient(first!.apiUrl).scrub('sec')
  t.true(scrub.checkedBlocks > 0)
  t.is(scrub.badBlocks, 0)

  // Failover: the first node dies; the other one mounts with the cluster secret.
  await first!.kill()
  await waitFor('the killed node to go offline', async () => {
    const nodes = await new ApiClient(second!.apiUrl).listNodes()
    return nodes.find((n) => n.nodeId === first!.nodeId)?.online === false
  }, (TEST_NODE_TTL + 15) * 1000, 100)
  const m = await waitFor('a mount on the surviving node', async () => {
    const r = await pluginCall(second!.pluginSocket, '/VolumeDriver.Mount', { Name: 'sec', ID: 's' })
    return r.body.Err === '' ? (r.body.Mountpoint as string) : undefined
  }, 30_000, 250)
  t.is(sha(await fs.readFile(path.join(m, 'marker.bin'))), sha(payload), 'the data reads back after failover')
  const later = Buffer.from(`${MARKER}-after-failover`.repeat(4096))
  await writeSynced(path.join(m, 'later.bin'), later)

  // The old node comes back and is resynced from the survivor: ciphertext copied as it is.
  await cluster.start(first!.nodeId)
  await waitFor('the returning replica to be in sync', async () => (await inSyncOf(second!, 'sec')).length === 2, 60_000, 250)
  await pluginOk(second!, '/VolumeDriver.Unmount', { Name: 'sec', ID: 's' })
  t.is(await replicaDigest(first!, info.id), await replicaDigest(second!, info.id), 'replicas identical after the resync')
  t.deepEqual(await filesHolding(path.join(first!.dataDir, 'replicas', info.id), MARKER), [], 'the resynced replica holds no plaintext')

  // A corrupted ciphertext block on one replica: read repair, the right bytes, never garbage.
  const block = corruptOneBlock(second!, info.id)
  const m2 = (await pluginOk(second!, '/VolumeDriver.Mount', { Name: 'sec', ID: 'r' })).Mountpoint as string
  dropCaches()
  t.is(sha(await fs.readFile(path.join(m2, 'marker.bin'))), sha(payload))
  t.is(sha(await fs.readFile(path.join(m2, 'later.bin'))), sha(later))
  t.regex(second!.logs(), new RegExp(`"block":${block}[,}].*read repair`))
  await pluginOk(second!, '/VolumeDriver.Unmount', { Name: 'sec', ID: 'r' })
  t.is(await replicaDigest(first!, info.id), await replicaDigest(second!, info.id), 'the bad block was rewritten')
})

test('passphrase volume: a mount without or with a wrong passphrase fails and changes nothing; the passphrase is stored and logged nowhere', async (t) => {
  const a = cluster.node('node-a')
  const pass = 'pass-phrase-never-stored-91c'
  await pluginOk(a, '/VolumeDriver.Create', { Name: `name=pp,passphrase=${pass}`, Opts: { size: '64M', repl: '2', secure: 'true' } })
  const api = new ApiClient(a.apiUrl)
  const info = await api.inspectVolume('pp')
  const holder = cluster.node(info.replicas[0]!.nodeId)
  const hapi = new ApiClient(holder.apiUrl)
  const payload = await writeMarkerThrough(holder, `name=pp,passphrase=${pass}`, '1')
  const before = await hapi.inspectVolume('pp')
  const digest = await replicaDigest(holder, info.id)

  const none = await pluginCall(holder.pluginSocket, '/VolumeDriver.Mount', { Name: 'pp', ID: '2' })
  t.regex(String(none.body.Err), /passphrase/)
  const wrong = await pluginCall(holder.pluginSocket, '/VolumeDriver.Mount', { Name: 'name=pp,passphrase=not-the-right-one', ID: '3' })
  t.regex(String(wrong.body.Err), /wrong passphrase/)
  const after = await hapi.inspectVolume('pp')
  t.is(after.epoch, before.epoch, 'no attach epoch bump left behind')
  t.is(after.attachedOn, null, 'not attached')
  t.is(await replicaDigest(holder, info.id), digest, 'nothing written')
  const mounts = await fs.readFile('/proc/mounts', 'utf8')
  t.false(mounts.includes(`/pp `), 'nothing mounted')

  const mp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: `name=pp,passphrase=${pass}`, ID: '4' })).Mountpoint as string
  dropCaches()
  t.is(sha(await fs.readFile(path.join(mp, 'marker.bin'))), sha(payload))
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'pp', ID: '4' })

  for (const n of cluster.nodes) {
    t.deepEqual(await filesHolding(n.dataDir, MARKER), [], `no plaintext in ${n.nodeId}'s data dir`)
    t.false(n.logs().includes(pass), `${n.nodeId}'s log does not hold the passphrase`)
  }
  t.deepEqual(await filesHolding(cluster.etcd.dataDir, pass), [], 'no etcd file holds the passphrase')
  t.deepEqual(await filesHolding(cluster.etcd.dataDir, MARKER), [], 'no etcd file holds the marker')
})

test('shared passphrase volume: every node mounts it with the passphrase only, the server and its clients alike; plaintext only through the mounts', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const pass = 'shared-pass-phrase-5d20e'
  const ref = `name=spp,passphrase=${pass}`
  await pluginOk(a, '/VolumeDriver.Create', { Name: ref, Opts: { size: '64M', repl: '2', secure: 'true', shared: 'true' } })
  const none = await pluginCall(a.pluginSocket, '/VolumeDriver.Mount', { Name: 'spp', ID: 'x' })
  t.regex(String(none.body.Err), /passphrase/, 'the first mount needs the passphrase')
  const mpA = (await pluginOk(a, '/VolumeDriver.Mount', { Name: ref, ID: 'a1' })).Mountpoint as string
  const payload = markerFile()
  await writeSynced(path.join(mpA, 'marker.bin'), payload)
  // node-b would be a client of node-a's server: it needs the passphrase all the same.
  const clientNone = await pluginCall(b.pluginSocket, '/VolumeDriver.Mount', { Name: 'spp', ID: 'b0' })
  t.regex(String(clientNone.body.Err), /passphrase/, 'a client mount without the passphrase is refused')
  const clientWrong = await pluginCall(b.pluginSocket, '/VolumeDriver.Mount', { Name: 'name=spp,passphrase=not-the-right-one', ID: 'b0' })
  t.regex(String(clientWrong.body.Err), /wrong passphrase/)
  t.false((await fs.readFile('/proc/mounts', 'utf8')).includes(`${b.runDir}/mounts/spp `), 'nothing mounted on node-b')
  const mpB = (await pluginOk(b, '/VolumeDriver.Mount', { Name: ref, ID: 'b1' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mpB, 'marker.bin'))), sha(payload), 'the client reads the plaintext')
  await pluginOk(b, '/VolumeDriver.Unmount', { Name: 'spp', ID: 'b1' })
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'spp', ID: 'a1' })
  for (const n of cluster.nodes) {
    t.deepEqual(await filesHolding(n.dataDir, MARKER), [], `no plaintext in ${n.nodeId}'s data dir`)
    t.false(n.logs().includes(pass), `${n.nodeId}'s log does not hold the passphrase`)
  }
})

test('a clone of a secure volume is secure with the same key: it reads back through its mount, holds only ciphertext, and needs the passphrase', async (t) => {
  const a = cluster.node('node-a')
  const pass = 'clone-pass-phrase-0b7e1'
  await pluginOk(a, '/VolumeDriver.Create', { Name: `name=csrc,passphrase=${pass}`, Opts: { size: '64M', repl: '2', secure: 'true' } })
  const payload = await writeMarkerThrough(a, `name=csrc,passphrase=${pass}`, '1')
  const api = new ApiClient(a.apiUrl)
  const clone = await api.clone('csrc', 'cclone')
  t.is(clone.name, 'cclone')
  const none = await pluginCall(a.pluginSocket, '/VolumeDriver.Mount', { Name: 'cclone', ID: '2' })
  t.regex(String(none.body.Err), /passphrase/, 'the clone needs the passphrase too')
  const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: `name=cclone,passphrase=${pass}`, ID: '3' })).Mountpoint as string
  dropCaches()
  t.is(sha(await fs.readFile(path.join(mp, 'marker.bin'))), sha(payload), 'the clone reads back the plaintext')
  await writeSynced(path.join(mp, 'after-clone.bin'), payload)
  await pluginOk(a, '/VolumeDriver.Unmount', { Name: 'cclone', ID: '3' })
  for (const n of cluster.nodes) t.deepEqual(await filesHolding(n.dataDir, MARKER), [], `no plaintext in ${n.nodeId}'s data dir`)
})

test('control: a plain volume\'s replica file does hold the marker (the search above can find it)', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'plain', Opts: { size: '64M', repl: '1' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('plain')
  const holder = cluster.node(info.replicas[0]!.nodeId)
  const mp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: 'plain', ID: '1' })).Mountpoint as string
  await writeSynced(path.join(mp, 'marker.bin'), markerFile())
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'plain', ID: '1' })
  const found = await filesHolding(path.join(holder.dataDir, 'replicas', info.id), MARKER)
  t.true(found.some((f) => f.endsWith('/data')), `found in ${found.join(', ')}`)
})

test('secret_key volume: opens with the file under --secrets-dir, BAD_KEY once the file changed; names cannot traverse', async (t) => {
  const a = cluster.node('node-a')
  const bad = await pluginCall(a.pluginSocket, '/VolumeDriver.Create', { Name: 'skbad', Opts: { size: '64M', secure: 'true', secret_key: '../k1' } })
  t.regex(String(bad.body.Err), /invalid secret_key/)
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'sk', Opts: { size: '64M', repl: '1', secret_key: 'k1' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('sk')
  const holder = cluster.node(info.replicas[0]!.nodeId)
  const payload = await writeMarkerThrough(holder, 'sk', '1')
  t.deepEqual(await filesHolding(path.join(holder.dataDir, 'replicas', info.id), MARKER), [])

  const file = path.join(secretsDir, 'k1')
  const original = await fs.readFile(file)
  await fs.writeFile(file, 'another-secret-of-enough-bytes\n')
  const wrong = await pluginCall(holder.pluginSocket, '/VolumeDriver.Mount', { Name: 'sk', ID: '2' })
  t.regex(String(wrong.body.Err), /wrong secret/)
  await fs.writeFile(file, original)
  const mp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: 'sk', ID: '3' })).Mountpoint as string
  dropCaches()
  t.is(sha(await fs.readFile(path.join(mp, 'marker.bin'))), sha(payload))
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'sk', ID: '3' })
})

test('a snapshot (parent=) of a secure volume opens with its key and reads its plaintext', async (t) => {
  const a = cluster.node('node-a')
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'ss', Opts: { size: '64M', repl: '1', secure: 'true' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('ss')
  const holder = cluster.node(info.replicas[0]!.nodeId)
  const payload = await writeMarkerThrough(holder, 'ss', '1')
  await pluginOk(holder, '/VolumeDriver.Create', { Name: 'ss-snap', Opts: { parent: 'ss' } })
  const cmp = (await pluginOk(holder, '/VolumeDriver.Mount', { Name: 'ss-snap', ID: 'c' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(cmp, 'marker.bin'))), sha(payload))
  await pluginOk(holder, '/VolumeDriver.Unmount', { Name: 'ss-snap', ID: 'c' })
})
