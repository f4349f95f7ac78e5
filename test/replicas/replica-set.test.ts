import test from 'ava'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { DIRTY_REGION_BYTES, DirtyMap } from '../../src/replicas/dirty-map'
import { isPxdError, pxdError } from '../../src/errors'
import { ReplicaSet, type ReplicaFailure, type ReplicaSetOptions } from '../../src/replicas/replica-set'
import { deferred, MemReplica, tick } from '../engine/mem-replica'

const SIZE = 4 * DIRTY_REGION_BYTES
const EPOCH = 7
const VOLUME = '0123456789abcdef'

function tmpDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-set-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function regionsOf(dir: string, nodeId: string): number[] {
  return (JSON.parse(readFileSync(DirtyMap.fileOf(dir, VOLUME, nodeId), 'utf8')) as { regions: number[] }).regions
}

/** A set of replicas a, b, c whose demote callback is recorded and answered by `answer`. */
function setup(t: { teardown(fn: () => void): void }, answer: (failed: ReplicaFailure[]) => Promise<void> = () => Promise.resolve(), extra: Partial<ReplicaSetOptions> = {}) {
  const [a, b, c] = ['a', 'b', 'c'].map((n) => new MemReplica(n, SIZE)) as [MemReplica, MemReplica, MemReplica]
  const calls: string[][] = []
  const dir = tmpDir(t)
  const set = new ReplicaSet({
    volumeId: VOLUME,
    replicas: [a, b, c],
    epoch: EPOCH,
    dirtyDir: dir,
    demote: (failed) => { calls.push(failed.map((f) => f.nodeId)); return answer(failed) },
    ...extra,
  })
  return { a, b, c, set, calls, dir }
}

const failure = (nodeId: string) => ({ nodeId, error: pxdError('IO_ERROR', `${nodeId} failed`) })

test('states at attach: the replicas given are in sync, the listed ones out of sync, others unknown', (t) => {
  const { set } = setup(t, undefined, { outOfSync: ['d'] })
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'b', 'c'])
  t.is(set.stateOf('a'), 'in-sync')
  t.is(set.stateOf('d'), 'out-of-sync')
  t.is(set.stateOf('e'), undefined)
  t.is(set.mark(0, 4096), undefined, 'no dirty map: nothing to wait for')
})

test('in-sync -> demoting -> out-of-sync: the map holds the failed range before demote resolves, then the replica leaves and is closed', async (t) => {
  const kvdb = deferred()
  const { a, b, set, calls, dir } = setup(t, () => kvdb.promise)
  const done = set.demote([failure('b')], [a, b], [3 * DIRTY_REGION_BYTES, 4096])
  await tick()
  t.is(set.stateOf('b'), 'demoting')
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'b', 'c'], 'a demoting replica still gets writes and serves reads')
  t.false(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'no map before the kvdb write succeeded')
  kvdb.resolve()
  await done
  t.deepEqual(calls, [['b']])
  t.is(set.stateOf('b'), 'out-of-sync')
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'c'])
  t.deepEqual(regionsOf(dir, 'b'), [3], 'the failed write is in the map, durably')
  t.is(b.closed, 1)
  const map = set.dirtyMapOf('b')
  t.is(map?.sinceEpoch, EPOCH)
  await set.mark(0, 10)
  t.deepEqual(regionsOf(dir, 'b'), [0, 3], 'later writes are marked too')
})

test('demoting -> in-sync when the kvdb write rejects: the error comes back and the replica stays', async (t) => {
  const { a, b, set, dir } = setup(t, () => Promise.reject(pxdError('CONFLICT', 'lost the race')))
  const err = await t.throwsAsync(set.demote([failure('b')], [a, b], [0, 4096]))
  t.true(isPxdError(err, 'CONFLICT'))
  t.is(set.stateOf('b'), 'in-sync')
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'b', 'c'])
  t.false(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')))
  t.is(b.closed, 0)
})

test('a kvdb write that times out holds the next demotion back, and the replica is in sync again afterwards', async (t) => {
  let n = 0
  const { a, b, c, set, calls } = setup(t, async () => {
    if (n++ > 0) return
    await tick(30)
    throw pxdError('KVDB_UNAVAILABLE', 'timed out')
  })
  const first = set.demote([failure('b')], [a, b, c])
  const second = set.demote([failure('c')], [a, b, c])
  await tick(10)
  t.deepEqual(calls, [['b']], 'one demotion at a time')
  t.is(set.stateOf('b'), 'demoting')
  t.is(set.stateOf('c'), 'in-sync')
  t.true(isPxdError(await t.throwsAsync(first), 'KVDB_UNAVAILABLE'))
  await second
  t.deepEqual(calls, [['b'], ['c']])
  t.is(set.stateOf('b'), 'in-sync')
  t.is(set.stateOf('c'), 'out-of-sync')
})

test('a fenced kvdb write (FENCED) rejects with it, demotes nobody, and does not stall later demotions', async (t) => {
  let fenced = true
  const { a, b, set } = setup(t, () => (fenced ? Promise.reject(pxdError('FENCED', 'attached elsewhere')) : Promise.resolve()))
  t.true(isPxdError(await t.throwsAsync(set.demote([failure('b')], [a, b])), 'FENCED'))
  t.is(set.stateOf('b'), 'in-sync')
  fenced = false
  await set.demote([failure('b')], [a, b])
  t.is(set.stateOf('b'), 'out-of-sync')
})

