/**
 * A resync racing a writer: random overlapping writes of random sizes, many in flight,
 * each replica applying them after a random delay (so they land out of order), while the
 * resync copies with several copies in flight. Once both are done, the resynced replica
 * must hold exactly the source's bytes: a copy that raced a write and lost would leave
 * the old bytes behind.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { RESYNC_REGION_BYTES } from '../../src/engine/resync'
import { MemReplica } from './mem-replica'

const SIZE = 64 * RESYNC_REGION_BYTES
const VOLUME = '0123456789abcdef'

/** xorshift32: the same sequence for a seed. */
function prng(seed: number): () => number {
  let x = seed || 1
  return () => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return (x >>> 0) / 2 ** 32
  }
}

async function race(seed: number, writes: number, onePass = false): Promise<boolean> {
  const rand = prng(seed)
  const start = randomBytes(SIZE)
  const a = new MemReplica('a', SIZE).load(start)
  if (onePass) a.onePass()
  const stale = Buffer.from(start)
  // b missed some regions' writes.
  for (let r = 0; r < 64; r++) if (rand() < 0.4) randomBytes(RESYNC_REGION_BYTES).copy(stale, r * RESYNC_REGION_BYTES)
  const b = new MemReplica('b', SIZE).load(stale)
  const delay = () => new Promise<void>((resolve) => setTimeout(resolve, Math.floor(rand() * 3)))
  a.beforeWrite = delay
  b.beforeWrite = delay
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const resyncing = engine.resync(b, () => Promise.resolve())
  const inflight = new Set<Promise<void>>()
  for (let i = 0; i < writes; i++) {
    const blocks = 1 + Math.floor(rand() * 48)
    const offset = Math.floor(rand() * (SIZE / 4096 - blocks)) * 4096
    const p: Promise<void> = engine.write(offset, randomBytes(blocks * 4096)).finally(() => inflight.delete(p))
    inflight.add(p)
    if (inflight.size >= 8) await Promise.race(inflight)
    if (rand() < 0.1) await delay()
  }
  await Promise.all(inflight)
  await resyncing
  return a.bytes.equals(b.bytes)
}

test('a resync racing random overlapping writes ends with the target equal to the source', async (t) => {
  const bad: number[] = []
  for (let seed = 1; seed <= 30; seed++) if (!(await race(seed, 300))) bad.push(seed)
  t.deepEqual(bad, [], 'seeds whose target differed')
})

test('the same with no writer during the copy (several copies in flight)', async (t) => {
  const bad: number[] = []
  for (let seed = 100; seed <= 110; seed++) if (!(await race(seed, 0))) bad.push(seed)
  t.deepEqual(bad, [])
})

test('the same with a source on the coordinator\'s node, read once for its data and hashes', async (t) => {
  const bad: number[] = []
  for (let seed = 200; seed <= 229; seed++) if (!(await race(seed, 300, true))) bad.push(seed)
  t.deepEqual(bad, [], 'seeds whose target differed')
})
