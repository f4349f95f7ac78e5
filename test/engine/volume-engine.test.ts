import test from 'ava'
import { VolumeEngine } from '../../src/engine/volume-engine'
import type { Replica } from '../../src/replicas/replica'

const NO_DATA = new Uint8Array(0)

/** A replica in memory whose writes (and discards, as writes of no data) take as long as `delayOf` says. */
class SlowReplica implements Replica {
  readonly bytes: Buffer
  constructor(readonly nodeId: string, size: number, private readonly delayOf: (data: Uint8Array) => number) {
    this.bytes = Buffer.alloc(size)
  }

  open(): Promise<number> { return Promise.resolve(0) }
  async write(offset: number, data: Uint8Array): Promise<void> {
    const copy = Buffer.from(data)
    await new Promise((resolve) => setTimeout(resolve, this.delayOf(data)))
    copy.copy(this.bytes, offset)
  }
  async discard(offset: number, length: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, this.delayOf(NO_DATA)))
    this.bytes.fill(0, offset, offset + length)
  }
  async read(offset: number, into: Uint8Array): Promise<void> { into.set(this.bytes.subarray(offset, offset + into.length)) }
  flush(): Promise<void> { return Promise.resolve() }
  grow(): Promise<void> { return Promise.resolve() }
  snapshot(): Promise<void> { return Promise.resolve() }
  restore(): Promise<void> { return Promise.resolve() }
  digest(): Promise<Uint8Array> { return Promise.resolve(new Uint8Array(0)) }
  hashes(): Promise<Uint8Array> { return Promise.resolve(new Uint8Array(0)) }
  close(): Promise<void> { return Promise.resolve() }
}

const SIZE = 64 * 1024

test('overlapping writes in flight land in the order they were asked for, on every replica', async (t) => {
  // Replica b is slow for the first write and fast for the second: without ordering it
  // would apply them the other way round and end up differing from replica a.
  const a = new SlowReplica('a', SIZE, () => 1)
  const b = new SlowReplica('b', SIZE, (data) => (data[0] === 1 ? 30 : 1))
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b] })
  const first = Buffer.alloc(8192, 1)
  const second = Buffer.alloc(4096, 2)
  await Promise.all([engine.write(0, first), engine.write(4096, second)])
  const want = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)])
  t.true(a.bytes.subarray(0, 8192).equals(want), 'replica a holds the second write over the first')
  t.true(b.bytes.subarray(0, 8192).equals(want), 'replica b too')
})

test('a discard lands after the overlapping write asked for before it and before the one asked for after it, on every replica', async (t) => {
  // b takes the first write slowly and the discard fast: unordered, the discard would land first there.
  const a = new SlowReplica('a', SIZE, () => 1)
  const b = new SlowReplica('b', SIZE, (data) => (data[0] === 1 ? 30 : data[0] === 3 ? 1 : 2))
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b] })
  await Promise.all([engine.write(0, Buffer.alloc(16384, 1)), engine.discard(4096, 8192), engine.write(8192, Buffer.alloc(4096, 3))])
  const want = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096), Buffer.alloc(4096, 3), Buffer.alloc(4096, 1)])
  t.true(a.bytes.subarray(0, 16384).equals(want), 'replica a: the write, then the discard, then the second write')
  t.true(b.bytes.subarray(0, 16384).equals(want), 'replica b the same')
  t.is(engine.lastSequence, 3, 'the discard is numbered like a write')
})

test('a discard outside the volume is refused and reaches no replica; an empty one does nothing', async (t) => {
  const a = new SlowReplica('a', SIZE, () => 1)
  a.bytes.fill(7)
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a] })
  await t.throwsAsync(engine.discard(SIZE - 4096, 8192), { message: /outside volume v/ })
  await engine.discard(0, 0)
  t.true(a.bytes.equals(Buffer.alloc(SIZE, 7)))
  t.is(engine.lastSequence, 0)
})

test('writes that do not overlap are not held back', async (t) => {
  let finished = 0
  const finishedAtStart: number[] = []
  const a = new SlowReplica('a', SIZE, () => { finishedAtStart.push(finished); return 20 })
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a] })
  const write = (i: number) => engine.write(i * 4096, Buffer.alloc(4096, i + 1)).then(() => { finished++ })
  await Promise.all([write(0), write(1), write(2)])
  t.deepEqual(finishedAtStart, [0, 0, 0], 'all three started before any finished')
})

test('a chain of overlapping writes keeps its order', async (t) => {
  const a = new SlowReplica('a', SIZE, (data) => 10 - data[0]!) // later writes are faster
  const b = new SlowReplica('b', SIZE, () => 1)
  const engine = new VolumeEngine({ volumeId: 'v', size: SIZE, replicas: [a, b] })
  await Promise.all([1, 2, 3, 4, 5].map((i) => engine.write(0, Buffer.alloc(4096, i))))
  t.true(a.bytes.subarray(0, 4096).equals(Buffer.alloc(4096, 5)))
  t.true(b.bytes.subarray(0, 4096).equals(Buffer.alloc(4096, 5)))
})
