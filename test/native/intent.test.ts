/**
 * The store's write-intent map (native/block_store.h, IntentMap): a block whose data was
 * written but whose crc was not, because a crash fell between the two, must read back as
 * its data after the next open (never ECHECKSUM), while a block that fails its crc in a
 * region that was not being written is still reported. The crash is storeAbandon: the
 * files are closed with the marks left, as a killed process leaves them; the tear is made
 * by writing the data file directly, as the cut-short write would have.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import test, { type ExecutionContext } from 'ava'
import { native, type NativeError, type StoreHandle } from '../../src/native/binding'
import { abandonStore, BS, closeStore, crcEntry, flushStore, openStore, readStore, storeFiles, writeStore, type StoreFiles } from '../helpers/native-store'

const MiB = 1 << 20
const REGION = MiB
const HEADER = 16

type Store = StoreFiles
const store = (t: ExecutionContext, size = 4 * MiB): Store => storeFiles(t, 'pxd-intent-', size)
const open = openStore
const write = writeStore
const read = readStore
const flush = flushStore
const close = closeStore
const abandon = abandonStore

async function readBlock(h: StoreHandle, block: number): Promise<Buffer> {
  const buf = Buffer.alloc(BS)
  await read(h, block * BS, buf)
  return buf
}

/** The regions the intent file marks. */
function marked(s: Store): number[] {
  const bytes = fs.readFileSync(s.intent)
  const out: number[] = []
  for (let r = 0; r < bytes.length - HEADER; r++) if (bytes[HEADER + r] !== 0) out.push(r)
  return out
}

function patch(file: string, offset: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'r+')
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offset)
  } finally {
    fs.closeSync(fd)
  }
}

const blockOf = (region: number, i: number) => (region * REGION) / BS + i

test('a new store has an empty intent map of one byte per MiB after a header, mode 0600', async (t) => {
  const s = store(t, 3 * MiB + 8 * BS)
  const h = await open(t, s, true)
  t.is(fs.statSync(s.intent).size, HEADER + 4, 'four regions, the last one partial')
  t.is(fs.statSync(s.intent).mode & 0o777, 0o600)
  t.deepEqual(marked(s), [])
  t.deepEqual(native.storeRecovery(h), { regions: 0, blocks: 0 })
  await t.throwsAsync(open(t, s, true), { code: 'EEXIST' })
})

test('a write marks its regions before it returns; a write across a region edge marks both', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  await write(h, 2 * REGION + 5 * BS, randomBytes(BS))
  t.deepEqual(marked(s), [2])
  await write(h, REGION - BS, randomBytes(2 * BS))
  t.deepEqual(marked(s), [0, 1, 2])
  // A flush does not clear them at once: a hot region is marked once.
  await flush(h)
  t.deepEqual(marked(s), [0, 1, 2])
})

test('a clean close clears every mark, also of writes never flushed; the next open recovers nothing', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  const payload = randomBytes(3 * BS)
  await write(h, 0, payload)
  await flush(h)
  await write(h, 3 * REGION, payload)
  t.deepEqual(marked(s), [0, 3])
  await close(h)
  t.deepEqual(marked(s), [])
  const again = await open(t, s)
  t.deepEqual(native.storeRecovery(again), { regions: 0, blocks: 0 })
  t.deepEqual(await readBlock(again, blockOf(3, 1)), payload.subarray(BS, 2 * BS))
})

test('after a flush, marks of regions idle long enough are cleared', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  native.storeSetIntentIdle(h, 0)
  await write(h, REGION, randomBytes(BS))
  t.deepEqual(marked(s), [1])
  await flush(h)
  t.deepEqual(marked(s), [], 'cleared by the flush that covered the write')
  await write(h, REGION + BS, randomBytes(BS))
  t.deepEqual(marked(s), [1], 'marked again by the next write')
  // A flush with nothing to sync clears too, once the writes are flushed.
  await flush(h)
  await flush(h)
  t.deepEqual(marked(s), [])
})

test('a crash between data and crc: the torn block reads back as its data, a torn block elsewhere is still ECHECKSUM', async (t) => {
  const s = store(t)
  let h = await open(t, s, true)
  const old = randomBytes(BS)
  const rotten = blockOf(2, 7)
  await write(h, rotten * BS, old)
  await write(h, blockOf(0, 3) * BS, old)
  await close(h)

  // The next run writes into regions 0 and 3, then dies.
  h = await open(t, s)
  await write(h, blockOf(0, 3) * BS, randomBytes(BS))
  await write(h, blockOf(3, 0) * BS, randomBytes(BS))
  await abandon(h)
  t.deepEqual(marked(s), [0, 3], 'the crash left the marks')
  // Data written, crc not (as a write cut short leaves them): two torn blocks in marked
  // regions, one of them now all zeros; and a rotten block in region 2, never marked.
  const torn = randomBytes(BS)
  patch(s.data, blockOf(0, 3) * BS, torn)
  patch(s.data, blockOf(3, 0) * BS, Buffer.alloc(BS))
  const rot = Buffer.from(old)
  rot[100] = rot[100]! ^ 0x40
  patch(s.data, rotten * BS, rot)

  h = await open(t, s)
  t.deepEqual(native.storeRecovery(h), { regions: 2, blocks: 2 })
  t.deepEqual(marked(s), [], 'the recovered marks are cleared')
  t.deepEqual(await readBlock(h, blockOf(0, 3)), torn, 'the torn block reads as the data that reached the file')
  t.deepEqual(await readBlock(h, blockOf(3, 0)), Buffer.alloc(BS))
  t.is(crcEntry(s, blockOf(0, 3)), native.crc32c(torn), 'a rebuilt crc is the crc32c of the data')
  t.is(crcEntry(s, blockOf(3, 0)), 0, 'and 0 for a block of zeros, as resync expects')
  const err = await t.throwsAsync<NativeError>(readBlock(h, rotten), { code: 'ECHECKSUM' })
  t.is(err?.block, rotten, 'bit rot outside the marked regions is still found')
})

