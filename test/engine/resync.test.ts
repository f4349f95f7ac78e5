import test from 'ava'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { DIRTY_REGION_BYTES, DirtyMap } from '../../src/replicas/dirty-map'
import { RESYNC_REGION_BYTES, VolumeEngine, type EngineOptions } from '../../src/engine/volume-engine'
import { differingRuns, RESYNC_COPY_BYTES } from '../../src/engine/resync'
import { HASH_BYTES } from '../../src/constants'
import { isPxdError, pxdError } from '../../src/errors'
import { selfChecksummedBlock } from '../helpers/self-checksummed'
import { deferred, MemReplica, tick } from './mem-replica'

const REGION = RESYNC_REGION_BYTES
const SIZE = 8 * REGION
const VOLUME = '0123456789abcdef'
/** Two copy runs' worth; `a` holds data in the first only, so a write to the second is not held back by a copy. */
const TWO_RUNS = 2 * RESYNC_COPY_BYTES

test('resync copies only the regions whose block hashes differ, then the target is in sync', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, 8192, 1).fill(5 * REGION + 4096, 4096, 2)
  // b has region 0 already, misses the write in region 5 and holds stale bytes in region 7.
  const b = new MemReplica('b', SIZE).fill(0, 8192, 1).fill(7 * REGION, 4096, 9)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  let commits = 0
  const seen: number[] = []
  const result = await engine.resync(b, async () => { commits++ }, { onProgress: (p) => seen.push(p.scannedBytes) })
  t.deepEqual(b.writes, [[5 * REGION, REGION]], 'a whole region copied')
  t.deepEqual(b.discards, [[7 * REGION, REGION]], 'and one that is zeros on the source discarded (its space goes back), nothing else')
  t.true(b.bytes.equals(a.bytes))
  t.like(result, { nodeId: 'b', method: 'checksum-scan', totalBytes: SIZE, scannedBytes: SIZE, copiedBytes: 2 * REGION })
  t.deepEqual(seen, [SIZE])
  t.is(commits, 1)
  t.deepEqual(engine.inSync, ['a', 'b'])
  t.deepEqual(engine.resyncing, [])
})

test('a block whose new contents end in their own crc32c (an ext4 superblock) is copied: blocks are compared by hash, not crc', async (t) => {
  // Both superblocks have the same crc32c; compared by crc, b would stay stale and look in sync.
  const a = new MemReplica('a', SIZE).load(Buffer.concat([selfChecksummedBlock(), Buffer.alloc(SIZE - 4096)]))
  const b = new MemReplica('b', SIZE).load(Buffer.concat([selfChecksummedBlock(), Buffer.alloc(SIZE - 4096)]))
  t.deepEqual(await b.digest(0, 4096), await a.digest(0, 4096))
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const result = await engine.resync(b, async () => undefined)
  t.deepEqual(b.writes, [[0, REGION]])
  t.true(b.bytes.equals(a.bytes))
  t.is(result.copiedBytes, REGION)
  const c = new MemReplica('c', SIZE).load(Buffer.concat([selfChecksummedBlock(), Buffer.alloc(SIZE - 4096)]))
  const both = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, c] })
  t.is(await both.reconcile(), REGION, 'reconcile compares the same way')
  t.true(c.bytes.equals(a.bytes))
})

test('closing the engine stops its resync: close waits for the copy under way, and nothing reaches the target after close', async (t) => {
  // Every region differs; the first copy to the target is held until the engine is closing.
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 4)
  const b = new MemReplica('b', SIZE)
  const held = deferred()
  const copying = deferred()
  b.beforeWrite = async () => {
    copying.resolve()
    await held.promise
  }
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  let commits = 0
  const resyncing = engine.resync(b, async () => { commits++ })
  await copying.promise
  let closed = false
  const closing = engine.close().then(() => { closed = true })
  await tick(20)
  t.false(closed, 'close waits for the copy in flight')
  held.resolve()
  await closing
  const writesAtClose = b.writes.length
  t.true(isPxdError(await t.throwsAsync(resyncing), 'ENGINE_CLOSED'))
  await tick(20)
  t.is(b.writes.length, writesAtClose, 'no copy after close')
  t.true(writesAtClose < SIZE / REGION, 'the resync stopped before copying everything')
  t.is(commits, 0)
})

