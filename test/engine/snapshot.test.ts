import test from 'ava'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { isPxdError } from '../../src/errors'
import { deferred, MemReplica, tick } from './mem-replica'

const SIZE = 1024 * 1024

test('a snapshot is one point in the write order: writes in flight land and are flushed first, writes asked for meanwhile wait and are not in it', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  const held = deferred()
  b.beforeWrite = () => held.promise
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b] })
  const first = engine.write(0, Buffer.alloc(4096, 1))
  const snap = engine.snapshot('s1')
  await tick()
  t.is(a.snapshots.size, 0, 'no snapshot while a write is in flight')
  b.beforeWrite = undefined
  const later = engine.write(4096, Buffer.alloc(4096, 2))
  held.resolve()
  t.deepEqual(await snap, ['a', 'b'])
  await Promise.all([first, later])
  for (const r of [a, b]) {
    const s = r.snapshots.get('s1')!
    t.true(s.bytes.subarray(0, 4096).equals(Buffer.alloc(4096, 1)), `${r.nodeId}: the write before is in it`)
    t.true(s.bytes.subarray(4096, 8192).equals(Buffer.alloc(4096)), `${r.nodeId}: the write after is not`)
    t.true(s.flushes > 0, `${r.nodeId}: flushed before the snapshot`)
  }
  t.true(a.bytes.subarray(4096, 8192).equals(Buffer.alloc(4096, 2)), 'the write after went on')
})

test('a replica that fails the snapshot is demoted; the others have it', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  b.beforeSnapshot = () => { throw new Error('disk gone') }
  const demoted: string[] = []
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b], demote: async (failed) => { demoted.push(...failed.map((f) => f.nodeId)) } })
  t.deepEqual(await engine.snapshot('s1'), ['a'])
  t.deepEqual(demoted, ['b'])
  t.deepEqual(engine.inSync, ['a'])
})

test('restore: every replica takes the snapshot\'s contents; reads see them', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b] })
  await engine.write(0, Buffer.alloc(4096, 1))
  await engine.snapshot('s1')
  await engine.write(0, Buffer.alloc(4096, 9))
  await engine.restore('s1')
  const back = Buffer.alloc(4096)
  await engine.read(0, back)
  t.true(back.equals(Buffer.alloc(4096, 1)))
  t.true(b.bytes.subarray(0, 4096).equals(Buffer.alloc(4096, 1)))
})

test('snapshot, restore and grow run one at a time; a closed engine refuses them', async (t) => {
  const a = new MemReplica('a', SIZE)
  const held = deferred()
  a.beforeSnapshot = () => held.promise
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a] })
  const one = engine.snapshot('s1')
  await tick()
  for (const p of [engine.snapshot('s2'), engine.restore('s1'), engine.grow(2 * SIZE)]) {
    const err = await t.throwsAsync(p)
    t.true(isPxdError(err, 'CONFLICT'), String(err))
  }
  held.resolve()
  await one
  await engine.close()
  const err = await t.throwsAsync(engine.snapshot('s3'))
  t.true(isPxdError(err, 'ENGINE_CLOSED'), String(err))
})
