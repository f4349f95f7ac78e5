import test from 'ava'
import { BLOCK_SIZE } from '../../src/constants'
import { SCRUB_CHUNK_BYTES, VolumeEngine, type EngineOptions } from '../../src/engine/volume-engine'
import { isPxdError } from '../../src/errors'
import { MemReplica } from './mem-replica'

const SIZE = 2 * SCRUB_CHUNK_BYTES
const VOLUME = '0123456789abcdef'

function counting() {
  const counts = { checksumFailure: 0, repaired: 0 }
  const repairs: Array<{ nodeId: string; offset: number; length: number; error?: unknown }> = []
  const options: Pick<EngineOptions, 'events' | 'onRepair'> = {
    events: { checksumFailure: () => { counts.checksumFailure++ }, repaired: () => { counts.repaired++ } },
    onRepair: (nodeId, offset, length, error) => { repairs.push({ nodeId, offset, length, ...(error === undefined ? {} : { error }) }) },
  }
  return { counts, repairs, options }
}

test('scrub rewrites a bad block from the other replica and counts every written block', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, 4 * BLOCK_SIZE, 1).fill(SCRUB_CHUNK_BYTES, BLOCK_SIZE, 2)
  const b = new MemReplica('b', SIZE).fill(0, 4 * BLOCK_SIZE, 1).fill(SCRUB_CHUNK_BYTES, BLOCK_SIZE, 2)
  b.corrupt(3)
  const { counts, repairs, options } = counting()
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b], ...options })
  const result = await engine.scrub()
  t.deepEqual(result, { checkedBlocks: 10, badBlocks: 1, repairedBlocks: 1, unrecoverableBlocks: 0 })
  t.deepEqual(b.writes, [[3 * BLOCK_SIZE, BLOCK_SIZE]], 'only the bad block is rewritten')
  t.true(b.bytes.equals(a.bytes))
  t.deepEqual(counts, { checksumFailure: 1, repaired: 1 })
  t.deepEqual(repairs, [{ nodeId: 'b', offset: 3 * BLOCK_SIZE, length: BLOCK_SIZE }])
  t.deepEqual(await engine.scrub(), { checkedBlocks: 10, badBlocks: 0, repairedBlocks: 0, unrecoverableBlocks: 0 })
})

test('scrub on a single replica counts a bad block as unrecoverable and leaves it alone', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, 2 * BLOCK_SIZE, 1)
  a.corrupt(1)
  const { counts, repairs, options } = counting()
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a], ...options })
  t.deepEqual(await engine.scrub(), { checkedBlocks: 2, badBlocks: 1, repairedBlocks: 0, unrecoverableBlocks: 1 })
  t.deepEqual(a.writes, [])
  t.deepEqual(counts, { checksumFailure: 1, repaired: 0 })
  t.is(repairs.length, 1)
  t.like(repairs[0], { nodeId: 'a', offset: BLOCK_SIZE, length: BLOCK_SIZE })
  t.true(isPxdError(repairs[0]?.error, 'CHECKSUM_MISMATCH'))
})

test('a block bad on every replica is unrecoverable, and the other bad copy is not spread', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, BLOCK_SIZE, 1)
  const b = new MemReplica('b', SIZE).fill(0, BLOCK_SIZE, 1)
  a.corrupt(0)
  b.corrupt(0)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b] })
  t.deepEqual(await engine.scrub(), { checkedBlocks: 2, badBlocks: 2, repairedBlocks: 0, unrecoverableBlocks: 2 })
  t.deepEqual(a.writes, [])
  t.deepEqual(b.writes, [])
})

test('scrub reads chunks never written too (holes: cheap to read), counts no block there, and stops when aborted', async (t) => {
  const a = new MemReplica('a', SIZE)
  let reads = 0
  const read = a.read.bind(a)
  a.read = (offset, into) => { reads++; return read(offset, into) }
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  t.deepEqual(await engine.scrub(), { checkedBlocks: 0, badBlocks: 0, repairedBlocks: 0, unrecoverableBlocks: 0 })
  t.is(reads, 2, 'each chunk is read once')
  a.fill(0, SIZE, 7)
  const abort = new AbortController()
  abort.abort()
  t.is((await engine.scrub({ signal: abort.signal })).checkedBlocks, 0)
})

test('a torn block (crc 0 over bytes that are not all zero) is bad: scrub finds it in a chunk whose checksums are all zero and repairs it', async (t) => {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  a.corrupt(5)
  const { counts, repairs, options } = counting()
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b], ...options })
  t.deepEqual(await engine.scrub(), { checkedBlocks: 1, badBlocks: 1, repairedBlocks: 1, unrecoverableBlocks: 0 })
  t.deepEqual(repairs, [{ nodeId: 'a', offset: 5 * BLOCK_SIZE, length: BLOCK_SIZE }])
  t.true(a.bytes.equals(b.bytes))
  t.deepEqual(counts, { checksumFailure: 1, repaired: 1 })
})
