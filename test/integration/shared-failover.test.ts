/**
 * A shared volume's server goes while two client nodes write fsynced records through it:
 * first it loses power (kill -9, and its disk drops what was not durable), then the next
 * server is frozen (SIGSTOP: cut from etcd and peers at once). Each time a client takes
 * the volume over once the old server's lease expired; both clients carry on without
 * remounting; every acknowledged record is there; and the old server cannot write: the
 * restarted one comes back as a client, the frozen one is fenced when it wakes.
 */
import test from 'ava'
import { mkdirSync, promises as fs, writeFileSync } from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { BLOCK_SIZE, CHECKSUM_BYTES } from '../../src/constants'
import { native } from '../../src/native/binding'
import { startCluster, waitFor, TEST_NODE_TTL, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { checkRecords, startRecordWriter, type RecordWriter } from '../helpers/records'
import { pluginOk, replicaFiles, writeSynced } from '../helpers/volume-io'
import { endAllChildren, holdLock, tryLock } from '../faults/cross-node'

assertIntegrationPreconditions()

const RECORD = 4096
let cluster: Cluster
let frozen: ClusterNode | undefined
const writers: RecordWriter[] = []

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b', 'node-c'], { powerLoss: ['node-a'] })
})

test.afterEach.always((t) => {
  if (t.passed) return
  mkdirSync('/tmp/pxd-test-logs', { recursive: true })
  for (const n of cluster.nodes) writeFileSync(`/tmp/pxd-test-logs/shared-failover-${n.nodeId}.log`, n.logs())
  t.log('daemon logs in /tmp/pxd-test-logs/')
})

test.after.always(async () => {
  if (frozen) process.kill(frozen.pid, 'SIGCONT')
  for (const w of writers) await w.stop()
  endAllChildren()
  for (const n of cluster?.nodes ?? []) await pluginCall(n.pluginSocket, '/VolumeDriver.Unmount', { Name: 'sfail', ID: 'w' }).catch(() => undefined)
  await cluster?.stop()
})

async function mountTypeOf(mountpoint: string): Promise<string | undefined> {
  const mounts = await fs.readFile('/proc/self/mounts', 'utf8')
  return mounts.split('\n').map((l) => l.split(' ')).find((f) => f[1] === mountpoint)?.[2]
}

/**
 * Where the replicas' data files differ now, blocks compared straight on this host's disk,
 * with each differing block's stored crc on every replica and whether its data matches it
 * (as BlockStore::Matches decides: crc 0 is a block never written, which reads as zeros).
 * Equal, matching crcs over different bytes are no contradiction: every block that ends in
 * its own crc32c (an ext4 superblock) has the same crc32c.
 */
async function replicaDifferences(info: { id: string; replicas: { nodeId: string; inSync: boolean }[]; epoch: number }): Promise<{ text: string; differing: number }> {
  const read = await Promise.all(info.replicas.map((r) => replicaFiles(cluster.node(r.nodeId), info.id).catch((err: Error) => err.message)))
  const replicas = info.replicas.map((r, i) => ({ ...r, files: read[i]! }))
  const readable = replicas.flatMap((r) => (typeof r.files === 'string' ? [] : [{ ...r, files: r.files }]))
  const blockOf = (data: Buffer, b: number) => data.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)
  const differing = new Set<number>()
  const [first, ...others] = readable
  for (const other of others) {
    for (let b = 0; b * BLOCK_SIZE < Math.max(first!.files.data.length, other.files.data.length); b++) {
      if (!blockOf(first!.files.data, b).equals(blockOf(other.files.data, b))) differing.add(b)
    }
  }
  const crcOf = (crc: Buffer, b: number) => (crc.length >= (b + 1) * CHECKSUM_BYTES ? crc.readUInt32LE(b * CHECKSUM_BYTES) : undefined)
  const matches = ({ data, crc }: { data: Buffer; crc: Buffer }, b: number) => {
    const stored = crcOf(crc, b)
    const block = blockOf(data, b)
    return (stored === 0 ? block.every((x) => x === 0) : native.crc32c(block) === stored) ? 'ok' : 'BAD'
  }
  const detail = [...differing].slice(0, 8).map((b) => `${b} (crc ${readable.map((r) => `${r.nodeId} ${crcOf(r.files.crc, b)?.toString(16) ?? '-'} ${matches(r.files, b)}`).join(' / ')})`)
  // The ext4 superblock (bytes 1024..2047): incompat features (0x4: needs recovery), write time, mount count, state.
  const sb = readable.map(({ files: { data: d } }) => `incompat 0x${d.readUInt32LE(1024 + 0x60).toString(16)} wtime ${d.readUInt32LE(1024 + 0x30)} mnt ${d.readUInt16LE(1024 + 0x34)} state ${d.readUInt16LE(1024 + 0x3a)}`)
  const who = replicas.map((r) => `${r.nodeId}${r.inSync ? '' : ' (not in sync)'}: ${typeof r.files === 'string' ? r.files : `${r.files.data.length} bytes`}`).join(', ')
  return {
    text: `epoch ${info.epoch}; replicas ${who}; superblocks ${sb.join(' | ')}; ${differing.size} differing ${BLOCK_SIZE}-byte blocks${differing.size > 0 ? `: ${detail.join(' ')}` : ''}`,
    differing: differing.size,
  }
}