test('adjacent differing regions are copied as one run of at most RESYNC_COPY_BYTES; a region is the unit', (t) => {
  const size = 2 * RESYNC_COPY_BYTES
  const blocks = size / 4096
  const want = Buffer.alloc(blocks * HASH_BYTES, 1)
  const have = Buffer.alloc(blocks * HASH_BYTES, 1)
  // The last byte of a hash: all of its eight bytes count.
  const differ = (offset: number) => { have[(offset / 4096) * HASH_BYTES + HASH_BYTES - 1] = 2 }
  // Regions 0..11 differ (one block each), then region 14.
  for (let r = 0; r < 12; r++) differ(r * REGION + 4096)
  differ(14 * REGION)
  t.deepEqual(differingRuns(want, have, 0, size, size), [[0, RESYNC_COPY_BYTES], [RESYNC_COPY_BYTES, 4 * REGION], [14 * REGION, REGION]])
  t.deepEqual(differingRuns(want, want, 0, size, size), [], 'equal: nothing')
})

test('a paced resync waits before each copy, never inside the copy lock', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 3)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const asked: number[] = []
  const gate = deferred()
  const resyncing = engine.resync(b, () => Promise.resolve(), { pace: async (bytes) => { asked.push(bytes); await gate.promise } })
  await tick()
  t.deepEqual(asked, [SIZE], 'the whole (adjacent) volume is one run here')
  // A write while the resync waits for its pace goes through at once.
  await engine.write(0, Buffer.alloc(4096, 9))
  gate.resolve()
  await resyncing
  t.true(b.bytes.equals(a.bytes))
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

test('a write in flight when the learner joins (so not sent to it) lands before the blocks are compared', async (t) => {
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
  const a = new MemReplica('a', TWO_RUNS).fill(0, RESYNC_COPY_BYTES, 3)
  const b = new MemReplica('b', TWO_RUNS)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: TWO_RUNS, replicas: [a] })
  const gate = deferred()
  let copies = 0
  b.beforeWrite = async (offset, data) => {
    if (data[0] === 5) throw pxdError('PEER_UNAVAILABLE', 'link down')
    if (copies++ === 0) await gate.promise
  }
  let committed = 0
  const resyncing = engine.resync(b, async () => { committed++ })
  await tick()
  await engine.write(RESYNC_COPY_BYTES + 6 * REGION, Buffer.alloc(4096, 5))
  gate.resolve()
  t.true(isPxdError(await t.throwsAsync(resyncing), 'PEER_UNAVAILABLE'))
  t.is(committed, 0)
  t.deepEqual(engine.inSync, ['a'])
  t.deepEqual(engine.resyncing, [])
})

test('a learner refusing with STALE_EPOCH fences the engine and the resync', async (t) => {
  const a = new MemReplica('a', TWO_RUNS).fill(0, RESYNC_COPY_BYTES, 3)
  const b = new MemReplica('b', TWO_RUNS)
  const fenced: string[] = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size: TWO_RUNS, replicas: [a], onFenced: (e) => fenced.push(e.code) })
  const gate = deferred()
  b.beforeWrite = async (_offset, data) => {
    if (data[0] === 5) throw pxdError('STALE_EPOCH', 'newer epoch')
    await gate.promise
  }
  const resyncing = engine.resync(b, () => Promise.resolve())
  await tick()
  t.true(isPxdError(await t.throwsAsync(engine.write(RESYNC_COPY_BYTES + 6 * REGION, Buffer.alloc(4096, 5))), 'FENCED'))
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
  t.deepEqual(b.writes, [])
  t.deepEqual(b.discards, [[3 * REGION, REGION]], 'b\'s stray block where a has zeros: discarded')
  t.deepEqual(c.writes, [[REGION, REGION]])
  t.true(b.bytes.equals(a.bytes))
  t.true(c.bytes.equals(a.bytes))
  t.is(await engine.reconcile(), 0, 'nothing left to copy')
})

