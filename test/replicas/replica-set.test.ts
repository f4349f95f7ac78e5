import test from 'ava'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { DIRTY_REGION_BYTES, DirtyMap } from '../../src/replicas/dirty-map'
import { isPxdError, pxdError } from '../../src/errors'
import type { Replica } from '../../src/replicas/replica'
import { ReplicaSet, type CommitOutcome, type ReplicaFailure, type ReplicaSetOptions } from '../../src/replicas/replica-set'
import { deferred, MemReplica, tick } from '../engine/mem-replica'

const SIZE = 4 * DIRTY_REGION_BYTES
const EPOCH = 7
const VOLUME = '0123456789abcdef'
const promoted = async (): Promise<CommitOutcome> => ({ promoted: true })

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

const failure = (replica: Replica) => ({ replica, error: pxdError('IO_ERROR', `${replica.nodeId} failed`) })

/** b demoted (with a map holding region 0), then a new replica object of node b joined as a learner. */
async function learnerB(t: { teardown(fn: () => void): void }, answer?: (failed: ReplicaFailure[]) => Promise<void>) {
  const s = setup(t, answer)
  await s.set.settle([failure(s.b)], [s.a, s.b], [0, 4096])
  const back = new MemReplica('b', SIZE)
  s.set.join(back)
  s.set.learn(back)
  return { ...s, back }
}

test('states at attach: the replicas given are in sync, the listed ones out of sync, others unknown', (t) => {
  const { set } = setup(t, undefined, { outOfSync: ['d'] })
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'b', 'c'])
  t.is(set.stateOf('a'), 'in-sync')
  t.is(set.stateOf('d'), 'out-of-sync')
  t.is(set.stateOf('e'), undefined)
  t.is(set.mark(0, 4096), undefined, 'no dirty map: nothing to wait for')
  t.false(set.diverged)
})

test('in-sync -> demoting -> out-of-sync: the map holds the failed range before settle resolves, then the replica leaves and is closed', async (t) => {
  const kvdb = deferred()
  const { a, b, set, calls, dir } = setup(t, () => kvdb.promise)
  const done = set.settle([failure(b)], [a, b], [3 * DIRTY_REGION_BYTES, 4096])
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
  t.is(set.dirtyMapOf('b')?.sinceEpoch, EPOCH)
  await set.mark(0, 10)
  t.deepEqual(regionsOf(dir, 'b'), [0, 3], 'later writes are marked too')
})

test('a demoted replica\'s map starts with every region written to it since its last completed flush', async (t) => {
  const { a, b, set, dir } = setup(t)
  set.wrote(0, 4096, 1)
  set.wrote(DIRTY_REGION_BYTES, 4096, 2)
  set.flushed(b, 1)
  set.wrote(2 * DIRTY_REGION_BYTES - 4096, 8192, 3)
  t.deepEqual(set.unflushedOf(b), [1, 2], 'the flush covered write 1 but not 2 (it had not settled when the flush started) nor 3')
  set.wrote(0, 4096, 4)
  t.deepEqual(set.unflushedOf(b), [0, 1, 2])
  t.deepEqual(set.unflushedOf(a), [0, 1, 2], 'a was never flushed: a failed or missing flush clears nothing')
  await set.settle([failure(b)], [a, b], [3 * DIRTY_REGION_BYTES, 4096])
  t.deepEqual(regionsOf(dir, 'b'), [0, 1, 2, 3])
})