async function serverOf(api: ApiClient): Promise<{ server: string | null; epoch: number }> {
  const info = await api.inspectVolume('sfail')
  return { server: info.sharing?.server ?? null, epoch: info.epoch }
}

test.serial('clients write through a server that loses power, then through one that freezes, and lose no acknowledged record', async (t) => {
  const [a, b, c] = [cluster.node('node-a'), cluster.node('node-b'), cluster.node('node-c')]
  await pluginOk(a, '/VolumeDriver.Create', { Name: 'sfail', Opts: { size: '128M', repl: '2', shared: 'true' } })
  const mpA = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  t.is(await mountTypeOf(mpA), 'ext4', 'node-a serves')
  const mpB = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  const mpC = (await pluginOk(c, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  const wb = startRecordWriter(path.join(mpB, 'records-b'), { recordBytes: RECORD, intervalMs: 5 })
  const wc = startRecordWriter(path.join(mpC, 'records-c'), { recordBytes: RECORD, intervalMs: 5 })
  writers.push(wb, wc)
  await Promise.all([wb.waitFor(50), wc.waitFor(50)])
  const api = new ApiClient(b.apiUrl)
  const before = await serverOf(api)
  t.is(before.server, 'node-a')

  const started = Date.now()
  const step = (what: string) => t.log(`${((Date.now() - started) / 1000).toFixed(1)}s ${what}: acked b=${wb.acked.size} c=${wc.acked.size}`)
  step('writing')
  // 1. The server loses power.
  await cluster.powerLoss('node-a', 7)
  const ackedAtCut = [wb.acked.size, wc.acked.size]
  const afterCut = await waitFor('a client to take the volume over', async () => {
    const s = await serverOf(api)
    return s.server === 'node-b' || s.server === 'node-c' ? s : undefined
  }, (TEST_NODE_TTL + 40) * 1000, 250)
  step(`taken over by ${afterCut.server}`)
  t.true(afterCut.epoch > before.epoch, 'the takeover claimed a new epoch')
  await Promise.all([wb.waitFor(ackedAtCut[0]! + 50, 60_000), wc.waitFor(ackedAtCut[1]! + 50, 60_000)])
  t.is(wb.error, undefined, 'the writer on node-b carried on')
  t.is(wc.error, undefined, 'the writer on node-c carried on')

  step('writers carried on')
  // The old server comes back: it holds nothing; mounting makes it a client of the new server.
  await cluster.start('node-a')
  const again = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  t.is(await mountTypeOf(again), 'fuse.pxd-shared', 'the returning node is a client now')
  t.is((await serverOf(api)).server, afterCut.server)

  // 2. The new server freezes, once the returning node's replica (if it has one) is resynced.
  await waitFor('every replica to be in sync again', async () => (await api.inspectVolume('sfail')).replicas.every((r) => r.inSync), 90_000, 500)
  const second = cluster.node(afterCut.server!)
  const survivor = second.nodeId === 'node-b' ? wc : wb
  process.kill(second.pid, 'SIGSTOP')
  frozen = second
  const ackedAtFreeze = survivor.acked.size
  step(`froze ${second.nodeId}`)
  const afterFreeze = await waitFor('another node to take the volume over from the frozen one', async () => {
    const s = await serverOf(new ApiClient(a.apiUrl))
    return s.server !== null && s.server !== second.nodeId ? s : undefined
  }, (TEST_NODE_TTL + 40) * 1000, 250)
  step(`taken over by ${afterFreeze.server}`)
  t.true(afterFreeze.epoch > afterCut.epoch)
  await survivor.waitFor(ackedAtFreeze + 50, 60_000)
  process.kill(second.pid, 'SIGCONT')
  frozen = undefined
  await waitFor('the frozen server to learn it was fenced', async () => /fenced/.test(second.logs()), 30_000)
  // Its own writer routes to the new server once it stops serving.
  const frozenWriter = second.nodeId === 'node-b' ? wb : wc
  await frozenWriter.waitFor(frozenWriter.acked.size + 20, 60_000)

  for (const w of writers) await w.stop()
  // Every acknowledged record, read on every node that has the volume mounted.
  for (const mp of [again, mpB, mpC]) {
    t.deepEqual(checkRecords(path.join(mp, 'records-b'), RECORD, wb.acked).lost, [], `node-b's records read at ${mp}`)
    t.deepEqual(checkRecords(path.join(mp, 'records-c'), RECORD, wc.acked).lost, [], `node-c's records read at ${mp}`)
  }
  t.true(wb.acked.size > 150 && wc.acked.size > 100)
  for (const n of [a, b, c]) await pluginOk(n, '/VolumeDriver.Unmount', { Name: 'sfail', ID: 'w' })
  for (const n of [a, b, c]) t.is(await mountTypeOf(path.join(n.runDir, 'mounts', 'sfail')), undefined, `nothing left mounted on ${n.nodeId}`)
})

test.serial('a lock held through a client is held again on the server that takes over: no other node gets it meanwhile', async (t) => {
  const [a, b, c] = [cluster.node('node-a'), cluster.node('node-b'), cluster.node('node-c')]
  const api = new ApiClient(c.apiUrl)
  await waitFor('the last server to detach once nobody has the volume mounted', async () => (await api.inspectVolume('sfail')).attachedOn === null, 20_000, 250)
  const mpA = (await pluginOk(a, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  t.is(await mountTypeOf(mpA), 'ext4', 'node-a serves')
  // Its server resyncs the replica the fenced node left behind; then losing node-a loses no copy.
  await waitFor('every replica in sync', async () => (await api.inspectVolume('sfail')).replicas.every((r) => r.inSync && r.online), 90_000, 500)
  const mpB = (await pluginOk(b, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  const mpC = (await pluginOk(c, '/VolumeDriver.Mount', { Name: 'sfail', ID: 'w' })).Mountpoint as string
  // Made durable first: a file the dying server never wrote out is gone on the next one.
  await writeSynced(path.join(mpA, 'lock-me'), Buffer.from('x'))
  // Both replicas in sync and quiet: their data files are equal. A block that differs on
  // one look but not on the next was being written; one that stays is a divergence (as the
  // stale ext4 superblocks and journal blocks were that resync once compared by crc32c).
  let diff = await replicaDifferences(await api.inspectVolume('sfail'))
  for (let look = 1; look < 4 && diff.differing > 0; look++) {
    t.log(`look ${look}: ${diff.text}`)
    await new Promise((r) => setTimeout(r, 500))
    diff = await replicaDifferences(await api.inspectVolume('sfail'))
  }
  t.log(diff.text)
  t.is(diff.differing, 0, 'the two in-sync replicas hold the same bytes')
  const holder = await holdLock('lockf', path.join(mpB, 'lock-me'))
  try {
    t.regex(await tryLock('lockf', path.join(mpC, 'lock-me')), /EAGAIN|EACCES/, 'held by node-b\'s process')
    await a.kill()
    const after = await waitFor('a client to take the volume over', async () => {
      const s = await serverOf(api)
      return s.server === 'node-b' || s.server === 'node-c' ? s : undefined
    }, (TEST_NODE_TTL + 40) * 1000, 250)
    t.log(`taken over by ${after.server}`)
    // The file made durable before the server went is there on the new one, with its byte.
    t.is(await fs.readFile(path.join(mpC, 'lock-me'), 'utf8').catch((err) => `unreadable: ${(err as Error).message}`), 'x', 'the fsynced file survived the takeover')
    // Tried again and again through the takeover and the grace: never granted while node-b's process holds it.
    for (let i = 0; i < 10; i++) {
      t.regex(await tryLock('lockf', path.join(mpC, 'lock-me')), /EAGAIN|EACCES/, `still held (try ${i})`)
      await new Promise((r) => setTimeout(r, 500))
    }
    holder.send('release')
    await holder.exited()
    t.is(await waitFor('node-c to get the lock once node-b\'s process let go', async () => (await tryLock('lockf', path.join(mpC, 'lock-me'))) === 'ok' ? 'ok' : undefined, 20_000, 250), 'ok')
  } finally {
    holder.end()
  }
  await cluster.start('node-a')
  for (const n of [b, c]) await pluginOk(n, '/VolumeDriver.Unmount', { Name: 'sfail', ID: 'w' })
  for (const n of [b, c]) t.is(await mountTypeOf(path.join(n.runDir, 'mounts', 'sfail')), undefined, `nothing left mounted on ${n.nodeId}`)
})
