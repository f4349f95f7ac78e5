import test from 'ava'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { VolumeEngine, type EngineOptions } from '../../src/engine/volume-engine'
import { isPxdError, pxdError } from '../../src/errors'
import { DIRTY_REGION_BYTES, DirtyMap } from '../../src/replicas/dirty-map'
import { CachedReplica, deferred, MemReplica, tick } from './mem-replica'

const R = DIRTY_REGION_BYTES
const SIZE = 4 * R
const VOLUME = '0123456789abcdef'
const EPOCH = 4

function tmpDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-durable-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function mapOnDisk(dir: string, nodeId = 'b'): number[] {
  const file = DirtyMap.fileOf(dir, VOLUME, nodeId)
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { regions: number[] }).regions : []
}

/** a and b in sync at EPOCH with dirty maps in a temporary folder; demotions recorded (or refused while `kvdbDown`). */
function pair<B extends MemReplica>(t: { teardown(fn: () => void): void }, b: B, extra: Partial<EngineOptions> = {}) {
  const dir = tmpDir(t)
  const a = new MemReplica('a', SIZE)
  const demoted: string[][] = []
  const state = { kvdbDown: false }
  const engine = new VolumeEngine({
    volumeId: VOLUME, size: SIZE, replicas: [a, b], epoch: EPOCH, dirtyDir: dir,
    demote: async (failed) => {
      demoted.push(failed.map((f) => f.nodeId))
      if (state.kvdbDown) throw pxdError('KVDB_UNAVAILABLE', 'etcd request timed out')
    },
    ...extra,
  })
  return { a, b, dir, demoted, engine, state }
}

const down = () => { throw pxdError('PEER_UNAVAILABLE', 'b lost power') }

test('a replica is in sync only if it holds every acknowledged write: one that lost its unflushed pages is fully covered by its dirty map', async (t) => {
  const { a, b, engine } = pair(t, new CachedReplica('b', SIZE))
  await engine.write(0, Buffer.alloc(4096, 1))
  await engine.flush()
  await engine.write(R + 4096, Buffer.alloc(4096, 2)) // acknowledged, in b's page cache only
  b.beforeWrite = down
  b.beforeFlush = down
  await engine.write(3 * R, Buffer.alloc(4096, 3))
  t.deepEqual(engine.inSync, ['a'])
  await engine.write(2 * R, Buffer.alloc(4096, 4))
  const back = b.afterPowerLoss()
  back.epochBefore = EPOCH
  const result = await engine.resync(back, () => Promise.resolve())
  t.is(result.method, 'dirty-map')
  t.true(back.bytes.equals(a.bytes), 'the write b had only in its page cache was copied back')
  t.deepEqual(engine.inSync, ['a', 'b'])
})

test('a flush clears only the writes that had settled when it started, and a failed flush clears nothing', async (t) => {
  const { b, dir, engine } = pair(t, new MemReplica('b', SIZE))
  await engine.write(0, Buffer.alloc(4096, 1))
  await engine.flush()
  const gate = deferred()
  b.beforeWrite = (_offset, data) => (data[0] === 7 ? gate.promise : undefined)
  const inFlight = engine.write(R, Buffer.alloc(4096, 7))
  await tick()
  await engine.flush()
  gate.resolve()
  await inFlight
  await engine.write(2 * R, Buffer.alloc(4096, 8))
  b.beforeFlush = down
  await engine.flush()
  t.deepEqual(engine.inSync, ['a'], 'the failed flush demoted b')
  t.deepEqual(mapOnDisk(dir), [1, 2], 'region 0 was flushed; 1 was in flight during the flush, 2 after it')
})

test('a region is in the dirty map on disk before any write to it is sent to any replica', async (t) => {
  const { a, b, dir, engine } = pair(t, new MemReplica('b', SIZE))
  b.beforeWrite = down
  await engine.write(0, Buffer.alloc(4096, 1))
  t.deepEqual(engine.inSync, ['a'])
  const seen: number[][] = []
  a.beforeWrite = () => { seen.push(mapOnDisk(dir)) }
  // Two writes to one new region at once: the second finds the region pending, not saved.
  await Promise.all([engine.write(2 * R, Buffer.alloc(4096, 2)), engine.write(2 * R + 8192, Buffer.alloc(4096, 3))])
  t.deepEqual(seen, [[0, 2], [0, 2]])
  seen.length = 0
  await engine.write(2 * R + 16384, Buffer.alloc(4096, 4))
  t.deepEqual(seen, [[0, 2]], 'a region already on disk costs nothing more')
})

