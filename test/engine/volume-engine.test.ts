import test from 'ava'
import { VolumeEngine } from '../../src/engine/volume-engine'
import type { Replica } from '../../src/replicas/replica'

/** A replica in memory whose writes take as long as `delayOf` says. */
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
  async read(offset: number, into: Uint8Array): Promise<void> { into.set(this.bytes.subarray(offset, offset + into.length)) }
  flush(): Promise<void> { return Promise.resolve() }
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