test('demoting -> unrecorded when the kvdb write rejects: the error comes back, the replica stays but serves no reads, and the set diverged', async (t) => {
  const { a, b, c, set, dir } = setup(t, () => Promise.reject(pxdError('CONFLICT', 'lost the race')))
  const err = await t.throwsAsync(set.settle([failure(b)], [a, b], [0, 4096]))
  t.true(isPxdError(err, 'CONFLICT'))
  t.is(set.stateOf('b'), 'unrecorded')
  t.deepEqual(set.inSync, [a, b, c], 'it still gets writes')
  t.deepEqual(set.readable, [a, c])
  t.true(set.diverged)
  t.false(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')))
  t.is(b.closed, 0)
})

test('a demotion that could not be recorded is tried again before any later request resolves, its map holding the range it failed', async (t) => {
  let n = 0
  const { a, b, c, set, calls, dir } = setup(t, async () => {
    if (n++ > 0) return
    await tick(30)
    throw pxdError('KVDB_UNAVAILABLE', 'timed out')
  })
  const first = set.settle([failure(b)], [a, b, c], [DIRTY_REGION_BYTES, 4096])
  const second = set.settle([failure(c)], [a, b, c])
  await tick(10)
  t.deepEqual(calls, [['b']], 'one demotion at a time')
  t.is(set.stateOf('b'), 'demoting')
  t.is(set.stateOf('c'), 'in-sync')
  t.true(isPxdError(await t.throwsAsync(first), 'KVDB_UNAVAILABLE'))
  await second
  t.deepEqual(calls, [['b'], ['c'], ['b']], 'c demoted, then b tried again before the request resolved')
  t.is(set.stateOf('b'), 'out-of-sync')
  t.is(set.stateOf('c'), 'out-of-sync')
  t.deepEqual(regionsOf(dir, 'b'), [1])
  t.is(set.recorded(), undefined, 'nothing left to record')
})

test('a fenced kvdb write (FENCED) rejects with it, demotes nobody, and does not stall later demotions', async (t) => {
  let fenced = true
  const { a, b, set } = setup(t, () => (fenced ? Promise.reject(pxdError('FENCED', 'attached elsewhere')) : Promise.resolve()))
  t.true(isPxdError(await t.throwsAsync(set.settle([failure(b)], [a, b])), 'FENCED'))
  t.not(set.stateOf('b'), 'out-of-sync')
  fenced = false
  await set.settle([failure(b)], [a, b])
  t.is(set.stateOf('b'), 'out-of-sync')
})

test('no demotion when every member failed, or when there is no demote callback', async (t) => {
  const { a, b, set, calls } = setup(t)
  const all = await t.throwsAsync(set.settle([failure(a), failure(b)], [a, b]))
  t.is(all?.message, 'a failed', 'the first failure')
  t.deepEqual(calls, [])
  const bare = new ReplicaSet({ volumeId: VOLUME, replicas: [a, b], epoch: EPOCH })
  t.is((await t.throwsAsync(bare.settle([failure(b)], [a, b])))?.message, 'b failed')
  t.is(bare.stateOf('b'), 'in-sync')
})

test('a second failure of a replica demoted meanwhile only adds its range to the map', async (t) => {
  const { a, b, set, calls, dir } = setup(t)
  await Promise.all([
    set.settle([failure(b)], [a, b], [0, 4096]),
    set.settle([failure(b)], [a, b], [2 * DIRTY_REGION_BYTES, 4096]),
  ])
  t.deepEqual(calls, [['b']], 'demoted once')
  t.deepEqual(regionsOf(dir, 'b'), [0, 2])
})

test('members are matched by identity: a late failure of a demoted replica object never demotes the node\'s new member', async (t) => {
  const { a, b, set, back, calls } = await learnerB(t)
  await set.promote(back, promoted)
  set.leave(back)
  t.is(set.stateOf('b'), 'in-sync')
  await set.settle([failure(b)], [a, b], [DIRTY_REGION_BYTES, 4096])
  t.deepEqual(calls, [['b']], 'no second demotion')
  t.true(set.inSync.includes(back))
})

test('a node has at most one member: join of a node that is in sync, demoting or resyncing is refused', async (t) => {
  const kvdb = deferred()
  const { a, b, set } = setup(t, () => kvdb.promise)
  t.true(isPxdError(t.throws(() => set.join(new MemReplica('a', SIZE))), 'CONFLICT'), 'in sync')
  const demoting = set.settle([failure(b)], [a, b])
  await tick()
  t.true(isPxdError(t.throws(() => set.join(new MemReplica('b', SIZE))), 'CONFLICT'), 'demoting')
  kvdb.resolve()
  await demoting
  const first = new MemReplica('b', SIZE)
  set.join(first)
  t.is(set.stateOf('b'), 'joining')
  t.deepEqual(set.learners, [], 'a joining replica gets no writes yet')
  t.deepEqual(set.resyncing, ['b'])
  t.true(isPxdError(t.throws(() => set.join(new MemReplica('b', SIZE))), 'CONFLICT'), 'joining')
  set.learn(first)
  t.true(isPxdError(t.throws(() => set.join(new MemReplica('b', SIZE))), 'CONFLICT'), 'learner')
  set.leave(first)
  t.notThrows(() => set.join(new MemReplica('b', SIZE)), 'out of sync again: a new resync may start')
})

test('out-of-sync -> learner -> committing -> in-sync: commit is the kvdb write, then the replica reads last and its map is gone', async (t) => {
  const { set, dir, back } = await learnerB(t)
  t.is(set.stateOf('b'), 'learner')
  t.deepEqual(set.learners, [back])
  t.deepEqual(set.committing, [], 'a learner gets no flush')
  const commit = deferred<CommitOutcome>()
  const promoting = set.promote(back, () => commit.promise)
  t.is(set.stateOf('b'), 'committing')
  t.deepEqual(set.committing, [back], 'from the commit on it gets every flush')
  t.false(set.inSync.includes(back), 'not in sync before the kvdb says so')
  commit.resolve({ promoted: true })
  await promoting
  set.leave(back)
  t.is(set.stateOf('b'), 'in-sync')
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'c', 'b'])
  t.deepEqual(set.learners, [])
  t.false(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'the map is discarded')
  t.is(set.mark(0, 4096), undefined)
})

