import test from 'ava'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { isPxdError } from '../../src/errors'
import { withoutDiscard } from '../../src/frontend/device-directory'
import { deferred, MemReplica, tick } from './mem-replica'

const SIZE = 1024 * 1024

test('grow: every replica grows, then I/O past the old end works on all of them', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b] })
  await t.throwsAsync(engine.write(SIZE, Buffer.alloc(4096, 1)), { message: /outside volume v/ })
  await engine.grow(2 * SIZE)
  t.is(engine.size, 2 * SIZE)
  t.deepEqual([a.grows, b.grows], [[2 * SIZE], [2 * SIZE]])
  await engine.write(SIZE, Buffer.alloc(4096, 1))
  const back = Buffer.alloc(4096)
  await engine.read(SIZE, back)
  t.true(back.equals(Buffer.alloc(4096, 1)))
  t.true(b.bytes.subarray(SIZE, SIZE + 4096).equals(Buffer.alloc(4096, 1)), 'the write reached the other replica too')
})

test('grow waits for the requests in flight, and requests asked for meanwhile wait for the grow', async (t) => {
  const a = new MemReplica('a', SIZE)
  const held = deferred()
  a.beforeWrite = () => held.promise
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a] })
  const first = engine.write(0, Buffer.alloc(4096, 1))
  const grown = engine.grow(2 * SIZE)
  await tick()
  t.deepEqual(a.grows, [], 'no grow while a write is in flight')
  a.beforeWrite = undefined
  const later = engine.write(SIZE, Buffer.alloc(4096, 2)) // past the old end: valid once grown
  held.resolve()
  await Promise.all([first, grown, later])
  t.deepEqual(a.grows, [2 * SIZE])
  t.deepEqual(a.writes, [[0, 4096], [SIZE, 4096]])
})

test('grow refuses a size that is not larger, and runs one at a time', async (t) => {
  const a = new MemReplica('a', SIZE)
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a] })
  for (const size of [SIZE, SIZE / 2, Number.NaN]) {
    const err = await t.throwsAsync(engine.grow(size))
    t.true(isPxdError(err, 'INVALID_ARGUMENT'), String(err))
  }
  const one = engine.grow(2 * SIZE)
  const err = await t.throwsAsync(engine.grow(3 * SIZE))
  t.true(isPxdError(err, 'CONFLICT'), String(err))
  await one
  t.deepEqual(a.grows, [2 * SIZE])
})

test('a replica that cannot grow is demoted; the others grow and serve', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  b.grow = () => Promise.reject(new Error('no room'))
  const demoted: string[] = []
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b], demote: async (failed) => { demoted.push(...failed.map((f) => f.nodeId)) } })
  await engine.grow(2 * SIZE)
  t.deepEqual(demoted, ['b'])
  t.deepEqual(engine.inSync, ['a'])
  await engine.write(SIZE, Buffer.alloc(4096, 3))
})

test('a nodiscard volume\'s device (withoutDiscard) shows the grown size, so its device file and loop device follow', async (t) => {
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [new MemReplica('a', SIZE)] })
  const device = withoutDiscard(engine)
  t.is(device.discard, undefined)
  await engine.grow(2 * SIZE)
  t.is(device.size, 2 * SIZE)
})
