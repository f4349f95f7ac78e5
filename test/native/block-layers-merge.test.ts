/**
 * Merging snapshot layers (native/block_merge.cc): storeMergeBase copies the nearest
 * base's blocks into a live store without losing a racing write, layerMerge does the same
 * for two frozen layers' files, and a layered store recovers torn writes to old or new.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import test, { type ExecutionContext } from 'ava'
import { native, type NativeError, type StoreHandle } from '../../src/native/binding'
import { abandonStore, BS, closeStore, crcEntry, done, storeFiles, writeStore, type StoreFiles } from '../helpers/native-store'
import { fileSha, flipByte, frozen, openLayered, readAll } from './layer-store'

const MiB = 1 << 20

const files = (t: ExecutionContext, size = 4 * MiB) => storeFiles(t, 'pxd-merge-', size)
const mergeBase = (h: StoreHandle) => done((cb) => native.storeMergeBase(h, cb))
const layerMerge = (from: StoreFiles, into: StoreFiles, blockSize = BS) =>
  done((cb) => native.layerMerge(from.data, from.crc, into.data, into.crc, blockSize, cb))
const discard = (h: StoreHandle, offset: number, length: number) => done((cb) => native.storeDiscard(h, offset, length, cb))

/** What a layer reads as over `bases`, opened read-only. */
async function view(t: ExecutionContext, s: StoreFiles, bases: StoreFiles[]): Promise<Buffer> {
  const h = await openLayered(t, s, { readOnly: true, bases })
  const all = await readAll(h, 0, s.size)
  await closeStore(h)
  return all
}

function patch(file: string, offset: number, bytes: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  fs.writeSync(fd, bytes, 0, bytes.length, offset)
  fs.closeSync(fd)
}

// Serial: the other tests' requests on the thread pool would leave the writes few turns.
test.serial('storeMergeBase copies the base into the live layer; writes racing it are never overwritten', async (t) => {
  const size = 32 * MiB
  const content = randomBytes(size)
  const base = await frozen(t, size, [[0, content]])
  const live = files(t, size)
  const h = await openLayered(t, live, { create: true, bases: [base] })
  const want = Buffer.from(content)
  const early = randomBytes(3 * BS)
  await writeStore(h, 100 * BS, early)
  early.copy(want, 100 * BS)

  let merged = false
  const merge = mergeBase(h).then(() => (merged = true))
  let racing = 0
  let seed = 1
  while (!merged) {
    // Blocks the merge has still to copy or has copied, whole or partial.
    seed = (seed * 48271) % 2147483647
    const block = seed % (size / BS)
    const partial = seed % 3 === 0
    const offset = block * BS + (partial ? 100 : 0)
    const bytes = randomBytes(partial ? 200 : BS)
    await writeStore(h, offset, bytes)
    bytes.copy(want, offset)
    racing++
  }
  await merge
  t.true(racing > 0, `${racing} writes ran during the merge`)
  t.true((await readAll(h, 0, size)).equals(want), 'the layered view')
  await closeStore(h)
  t.true((await view(t, live, [])).equals(want), 'the live layer alone reads the same')
})

test('storeMergeBase merges the nearest of two bases, which then leaves the chain; a second merges the other', async (t) => {
  const older = await frozen(t, 2 * MiB, [[0, randomBytes(2 * MiB)]])
  const nearer = await frozen(t, 3 * MiB, [[MiB, randomBytes(MiB)], [10 * BS, Buffer.alloc(BS)], [2 * MiB, randomBytes(BS)]], [older])
  const live = files(t)
  const h = await openLayered(t, live, { create: true, bases: [nearer, older] })
  await writeStore(h, MiB + 5 * BS, randomBytes(BS + 10))
  await discard(h, 20 * BS, 2 * BS)
  const before = await readAll(h, 0, 4 * MiB)
  const shas = [fileSha(nearer.data), fileSha(nearer.crc)]
  await mergeBase(h)
  t.true((await readAll(h, 0, 4 * MiB)).equals(before), 'the view does not change')
  t.is(crcEntry(live, 10), native.crc32c(Buffer.alloc(BS)), "the nearer base's zero block came along")
  t.is(crcEntry(live, 0), 0, "the older base's blocks did not")
  t.deepEqual([fileSha(nearer.data), fileSha(nearer.crc)], shas, 'the merged base is unchanged')
  t.true((await view(t, live, [older])).equals(before), 'without the merged base')
  // The merged base left the chain: the next merge takes the older one.
  await mergeBase(h)
  t.true((await readAll(h, 0, 4 * MiB)).equals(before), 'the view does not change')
  t.not(crcEntry(live, 0), 0, "the older base's blocks came along")
  await t.throwsAsync<NativeError>(mergeBase(h), { code: 'EINVAL' })
  await closeStore(h)
  t.true((await view(t, live, [])).equals(before), 'the live files alone')

  const plain = await openLayered(t, files(t), { create: true })
  await t.throwsAsync<NativeError>(mergeBase(plain), { code: 'EINVAL' })
})