for (const onePass of [false, true]) {
  test(`a rotten block on the resync source is taken from another replica and mended on the source${onePass ? ' (source read once: its whole piece)' : ''}`, async (t) => {
    const a = new MemReplica('a', SIZE).fill(0, 8192, 1)
    if (onePass) a.onePass()
    const b = new MemReplica('b', SIZE).fill(0, 8192, 1)
    a.corrupt(1)
    const c = new MemReplica('c', SIZE)
    const repairs: Array<[string, number, number]> = []
    const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b], onRepair: (n, o, l) => repairs.push([n, o, l]) })
    await engine.resync(c, () => Promise.resolve())
    t.deepEqual(repairs, [['a', 0, onePass ? RESYNC_COPY_BYTES : REGION]])
    t.true(c.bytes.equals(b.bytes))
    await t.notThrowsAsync(a.read(0, Buffer.alloc(8192)), 'the source reads clean again')
  })
}

test('a rotten block on the resync source is taken from each other replica in turn until one has it good', async (t) => {
  const [a, b, c] = ['a', 'b', 'c'].map((n) => new MemReplica(n, SIZE).fill(0, 8192, 1)) as [MemReplica, MemReplica, MemReplica]
  a.corrupt(1)
  b.corrupt(1)
  const d = new MemReplica('d', SIZE)
  const repairs: Array<[string, number, number]> = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b, c], onRepair: (n, o, l) => repairs.push([n, o, l]) })
  await engine.resync(d, () => Promise.resolve())
  t.deepEqual(repairs, [['a', 0, REGION]])
  t.true(d.bytes.equals(c.bytes), 'copied from c: b has the block bad too')
  await t.notThrowsAsync(a.read(0, Buffer.alloc(8192)))
})

test('one resync of a node at a time: a second is refused at once, even before the first opened the replica', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 3)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const first = new MemReplica('b', SIZE)
  const opening = deferred<number>()
  first.open = () => opening.promise
  const second = new MemReplica('b', SIZE)
  const resyncing = engine.resync(first, () => Promise.resolve())
  t.deepEqual(engine.resyncing, ['b'], 'busy before any await')
  t.true(isPxdError(await t.throwsAsync(engine.resync(second, () => Promise.resolve())), 'CONFLICT'))
  t.is(second.opened, 0)
  t.true(isPxdError(await t.throwsAsync(engine.resync(new MemReplica('a', SIZE), () => Promise.resolve())), 'CONFLICT'), 'nor of a node in sync')
  opening.resolve(0)
  await resyncing
  t.deepEqual(engine.inSync, ['a', 'b'])
  await engine.write(0, Buffer.alloc(4096, 9))
  t.deepEqual(first.writes.at(-1), [0, 4096], 'the member is the first object')
  t.deepEqual(second.writes, [])
})

/** Engine on a (epoch 4, dirty maps in a temporary folder, demotions recorded) with b demoted under it, and a new b to resync. */
async function withLearner(t: { teardown(fn: () => void): void }, extra: Partial<EngineOptions> = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-commit-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const size = 4 * DIRTY_REGION_BYTES
  const a = new MemReplica('a', size)
  const old = new MemReplica('b', size)
  old.beforeWrite = () => { throw pxdError('PEER_UNAVAILABLE', 'link down') }
  const demoted: string[] = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size, replicas: [a, old], epoch: 4, dirtyDir: dir, demote: async (f) => { demoted.push(...f.map((x) => x.nodeId)) }, ...extra })
  await engine.write(0, Buffer.alloc(4096, 1))
  const back = new MemReplica('b', size)
  back.epochBefore = 4
  const committing = deferred()
  const commit = deferred()
  const startCommit = () => { committing.resolve(); return commit.promise }
  return { a, back, dir, demoted, engine, committing, commit, startCommit }
}