test('a torn partial-block write: the untorn blocks of a marked region are left alone', async (t) => {
  const s = store(t, 2 * MiB)
  let h = await open(t, s, true)
  const content = randomBytes(REGION)
  await write(h, 0, content)
  await close(h)
  const crcsBefore = fs.readFileSync(s.crc)

  h = await open(t, s)
  await write(h, 10 * BS + 100, Buffer.alloc(50, 0xaa)) // a partial-block write, cut short
  await abandon(h)
  const torn = Buffer.from(content.subarray(10 * BS, 11 * BS))
  torn.fill(0xaa, 100, 150)
  patch(s.data, 10 * BS, torn)
  patch(s.crc, 10 * 4, crcsBefore.subarray(10 * 4, 11 * 4)) // the crc never reached the file

  h = await open(t, s)
  t.deepEqual(native.storeRecovery(h), { regions: 1, blocks: 1 })
  t.deepEqual(await readBlock(h, 10), torn)
  const crcsAfter = fs.readFileSync(s.crc)
  for (let b = 0; b < REGION / BS; b++) {
    if (b !== 10) t.is(crcsAfter.readUInt32LE(b * 4), crcsBefore.readUInt32LE(b * 4), `block ${b} untouched`)
  }
})

test('a crash with nothing torn recovers the marked regions and rebuilds nothing', async (t) => {
  const s = store(t)
  let h = await open(t, s, true)
  const payload = randomBytes(2 * BS)
  await write(h, REGION + 5, payload)
  await abandon(h)
  h = await open(t, s)
  t.deepEqual(native.storeRecovery(h), { regions: 1, blocks: 0 })
  const back = Buffer.alloc(payload.length)
  await read(h, REGION + 5, back)
  t.deepEqual(back, payload)
})

test('a replica without an intent file (made before it existed) gets an empty one', async (t) => {
  const s = store(t)
  let h = await open(t, s, true)
  const payload = randomBytes(BS)
  await write(h, 0, payload)
  await close(h)
  fs.rmSync(s.intent)
  h = await open(t, s)
  t.deepEqual(native.storeRecovery(h), { regions: 0, blocks: 0 })
  t.is(fs.statSync(s.intent).size, HEADER + 4)
  t.deepEqual(await readBlock(h, 0), payload)
  await write(h, 2 * REGION, payload)
  t.deepEqual(marked(s), [2])
})

test('an intent file that is not a map makes the open check every region, then rewrites it', async (t) => {
  const s = store(t)
  let h = await open(t, s, true)
  await write(h, 3 * REGION, randomBytes(BS))
  await close(h)
  const torn = randomBytes(BS)
  patch(s.data, 3 * REGION, torn)
  fs.writeFileSync(s.intent, 'garbage')
  h = await open(t, s)
  t.deepEqual(native.storeRecovery(h), { regions: 4, blocks: 1 })
  t.deepEqual(await readBlock(h, blockOf(3, 0)), torn)
  t.is(fs.statSync(s.intent).size, HEADER + 4)
  t.deepEqual(marked(s), [])
})

test('concurrent writes and flushes that clear marks: a write after the last flush always leaves its region marked', async (t) => {
  const s = store(t, 16 * MiB)
  const h = await open(t, s, true)
  native.storeSetIntentIdle(h, 0)
  for (let round = 0; round < 5; round++) {
    // Marks and clears race: writes all over, flushes clearing between them.
    const ops: Array<Promise<void>> = []
    for (let i = 0; i < 200; i++) {
      ops.push(write(h, ((i * 7 + round) % 16) * REGION + (i % 256) * BS, randomBytes(BS)))
      if (i % 10 === 0) ops.push(flush(h))
    }
    await Promise.all(ops)
    // No flush can cover these: each region they touch must be marked now.
    const regions = [round, round + 5, round + 10]
    await Promise.all(regions.map((r) => write(h, r * REGION + round * BS, randomBytes(BS))))
    const now = marked(s)
    for (const r of regions) t.true(now.includes(r), `round ${round}: region ${r} is marked (marked: ${now.join(',')})`)
    await flush(h)
    await flush(h)
    t.deepEqual(marked(s), [], `round ${round}: all cleared once flushed`)
  }
  await abandon(h)
  const again = await open(t, s)
  t.deepEqual(native.storeRecovery(again), { regions: 0, blocks: 0 })
})