test('learner -> out-of-sync: a learner write failure before commit refuses the promotion and commit never runs', async (t) => {
  const { a, set, dir, back } = await learnerB(t)
  await set.settle([{ replica: back, error: pxdError('PEER_UNAVAILABLE', 'link down') }], [a], [0, 4096])
  await set.settle([{ replica: back, error: pxdError('IO_ERROR', 'later') }], [a], [0, 4096])
  let committed = 0
  const err = await t.throwsAsync(set.promote(back, async () => { committed++; return { promoted: true } }))
  t.true(isPxdError(err, 'PEER_UNAVAILABLE'), 'the first failure is the one remembered')
  t.is(committed, 0)
  set.leave(back)
  t.is(set.stateOf('b'), 'out-of-sync')
  t.true(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), 'the map stays for the next resync')
  set.join(back)
  set.learn(back)
  t.notThrows(() => set.checkLearner(back), 'a new resync starts with no failure remembered')
})

test('committing -> out-of-sync: a commit the kvdb refused, or read back as not applied, leaves the replica out of sync with its map', async (t) => {
  for (const code of ['CONFLICT', 'KVDB_UNAVAILABLE'] as const) {
    const { set, dir, back } = await learnerB(t)
    const err = await t.throwsAsync(set.promote(back, async () => { await tick(10); return { promoted: false, error: pxdError(code, 'no') } }))
    set.leave(back)
    t.true(isPxdError(err, code), code)
    t.is(set.stateOf('b'), 'out-of-sync', code)
    t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'c'], code)
    t.true(existsSync(DirtyMap.fileOf(dir, VOLUME, 'b')), code)
    t.false(set.diverged, code)
  }
})

test('replica membership changes are atomic against writes in flight: a committing replica that fails a write is demoted once promoted, before that write resolves', async (t) => {
  const { a, c, set, calls, dir, back } = await learnerB(t)
  const commit = deferred<CommitOutcome>()
  const promoting = set.promote(back, () => commit.promise)
  let resolved = false
  const write = set.settle([{ replica: back, error: pxdError('PEER_UNAVAILABLE', 'link down') }], [a, c], [2 * DIRTY_REGION_BYTES, 4096]).then(() => { resolved = true })
  await tick()
  t.false(resolved, 'the failed write waits for the commit\'s outcome')
  commit.resolve({ promoted: true })
  t.true(isPxdError(await t.throwsAsync(promoting), 'PEER_UNAVAILABLE'))
  await write
  t.deepEqual(calls, [['b'], ['b']], 'demoted again at once, by the normal path')
  t.is(set.stateOf('b'), 'out-of-sync')
  t.true(regionsOf(dir, 'b').includes(2), 'the map was kept and holds the failed range')
})

test('a committing replica\'s failures resolve once the commit is known not applied: their ranges are in the map', async (t) => {
  const { a, c, set, calls, back } = await learnerB(t)
  const commit = deferred<CommitOutcome>()
  const promoting = set.promote(back, () => commit.promise)
  const write = set.settle([{ replica: back, error: pxdError('PEER_UNAVAILABLE', 'link down') }], [a, c], [0, 4096])
  commit.resolve({ promoted: false, error: pxdError('CONFLICT', 'no') })
  await t.throwsAsync(promoting)
  await t.notThrowsAsync(write)
  t.deepEqual(calls, [['b']])
})

test('a commit whose outcome stays unknown: the requests the committing replica failed are not acknowledged, and the set diverged', async (t) => {
  const { a, c, set, back } = await learnerB(t)
  const unknown = pxdError('KVDB_UNAVAILABLE', 'etcd request timed out')
  const commit = deferred<CommitOutcome>()
  const promoting = set.promote(back, () => commit.promise)
  const write = set.settle([{ replica: back, error: pxdError('PEER_UNAVAILABLE', 'link down') }], [a, c], [0, 4096])
  commit.resolve({ promoted: undefined, error: unknown })
  t.is(await t.throwsAsync(promoting), unknown)
  t.is(await t.throwsAsync(write), unknown)
  t.true(set.diverged)
  set.leave(back)
  t.is(set.stateOf('b'), 'out-of-sync')
})

test('a learner the set never knew is out of sync once its resync fails', async (t) => {
  const { set } = setup(t)
  const e = new MemReplica('e', SIZE)
  t.is(set.stateOf('e'), undefined)
  set.join(e)
  set.learn(e)
  t.is(set.stateOf('e'), 'learner')
  await t.throwsAsync(set.promote(e, async () => ({ promoted: false, error: pxdError('CONFLICT', 'lost') })))
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

test('in-sync -> retired: the replica leaves the set at once (reads and writes go to the others), never the last one', (t) => {
  const { a, b, c, set } = setup(t, undefined, { outOfSync: ['d'] })
  t.is(set.retire('b'), b)
  t.deepEqual(set.inSync.map((r) => r.nodeId), ['a', 'c'])
  t.deepEqual(set.readable.map((r) => r.nodeId), ['a', 'c'])
  t.is(set.stateOf('b'), undefined)
  t.is(set.retire('d'), undefined, 'an out-of-sync one is only forgotten')
  t.is(set.stateOf('d'), undefined)
  t.is(set.retire('a'), a)
  t.true(isPxdError(t.throws(() => set.retire('c')), 'UNSATISFIABLE'), 'the last in-sync replica stays')
  t.deepEqual(set.inSync, [c])
})