test('replica membership changes are atomic against writes in flight: a learner write failing during the commit demotes it at once, before that write is acknowledged', async (t) => {
  const { back, dir, demoted, engine, committing, commit, startCommit } = await withLearner(t)
  const failed = deferred()
  back.beforeWrite = (_offset, data) => {
    if (data[0] !== 5) return
    failed.resolve()
    throw pxdError('PEER_UNAVAILABLE', 'link down')
  }
  const resyncing = engine.resync(back, startCommit)
  await committing.promise
  let acked = false
  const writing = engine.write(2 * DIRTY_REGION_BYTES, Buffer.alloc(4096, 5)).then(() => { acked = true })
  await failed.promise
  await tick()
  t.false(acked, 'the write waits for the commit\'s outcome')
  commit.resolve()
  t.true(isPxdError(await t.throwsAsync(resyncing), 'PEER_UNAVAILABLE'))
  await writing
  t.deepEqual(demoted, ['b', 'b'], 'promoted, then demoted by the normal path')
  t.deepEqual(engine.inSync, ['a'])
  t.true(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'the map stays for the next resync')
})

test('a learner write in flight at the commit that fails after it demotes the promoted replica before that write resolves', async (t) => {
  const { back, demoted, engine } = await withLearner(t)
  const gate = deferred()
  const sent = deferred()
  back.beforeWrite = async (_offset, data) => {
    if (data[0] !== 5) return
    sent.resolve()
    await gate.promise
    throw pxdError('PEER_TIMEOUT', 'no answer')
  }
  let writing: Promise<void> | undefined
  let acked = false
  // The resync's last flush before the commit: a write reaches the learner and hangs there.
  back.beforeFlush = async () => {
    writing ??= engine.write(DIRTY_REGION_BYTES, Buffer.alloc(4096, 5)).then(() => { acked = true })
    await sent.promise
  }
  await engine.resync(back, () => Promise.resolve())
  t.deepEqual(engine.inSync, ['a', 'b'])
  gate.resolve()
  await tick()
  await writing
  t.true(acked)
  t.deepEqual(demoted, ['b', 'b'])
  t.deepEqual(engine.inSync, ['a'], 'demoted before the write was acknowledged')
})

test('a flush during the commit reaches the replica being promoted', async (t) => {
  const { back, engine, committing, commit, startCommit } = await withLearner(t)
  const resyncing = engine.resync(back, startCommit)
  await committing.promise
  const before = back.flushes
  await engine.flush()
  t.is(back.flushes, before + 1)
  commit.resolve()
  await resyncing
})

test('a kvdb outcome that is unknown is read back before anything is decided: a commit that timed out but was applied makes the replica in sync', async (t) => {
  let reads = 0
  const { back, engine } = await withLearner(t, {
    readBackRetryMs: 5,
    readInSync: async () => {
      if (reads++ === 0) throw pxdError('KVDB_UNAVAILABLE', 'still down')
      return ['a', 'b']
    },
  })
  const result = await engine.resync(back, () => Promise.reject(pxdError('KVDB_UNAVAILABLE', 'etcd request timed out')))
  t.is(result.nodeId, 'b')
  t.is(reads, 2, 'a read back that failed was tried again')
  t.deepEqual(engine.inSync, ['a', 'b'])
  await engine.write(3 * DIRTY_REGION_BYTES, Buffer.alloc(4096, 6))
  t.deepEqual(back.writes.at(-1), [3 * DIRTY_REGION_BYTES, 4096], 'the engine writes to it')
})

test('a commit that timed out and was not applied, read back, leaves the replica out of sync with its map', async (t) => {
  const { back, dir, engine } = await withLearner(t, { readInSync: async () => ['a'] })
  const timeout = pxdError('KVDB_UNAVAILABLE', 'etcd request timed out')
  t.is(await t.throwsAsync(engine.resync(back, () => Promise.reject(timeout))), timeout)
  t.deepEqual(engine.inSync, ['a'])
  t.false(engine.diverged)
  t.true(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')))
})
