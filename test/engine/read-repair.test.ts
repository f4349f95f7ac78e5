import test from 'ava'
import { BLOCK_SIZE } from '../../src/constants'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { isPxdError } from '../../src/errors'
import { MemReplica, type BlockNaming } from './mem-replica'

const SIZE = 64 * BLOCK_SIZE
const VOLUME = '0123456789abcdef'

interface Repair { nodeId: string; offset: number; length: number; error: unknown; badBlock: number | undefined }

async function readThroughRot(naming: BlockNaming) {
  const a = new MemReplica('a', SIZE).fill(0, 8 * BLOCK_SIZE, 1)
  const b = new MemReplica('b', SIZE).fill(0, 8 * BLOCK_SIZE, 1)
  a.naming = naming
  a.corrupt(6)
  const repairs: Repair[] = []
  let failures = 0
  const engine = new VolumeEngine({
    volumeId: VOLUME,
    size: SIZE,
    replicas: [a, b],
    events: { checksumFailure: () => { failures++ }, repaired: () => undefined },
    onRepair: (nodeId, offset, length, error, badBlock) => repairs.push({ nodeId, offset, length, error, badBlock }),
  })
  const into = Buffer.alloc(4 * BLOCK_SIZE)
  await engine.read(4 * BLOCK_SIZE, into)
  return { a, b, into, repairs, failures }
}

test('a read of a rotten block is served from the next replica and repairs the bad one, naming the block from the error field', async (t) => {
  const { a, into, repairs, failures } = await readThroughRot('field')
  t.true(into.equals(Buffer.alloc(4 * BLOCK_SIZE, 1)), 'the right bytes, from b')
  t.deepEqual(repairs, [{ nodeId: 'a', offset: 4 * BLOCK_SIZE, length: 4 * BLOCK_SIZE, error: undefined, badBlock: 6 }])
  t.deepEqual(a.writes, [[4 * BLOCK_SIZE, 4 * BLOCK_SIZE]])
  t.is(failures, 1)
  await t.notThrowsAsync(a.read(0, Buffer.alloc(8 * BLOCK_SIZE)), 'a reads clean again')
})

test('the local store names the block in the cause (the addon error)', async (t) => {
  const { repairs } = await readThroughRot('cause')
  t.is(repairs[0]?.badBlock, 6)
})

test('the block is never read out of the message text', async (t) => {
  const { repairs } = await readThroughRot('text')
  t.is(repairs.length, 1)
  t.is(repairs[0]?.badBlock, undefined)
})

test('with no other replica a rotten read fails with the checksum error and returns no bytes', async (t) => {
  const a = new MemReplica('a', SIZE).fill(0, BLOCK_SIZE, 1)
  a.corrupt(0)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a] })
  const into = Buffer.alloc(BLOCK_SIZE)
  const err = await t.throwsAsync(engine.read(0, into))
  t.true(isPxdError(err, 'CHECKSUM_MISMATCH'))
  t.is(isPxdError(err) ? err.block : undefined, 0)
  t.true(into.equals(Buffer.alloc(BLOCK_SIZE)))
})
