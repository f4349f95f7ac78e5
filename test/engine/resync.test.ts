import test from 'ava'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { DIRTY_REGION_BYTES, DirtyMap } from '../../src/replicas/dirty-map'
import { RESYNC_REGION_BYTES, VolumeEngine } from '../../src/engine/volume-engine'
import { isPxdError, pxdError } from '../../src/errors'
import { deferred, MemReplica, tick } from './mem-replica'

const REGION = RESYNC_REGION_BYTES
const SIZE = 8 * REGION
const VOLUME = '0123456789abcdef'

test('resync copies only the regions whose checksums differ, then the target is in sync', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, 8192, 1).fill(5 * REGION + 4096, 4096, 2)
  // b has region 0 already, misses the write in region 5 and holds stale bytes in region 7.
  const b = new MemReplica('b', SIZE).fill(0, 8192, 1).fill(7 * REGION, 4096, 9)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  let commits = 0
  const seen: number[] = []
  const result = await engine.resync(b, async () => { commits++ }, (p) => seen.push(p.scannedBytes))
  t.deepEqual(b.writes, [[5 * REGION, REGION], [7 * REGION, REGION]], 'two whole regions copied, nothing else')
  t.true(b.bytes.equals(a.bytes))
  t.like(result, { nodeId: 'b', method: 'checksum-scan', totalBytes: SIZE, scannedBytes: SIZE, copiedBytes: 2 * REGION })
  t.deepEqual(seen, [SIZE])
  t.is(commits, 1)
  t.deepEqual(engine.inSync, ['a', 'b'])
  t.deepEqual(engine.resyncing, [])
})

test('a write during resync reaches the learner, and a learner never serves reads', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 3)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const committing = deferred()
  const commit = deferred()
  const resyncing = engine.resync(b, () => { committing.resolve(); return commit.promise })
  await committing.promise
  t.deepEqual(engine.resyncing, ['b'])
  t.deepEqual(engine.inSync, ['a'], 'not in sync before the commit')
  await engine.write(2 * REGION, Buffer.alloc(4096, 4))
  t.deepEqual(b.writes.at(-1), [2 * REGION, 4096], 'the write went to the learner')
  b.fill(0, 4096, 8)
  const into = Buffer.alloc(4096)
  await engine.read(0, into)
  t.is(into[0], 3, 'read from a, not from the learner')
  commit.resolve()
  await resyncing
  t.deepEqual(engine.inSync, ['a', 'b'])
})

test('a write in flight when the learner joins (so not sent to it) lands before the checksums are compared', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const gate = deferred()
  a.beforeWrite = () => gate.promise
  const writing = engine.write(3 * REGION, Buffer.alloc(4096, 7))
  const resyncing = engine.resync(b, () => Promise.resolve())
  await tick()
  gate.resolve()
  await writing
  const result = await resyncing
  t.is(result.copiedBytes, REGION)
  t.true(b.bytes.equals(a.bytes))
})

test('a write to a region being copied is held back until the copy is done', async (t) => {
  const a = new MemReplica('a', SIZE).fill(REGION, 4096, 1)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const copying = deferred()
  const gate = deferred()
  const read = a.read.bind(a)
  a.read = async (offset, into) => {
    await read(offset, into)
    if (into.length === REGION) { copying.resolve(); await gate.promise }
  }
  const resyncing = engine.resync(b, () => Promise.resolve())
  await copying.promise
  const writing = engine.write(REGION, Buffer.alloc(4096, 2))
  await tick()
  t.deepEqual(b.writes, [], 'the write waits for the copy')
  gate.resolve()
  await Promise.all([writing, resyncing])
  t.deepEqual(b.writes, [[REGION, REGION], [REGION, 4096]], 'copy first, then the write')
  t.true(b.bytes.equals(a.bytes))
})

test('a learner that fails a write is not promoted: resync rejects with its error and commit never runs', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 3)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const gate = deferred()
  let copies = 0
  b.beforeWrite = async (offset, data) => {
    if (data[0] === 5) throw pxdError('PEER_UNAVAILABLE', 'link down')
    if (copies++ === 0) await gate.promise
  }
  let committed = 0
  const resyncing = engine.resync(b, async () => { committed++ })
  await tick()
  await engine.write(6 * REGION, Buffer.alloc(4096, 5))
  gate.resolve()
  t.true(isPxdError(await t.throwsAsync(resyncing), 'PEER_UNAVAILABLE'))
  t.is(committed, 0)
  t.deepEqual(engine.inSync, ['a'])
  t.deepEqual(engine.resyncing, [])
})