test('the engine\'s write promise settles only after every replica call it started for that write has settled', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, SIZE, 3)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const gate = deferred()
  const order: string[] = []
  a.beforeWrite = (_offset, data) => { if (data[0] === 5) throw pxdError('IO_ERROR', 'a failed') }
  b.beforeWrite = async (_offset, data) => {
    if (data[0] !== 5) return
    await gate.promise
    order.push('learner write settled')
  }
  const committing = deferred()
  const commit = deferred()
  const resyncing = engine.resync(b, () => { committing.resolve(); return commit.promise })
  await committing.promise
  const writing = engine.write(R, Buffer.alloc(4096, 5)).catch((err: unknown) => { order.push('write rejected'); throw err })
  await tick()
  t.deepEqual(order, [], 'the write waits for the learner\'s call although it already failed on a')
  gate.resolve()
  t.is((await t.throwsAsync(writing))?.message, 'a failed')
  t.deepEqual(order, ['learner write settled', 'write rejected'])
  commit.resolve()
  await resyncing
})

test('a write whose demotion cannot be recorded leaves the engine diverged, and no later write is acknowledged until the demotion is recorded', async (t) => {
  const { b, demoted, engine, state } = pair(t, new MemReplica('b', SIZE))
  state.kvdbDown = true
  b.beforeWrite = (_offset, data) => { if (data[0] === 1) down() }
  t.false(engine.diverged)
  t.true(isPxdError(await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1))), 'KVDB_UNAVAILABLE'))
  t.true(engine.diverged)
  t.deepEqual(engine.inSync, ['a', 'b'], 'still in sync: the kvdb says so')
  t.true(isPxdError(await t.throwsAsync(engine.write(R, Buffer.alloc(4096, 2))), 'KVDB_UNAVAILABLE'), 'the demotion is tried again first, and fails again')
  t.true(isPxdError(await t.throwsAsync(engine.flush()), 'KVDB_UNAVAILABLE'))
  state.kvdbDown = false
  await engine.write(2 * R, Buffer.alloc(4096, 3))
  t.deepEqual(engine.inSync, ['a'])
  t.deepEqual(demoted, [['b'], ['b'], ['b'], ['b']])
  t.true(engine.diverged, 'stays diverged: the release must mark the volume unclean')
})

test('while a failure is unrecorded, reads are not served by the replica that may lack the failed write', async (t) => {
  const { a, engine, state } = pair(t, new MemReplica('b', SIZE))
  state.kvdbDown = true
  a.beforeWrite = (_offset, data) => { if (data[0] === 5) throw pxdError('IO_ERROR', 'local disk error') }
  await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 5)))
  const into = Buffer.alloc(4096)
  await engine.read(0, into)
  t.is(into[0], 5, 'read from b, which has the write; not from a, which failed it')
})

test('every replica failing a write of a volume with two of them leaves the engine diverged', async (t) => {
  const { a, b, demoted, engine } = pair(t, new MemReplica('b', SIZE))
  a.beforeWrite = () => { throw pxdError('IO_ERROR', 'a failed') }
  b.beforeWrite = () => { throw pxdError('PEER_TIMEOUT', 'b did not answer (it may have written)') }
  await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1)))
  t.deepEqual(demoted, [])
  t.true(engine.diverged)
})

test('what a reconcile copied to a replica counts as unflushed there until a later flush: lost with its power, it is in its dirty map', async (t) => {
  const b = new CachedReplica('b', SIZE)
  const { a, engine } = pair(t, b)
  a.fill(R, 4096, 6) // the last coordinator's write reached a only
  t.true((await engine.reconcile()) > 0)
  b.beforeWrite = down
  await engine.write(3 * R, Buffer.alloc(4096, 3))
  const back = b.afterPowerLoss()
  back.epochBefore = EPOCH
  await engine.resync(back, () => Promise.resolve())
  t.true(back.bytes.equals(a.bytes))
})
