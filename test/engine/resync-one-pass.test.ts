// A resync whose source is on the coordinator's node reads it once: each piece's data and
// hashes in one read under the copy lock, compared with the target's hashes taken before.
import test from 'ava'
import { RESYNC_COPY_BYTES, RESYNC_REGION_BYTES, pieces } from '../../src/engine/resync'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { deferred, MemReplica, tick } from './mem-replica'

const REGION = RESYNC_REGION_BYTES
const PIECE = RESYNC_COPY_BYTES
const SIZE = 3 * PIECE
const VOLUME = '0123456789abcdef'

test('pieces start at multiples of the copy size and cover the range exactly', (t) => {
  t.deepEqual(pieces(0, 2 * PIECE), [[0, PIECE], [PIECE, PIECE]])
  t.deepEqual(pieces(PIECE / 2, PIECE + 4096), [[PIECE / 2, PIECE / 2], [PIECE, PIECE / 2 + 4096]])
  t.deepEqual(pieces(5 * PIECE, 0), [])
})

test('the source is read once per piece and never asked for hashes; only the differing regions are copied', async (t) => {
  const a = new MemReplica('a', SIZE).onePass().fill(0, 8192, 1).fill(PIECE + 5 * REGION + 4096, 4096, 2)
  // b has region 0 already, misses the write in the second piece and holds stale bytes in the third.
  const b = new MemReplica('b', SIZE).fill(0, 8192, 1).fill(2 * PIECE + 7 * REGION, 4096, 9)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const result = await engine.resync(b, () => Promise.resolve())
  t.deepEqual(a.hashed, [], 'no separate hash pass over the source')
  t.deepEqual(a.readsHashed, [[0, PIECE], [PIECE, PIECE], [2 * PIECE, PIECE]], 'each piece read once')
  t.deepEqual(b.hashed, [[0, SIZE]], 'the target hashed once')
  t.deepEqual(b.writes, [[PIECE + 5 * REGION, REGION]])
  t.deepEqual(b.discards, [[2 * PIECE + 7 * REGION, REGION]], 'a region of zeros on the source is discarded on the target')
  t.true(b.bytes.equals(a.bytes))
  t.like(result, { method: 'checksum-scan', totalBytes: SIZE, copiedBytes: 2 * REGION })
  t.deepEqual(engine.inSync, ['a', 'b'])
})

test('a paced one-pass resync pays for what it copied after the copy, outside the copy lock', async (t) => {
  const a = new MemReplica('a', SIZE).onePass().fill(0, PIECE, 3)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const asked: number[] = []
  const gate = deferred()
  const resyncing = engine.resync(b, () => Promise.resolve(), { pace: async (bytes) => { asked.push(bytes); await gate.promise } })
  for (let i = 0; i < 50 && asked.length === 0; i++) await tick()
  t.deepEqual(asked, [PIECE], 'the first piece was copied and is paid for; pieces equal on both (zeros) cost nothing')
  t.deepEqual(b.writes, [[0, PIECE]])
  // A write to the piece just copied, while the resync waits for its pace, goes through at once.
  await engine.write(0, Buffer.alloc(4096, 9))
  gate.resolve()
  await resyncing
  t.true(b.bytes.equals(a.bytes))
})