test('no demotion when every member failed, or when there is no demote callback', async (t) => {
  const { a, b, set, calls } = setup(t)
  const all = await t.throwsAsync(set.demote([failure('a'), failure('b')], [a, b]))
  t.is(all?.message, 'a failed', 'the first failure')
  t.deepEqual(calls, [])
  const bare = new ReplicaSet({ volumeId: VOLUME, replicas: [a, b], epoch: EPOCH })
  t.is((await t.throwsAsync(bare.demote([failure('b')], [a, b])))?.message, 'b failed')
  t.is(bare.stateOf('b'), 'in-sync')
})

test('a second failure of a replica demoted meanwhile only adds its range to the map', async (t) => {
  const { a, b, set, calls, dir } = setup(t)
  await Promise.all([
    set.demote([failure('b')], [a, b], [0, 4096]),
    set.demote([failure('b')], [a, b], [2 * DIRTY_REGION_BYTES, 4096]),
  ])
  t.deepEqual(calls, [['b']], 'demoted once')
  t.deepEqual(regionsOf(dir, 'b'), [0, 2])
})

test('out-of-sync -> learner -> in-sync: commit is the kvdb write, then the replica reads last and its map is gone', async (t) => {
  const { a, b, set, dir } = setup(t)
  await set.demote([failure('b')], [a, b], [0, 4096])
  const back = new MemReplica('b', SIZE)
  set.join(back)
  t.is(set.stateOf('b'), 'learner')
  t.deepEqual(set.learners, [back])
  const commit = deferred()
  const promoted = set.promote(back, () => commit.promise)
  await tick()
  t.is(set.stateOf('b'), 'learner', 'not in sync before the kvdb says so')
  t.false(set.inSync.includes(back))
  commit.resolve()
  await promoted
  set.leave(back)
  t.is(set.stateOf('b'), 'in-sync')
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'c', 'b'])
  t.deepEqual(set.learners, [])
  t.false(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'the map is discarded')
  t.is(set.mark(0, 4096), undefined)
})

test('learner -> out-of-sync: a learner write failure before commit refuses the promotion and commit never runs', async (t) => {
  const { a, b, set, dir } = setup(t)
  await set.demote([failure('b')], [a, b], [0, 4096])
  const back = new MemReplica('b', SIZE)
  set.join(back)
  set.learnerFailed(back, pxdError('PEER_UNAVAILABLE', 'link down'))
  set.learnerFailed(back, pxdError('IO_ERROR', 'later'))
  let committed = 0
  const err = await t.throwsAsync(set.promote(back, async () => { committed++ }))
  t.true(isPxdError(err, 'PEER_UNAVAILABLE'), 'the first failure is the one remembered')
  t.is(committed, 0)
  set.leave(back)
  t.is(set.stateOf('b'), 'out-of-sync')
  t.true(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'the map stays for the next resync')
  set.join(back)
  t.notThrows(() => set.checkLearner(back), 'a new resync starts with no failure remembered')
})

test('learner -> out-of-sync: a commit that times out or is fenced leaves the replica out of sync with its map', async (t) => {
  for (const code of ['KVDB_UNAVAILABLE', 'FENCED'] as const) {
    const { a, b, set, dir } = setup(t)
    await set.demote([failure('b')], [a, b], [0, 4096])
    const back = new MemReplica('b', SIZE)
    set.join(back)
    const err = await t.throwsAsync(set.promote(back, async () => { await tick(10); throw pxdError(code, 'no') }))
    set.leave(back)
    t.true(isPxdError(err, code), code)
    t.is(set.stateOf('b'), 'out-of-sync', code)
    t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'c'], code)
    t.true(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), code)
  }
})

test('known weakness: a learner write that fails while the commit is in flight does not stop the promotion', async (t) => {
  const { set } = setup(t, undefined, { outOfSync: ['d'] })
  const d = new MemReplica('d', SIZE)
  set.join(d)
  await set.promote(d, async () => {
    await tick()
    set.learnerFailed(d, pxdError('PEER_UNAVAILABLE', 'link down'))
  })
  set.leave(d)
  t.is(set.stateOf('d'), 'in-sync', 'learner failures are checked before commit only (a later issue fixes this)')
})

test('a learner the set never knew is out of sync once its resync fails', async (t) => {
  const { set } = setup(t)
  const e = new MemReplica('e', SIZE)
  t.is(set.stateOf('e'), undefined)
  set.join(e)
  t.is(set.stateOf('e'), 'learner')
  await t.throwsAsync(set.promote(e, () => Promise.reject(pxdError('CONFLICT', 'lost'))))
  set.leave(e)
  t.is(set.stateOf('e'), 'out-of-sync')
  t.deepEqual(set.learners, [])
})

test('resume picks up the map an earlier attach of this node left for an out-of-sync replica', async (t) => {
  const dir = tmpDir(t)
  const old = await DirtyMap.create(dir, VOLUME, 'b', EPOCH - 1)
  await old.mark(DIRTY_REGION_BYTES, 1)
  const a = new MemReplica('a', SIZE)
  const set = new ReplicaSet({ volumeId: VOLUME, replicas: [a], epoch: EPOCH, dirtyDir: dir, outOfSync: ['b'] })
  await set.resume()
  t.deepEqual(set.dirtyMapOf('b')?.regions, [1])
  t.is(set.dirtyMapOf('b')?.lastEpoch, EPOCH)
  await set.mark(3 * DIRTY_REGION_BYTES, 1)
  t.deepEqual(regionsOf(dir, 'b'), [1, 3])
})