test('layerMerge folds a parent into its child: the child alone reads as the two did', async (t) => {
  const parent = await frozen(t, 2 * MiB, [[0, randomBytes(2 * MiB)]])
  const child = await frozen(t, 4 * MiB, [[MiB + 7, randomBytes(3 * BS)], [5 * BS, Buffer.alloc(2 * BS)], [3 * MiB, randomBytes(BS)]], [parent])
  const before = await view(t, child, [parent])
  const parentShas = [fileSha(parent.data), fileSha(parent.crc)]
  await layerMerge(parent, child)
  t.true((await view(t, child, [])).equals(before))
  t.is(crcEntry(child, 0), crcEntry(parent, 0), "a parent block's crc came along")
  t.deepEqual([fileSha(parent.data), fileSha(parent.crc)], parentShas)
  await layerMerge(parent, child) // again: nothing left to copy
  t.true((await view(t, child, [])).equals(before))
})

test('layerMerge in the middle of a chain: the child then reads through the grandparent alone', async (t) => {
  const grand = await frozen(t, 4 * MiB, [[0, randomBytes(MiB)]])
  const parent = await frozen(t, 4 * MiB, [[MiB / 2, randomBytes(MiB)], [4 * BS, Buffer.alloc(BS)]], [grand])
  const child = await frozen(t, 4 * MiB, [[MiB, randomBytes(MiB)]], [parent, grand])
  const before = await view(t, child, [parent, grand])
  await layerMerge(parent, child)
  t.true((await view(t, child, [grand])).equals(before))
})

test('layerMerge refuses a smaller target, a bad block size, a corrupt source block', async (t) => {
  const small = await frozen(t, MiB, [])
  const big = await frozen(t, 2 * MiB, [[0, randomBytes(16 * BS)]])
  const child = await frozen(t, 2 * MiB, [], [big])
  await t.throwsAsync<NativeError>(layerMerge(big, small), { code: 'EINVAL' })
  await t.throwsAsync<NativeError>(layerMerge(big, child, 1000), { code: 'EINVAL' })
  await t.throwsAsync<NativeError>(layerMerge({ ...big, crc: `${big.crc}.nope` }, child), { code: 'ENOENT' })
  flipByte(big.data, 9 * BS + 1)
  const err = await t.throwsAsync<NativeError>(layerMerge(big, child), { code: 'ECHECKSUM' })
  t.is(err?.block, 9)
  t.is(err?.path, big.data)
  t.is(crcEntry(child, 0), 0, 'no crc entry was written')
  flipByte(big.data, 9 * BS + 1)
  t.true((await view(t, child, [big])).equals(await view(t, big, [])), 'the child reads as before')
})

test('a layerMerge cut after the data: blocks with crc 0 in the child still read from the parent', async (t) => {
  const content = randomBytes(8 * BS)
  const parent = await frozen(t, MiB, [[0, content]])
  const child = await frozen(t, MiB, [[BS, randomBytes(BS)]], [parent])
  const before = await view(t, child, [parent])
  patch(child.data, 0, content.subarray(0, BS)) // the copy's data landed, its crc did not
  patch(child.data, 3 * BS, randomBytes(BS)) // or other bytes: never read while crc 0
  t.true((await view(t, child, [parent])).equals(before))
})

test('recovery in a layered store: torn writes read back as their old (the base) or new contents', async (t) => {
  const content = randomBytes(MiB)
  const base = await frozen(t, MiB, [[0, content]])
  const live = files(t, 2 * MiB)
  let h = await openLayered(t, live, { create: true, bases: [base] })
  const writes: Array<[number, Buffer]> = [
    [0, randomBytes(4 * BS)], // blocks 0-3 over the base
    [10 * BS, Buffer.alloc(BS)], // zeros over a base block
    [20 * BS + 100, randomBytes(BS)], // partial blocks 20 and 21
    [MiB + 3 * BS, randomBytes(BS)], // past the base's end
  ]
  const want = Buffer.alloc(2 * MiB)
  content.copy(want)
  for (const [offset, bytes] of writes) {
    await writeStore(h, offset, bytes)
    bytes.copy(want, offset)
  }
  await abandonStore(h)
  const old = Buffer.alloc(2 * MiB)
  content.copy(old)
  // Block 1: its crc landed, its data did not (a hole); block 2: the reverse.
  patch(live.data, BS, Buffer.alloc(BS))
  patch(live.crc, 2 * 4, Buffer.alloc(4))
  // Block 20 (merged with the base's bytes): data landed, the crc is garbage.
  patch(live.crc, 20 * 4, Buffer.from([1, 2, 3, 4]))

  h = await openLayered(t, live, { bases: [base] })
  const r = native.storeRecovery(h)
  t.true(r.regions >= 1)
  t.is(r.blocks, 3)
  t.is(crcEntry(live, 1), 0, 'the block whose data never landed is absent again')
  const got = await readAll(h, 0, 2 * MiB)
  for (let b = 0; b < (2 * MiB) / BS; b++) {
    const s = got.subarray(b * BS, (b + 1) * BS)
    const isOld = s.equals(old.subarray(b * BS, (b + 1) * BS))
    const isNew = s.equals(want.subarray(b * BS, (b + 1) * BS))
    if (!isOld && !isNew) return t.fail(`block ${b} reads as neither its old nor its new contents`)
  }
  t.true(got.subarray(BS, 2 * BS).equals(content.subarray(BS, 2 * BS)), 'block 1: old')
  t.true(got.subarray(2 * BS, 3 * BS).equals(want.subarray(2 * BS, 3 * BS)), 'block 2: new')
  t.true(got.subarray(20 * BS, 21 * BS).equals(want.subarray(20 * BS, 21 * BS)), 'block 20: new')
  t.true(got.subarray(10 * BS, 11 * BS).equals(Buffer.alloc(BS)), 'the zeros written stay zeros')
})