test('a learner refusing with STALE_EPOCH fences the engine and the resync', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 3)
  const b = new MemReplica('b', SIZE)
  const fenced: string[] = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a], onFenced: (e) => fenced.push(e.code) })
  const gate = deferred()
  b.beforeWrite = async (_offset, data) => {
    if (data[0] === 5) throw pxdError('STALE_EPOCH', 'newer epoch')
    await gate.promise
  }
  const resyncing = engine.resync(b, () => Promise.resolve())
  await tick()
  t.true(isPxdError(await t.throwsAsync(engine.write(6 * REGION, Buffer.alloc(4096, 5))), 'FENCED'))
  gate.resolve()
  t.true(isPxdError(await t.throwsAsync(resyncing), 'FENCED'))
  t.deepEqual(fenced, ['FENCED'])
  t.true(isPxdError(await t.throwsAsync(engine.read(0, Buffer.alloc(4096))), 'FENCED'))
})

/** Replicas a and b at epoch 4 with dirty maps kept in a temporary folder; b fails every write. */
function failingB(t: { teardown(fn: () => void): void }, size: number) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-resync-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const a = new MemReplica('a', size)
  const b = new MemReplica('b', size)
  b.beforeWrite = () => { throw pxdError('PEER_UNAVAILABLE', 'link down') }
  const demoted: string[] = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size, replicas: [a, b], epoch: 4, dirtyDir: dir, demote: async (f) => { demoted.push(...f.map((x) => x.nodeId)) } })
  return { a, dir, demoted, engine }
}

test('a replica demoted under this engine comes back by its dirty map: only the regions written while away are compared', async (t) => {
  const { a, dir, demoted, engine } = failingB(t, 4 * DIRTY_REGION_BYTES)
  await engine.write(DIRTY_REGION_BYTES + 4096, Buffer.alloc(4096, 1))
  t.deepEqual(demoted, ['b'])
  t.deepEqual(engine.inSync, ['a'])
  await engine.write(3 * DIRTY_REGION_BYTES, Buffer.alloc(4096, 2))
  const back = new MemReplica('b', 4 * DIRTY_REGION_BYTES)
  back.epochBefore = 4
  const result = await engine.resync(back, () => Promise.resolve())
  t.like(result, { method: 'dirty-map', totalBytes: 2 * DIRTY_REGION_BYTES, copiedBytes: 2 * REGION })
  t.true(back.bytes.equals(a.bytes))
  t.false(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'the map is discarded once in sync')
})

test('a dirty map is not trusted when the replica was opened since: resync scans every block', async (t) => {
  const size = 2 * DIRTY_REGION_BYTES
  const { engine } = failingB(t, size)
  await engine.write(0, Buffer.alloc(4096, 1))
  const back = new MemReplica('b', size)
  back.epochBefore = 5
  const result = await engine.resync(back, () => Promise.resolve())
  t.like(result, { method: 'checksum-scan', totalBytes: size, copiedBytes: REGION })
})

test('reconcile makes every in-sync replica equal to the first, copying only what differs', async (t) => {
  const a = new MemReplica('a', SIZE).fill(REGION, 4096, 1)
  const b = new MemReplica('b', SIZE).fill(REGION, 4096, 1).fill(3 * REGION, 4096, 6)
  const c = new MemReplica('c', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b, c] })
  t.is(await engine.reconcile(), 2 * REGION)
  t.deepEqual(b.writes, [[3 * REGION, REGION]])
  t.deepEqual(c.writes, [[REGION, REGION]])
  t.true(b.bytes.equals(a.bytes))
  t.true(c.bytes.equals(a.bytes))
  t.is(await engine.reconcile(), 0, 'nothing left to copy')
})

test('a rotten block on the resync source is taken from another replica and mended on the source', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, 8192, 1)
  const b = new MemReplica('b', SIZE).fill(0, 8192, 1)
  a.corrupt(1)
  const c = new MemReplica('c', SIZE)
  const repairs: Array<[string, number, number]> = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b], onRepair: (n, o, l) => repairs.push([n, o, l]) })
  await engine.resync(c, () => Promise.resolve())
  t.deepEqual(repairs, [['a', 0, REGION]])
  t.true(c.bytes.equals(b.bytes))
  await t.notThrowsAsync(a.read(0, Buffer.alloc(8192)), 'the source reads clean again')
})
