/**
 * Snapshot layers in the block store (native/block_layers.cc): a store reads blocks absent
 * from its own files (crc 0) through frozen base layers, nearest first; writes and discards
 * go to its own files only; a read-only store refuses them. Merges: block-layers-merge.test.ts.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import test, { type ExecutionContext } from 'ava'
import { native, type NativeError, type StoreHandle } from '../../src/native/binding'
import { BS, closeStore, crcEntry, done, flushStore, openStore, storeFiles, writeStore } from '../helpers/native-store'
import { fileSha, flipByte, frozen, openLayered, readAll } from './layer-store'

const MiB = 1 << 20
const ZERO_CRC = native.crc32c(Buffer.alloc(BS))

const files = (t: ExecutionContext, size = 4 * MiB) => storeFiles(t, 'pxd-layers-', size)
const discard = (h: StoreHandle, offset: number, length: number) => done((cb) => native.storeDiscard(h, offset, length, cb))
const hashes = async (h: StoreHandle, offset: number, blocks: number) => {
  const out = Buffer.alloc(blocks * 8)
  await done((cb) => native.storeHashes(h, offset, out, cb))
  return out
}

test('the blocks of a base read through an empty live layer, at any alignment', async (t) => {
  const content = randomBytes(MiB + 123)
  const base = await frozen(t, 4 * MiB, [[3 * BS + 7, content]])
  const h = await openLayered(t, files(t), { create: true, bases: [base] })
  const want = Buffer.alloc(4 * MiB)
  content.copy(want, 3 * BS + 7)
  t.true((await readAll(h, 0, 4 * MiB)).equals(want))
  for (const [offset, length] of [[3 * BS + 7, 10], [BS - 1, 2 * BS + 2], [3 * BS + 7 + MiB, 300]] as const) {
    t.true((await readAll(h, offset, length)).equals(want.subarray(offset, offset + length)), `${offset}+${length}`)
  }
})

test('writes go to the live layer only; a partial write over a base block merges with its bytes', async (t) => {
  const content = randomBytes(MiB)
  const base = await frozen(t, 4 * MiB, [[0, content]])
  const before = [fileSha(base.data), fileSha(base.crc)]
  const live = files(t)
  const h = await openLayered(t, live, { create: true, bases: [base] })
  const want = Buffer.alloc(4 * MiB)
  content.copy(want)
  for (const [offset, length] of [[5 * BS + 10, 100], [10 * BS - 50, 100], [20 * BS, 3 * BS], [2 * MiB - 10, 20]] as const) {
    const bytes = randomBytes(length)
    await writeStore(h, offset, bytes)
    bytes.copy(want, offset)
  }
  await flushStore(h)
  t.true((await readAll(h, 0, 4 * MiB)).equals(want), 'the merged view')
  t.deepEqual([fileSha(base.data), fileSha(base.crc)], before, 'the base files are unchanged')
  t.is(crcEntry(live, 5), native.crc32c(want.subarray(5 * BS, 6 * BS)), 'the merged block is live')
  t.is(crcEntry(live, 6), 0, 'a block not written stays absent')
  await closeStore(h)
  const again = await openLayered(t, live, { bases: [base] })
  t.true((await readAll(again, 0, 4 * MiB)).equals(want), 'reopened')
})

test('zeros written over a base block read as zeros, not the base, and store the crc of zeros', async (t) => {
  const base = await frozen(t, 4 * MiB, [[0, randomBytes(16 * BS)]])
  const live = files(t)
  const h = await openLayered(t, live, { create: true, bases: [base] })
  await writeStore(h, 2 * BS, Buffer.alloc(2 * BS))
  await writeStore(h, 8 * BS + 100, Buffer.alloc(BS - 100)) // the rest of block 8
  t.true((await readAll(h, 2 * BS, 2 * BS)).equals(Buffer.alloc(2 * BS)))
  t.is(crcEntry(live, 2), ZERO_CRC)
  t.is(crcEntry(live, 3), ZERO_CRC)
  const block8 = await readAll(h, 8 * BS, BS)
  t.true(block8.subarray(100).equals(Buffer.alloc(BS - 100)))
  await closeStore(h)
  const again = await openLayered(t, live, { bases: [base] })
  t.true((await readAll(again, 2 * BS, 2 * BS)).equals(Buffer.alloc(2 * BS)), 'reopened')
})

test('a discard over base blocks reads zeros, and the base keeps its bytes', async (t) => {
  const content = randomBytes(MiB)
  const base = await frozen(t, 4 * MiB, [[0, content]])
  const before = fileSha(base.data)
  const live = files(t)
  const h = await openLayered(t, live, { create: true, bases: [base] })
  await writeStore(h, 40 * BS, randomBytes(4 * BS)) // live data under part of the discard
  const from = 3 * BS + 100
  const to = 100 * BS + 7
  await discard(h, from, to - from)
  const want = Buffer.from(content)
  want.fill(0, from, to)
  t.true((await readAll(h, 0, MiB)).equals(want))
  for (const b of [4, 41, 99]) t.is(crcEntry(live, b), ZERO_CRC, `whole block ${b} is a present zero`)
  t.is(fileSha(base.data), before)
  await closeStore(h)
  const again = await openLayered(t, live, { bases: [base] })
  t.true((await readAll(again, 0, MiB)).equals(want), 'reopened')
})

test('a base smaller than the store reads as zeros past its end; a larger one is refused', async (t) => {
  const content = randomBytes(MiB)
  const base = await frozen(t, MiB, [[0, content]])
  const h = await openLayered(t, files(t), { create: true, bases: [base] })
  const all = await readAll(h, 0, 4 * MiB)
  t.true(all.subarray(0, MiB).equals(content))
  t.true(all.subarray(MiB).equals(Buffer.alloc(3 * MiB)))
  t.true((await readAll(h, MiB - 10, 20)).equals(Buffer.concat([content.subarray(MiB - 10), Buffer.alloc(10)])), 'across its end')
  await writeStore(h, MiB - 100, Buffer.alloc(200, 7)) // a partial write on either side of it
  t.true((await readAll(h, MiB - BS, 2 * BS)).equals(Buffer.concat([content.subarray(MiB - BS, MiB - 100), Buffer.alloc(200, 7), Buffer.alloc(BS - 100)])))

  const big = await frozen(t, 8 * MiB, [])
  await t.throwsAsync<NativeError>(openLayered(t, files(t), { create: true, bases: [big] }), { code: 'EINVAL', message: /more than the store/ })
  const odd = files(t)
  fs.writeFileSync(odd.data, Buffer.alloc(BS))
  fs.writeFileSync(odd.crc, Buffer.alloc(6))
  await t.throwsAsync<NativeError>(openLayered(t, files(t), { create: true, bases: [odd] }), { code: 'EINVAL' })
  await t.throwsAsync<NativeError>(openLayered(t, files(t), { create: true, bases: [{ ...base, crc: `${base.crc}.nope` }] }), { code: 'ENOENT' })
})

test('two bases: the nearest wins; a zero written in the nearer one hides the older block', async (t) => {
  const a = randomBytes(10 * BS)
  const b = randomBytes(10 * BS)
  const older = await frozen(t, 4 * MiB, [[0, a]])
  // The nearer base was itself a live layer over the older one: its block 3 is a present zero.
  const nearer = await frozen(t, 4 * MiB, [[5 * BS, b], [3 * BS, Buffer.alloc(BS)]], [older])
  const h = await openLayered(t, files(t), { create: true, bases: [nearer, older] })
  const want = Buffer.alloc(4 * MiB)
  a.copy(want)
  b.copy(want, 5 * BS)
  want.fill(0, 3 * BS, 4 * BS)
  t.true((await readAll(h, 0, 4 * MiB)).equals(want))
  t.true((await readAll(h, 2 * BS + 5, 5 * BS)).equals(want.subarray(2 * BS + 5, 7 * BS + 5)), 'a range drawing on every layer')
})

test('hashes of the layered view equal those of a flat store with the same bytes; zeros hash to 0', async (t) => {
  const size = 4 * MiB
  const baseWrites: Array<[number, Buffer]> = [[0, randomBytes(300 * BS)], [600 * BS, randomBytes(10 * BS)]]
  const base = await frozen(t, size, baseWrites)
  const h = await openLayered(t, files(t), { create: true, bases: [base] })
  const flat = await openStore(t, files(t, size), true)
  for (const [offset, bytes] of baseWrites) await writeStore(flat, offset, bytes)
  const liveWrites: Array<[number, Buffer]> = [[10 * BS + 1, randomBytes(3 * BS)], [20 * BS, Buffer.alloc(2 * BS)], [700 * BS, randomBytes(BS)]]
  for (const [offset, bytes] of liveWrites) {
    await writeStore(h, offset, bytes)
    await writeStore(flat, offset, bytes)
  }
  await discard(h, 250 * BS, 20 * BS)
  await discard(flat, 250 * BS, 20 * BS)
  const blocks = size / BS
  t.true((await readAll(h, 0, size)).equals(await readAll(flat, 0, size)), 'the same bytes')
  const layered = await hashes(h, 0, blocks)
  t.true(layered.equals(await hashes(flat, 0, blocks)), 'the same hashes')
  for (const b of [20, 21, 255, 400, 1000]) t.is(layered.readBigUInt64LE(b * 8), 0n, `zero block ${b}`)
  for (const b of [0, 11, 299, 605, 700]) t.not(layered.readBigUInt64LE(b * 8), 0n, `block ${b}`)
  t.true((await hashes(h, 256 * BS, 300)).equals(layered.subarray(256 * 8, 556 * 8)), 'a range starting inside a chunk')
})

test('a read-only store reads through its bases and refuses writes, discards and merges (EROFS)', async (t) => {
  const a = randomBytes(8 * BS)
  const parent = await frozen(t, 4 * MiB, [[0, a]])
  const b = randomBytes(2 * BS)
  const snap = await frozen(t, 4 * MiB, [[2 * BS, b]], [parent])
  const shas = [fileSha(snap.data), fileSha(snap.crc), fileSha(parent.data)]
  const h = await openLayered(t, snap, { readOnly: true, bases: [parent] })
  const want = Buffer.alloc(8 * BS)
  a.copy(want)
  b.copy(want, 2 * BS)
  t.true((await readAll(h, 0, 8 * BS)).equals(want))
  await t.throwsAsync<NativeError>(writeStore(h, 0, Buffer.alloc(BS)), { code: 'EROFS' })
  await t.throwsAsync<NativeError>(writeStore(h, 10, Buffer.alloc(10)), { code: 'EROFS' })
  await t.throwsAsync<NativeError>(discard(h, 0, BS), { code: 'EROFS' })
  await t.throwsAsync<NativeError>(done((cb) => native.storeMergeBase(h, cb)), { code: 'EROFS' })
  await flushStore(h)
  t.deepEqual(native.storeRecovery(h), { regions: 0, blocks: 0 })
  await closeStore(h)
  t.deepEqual([fileSha(snap.data), fileSha(snap.crc), fileSha(parent.data)], shas, 'nothing was written')

  await t.throwsAsync<NativeError>(openLayered(t, files(t), { create: true, readOnly: true }), { code: 'EINVAL' })
  // A read-only open needs no intent file.
  fs.rmSync(snap.intent)
  const again = await openLayered(t, snap, { readOnly: true, bases: [parent] })
  t.true((await readAll(again, 0, 8 * BS)).equals(want))
  t.false(fs.existsSync(snap.intent), 'and makes none')
})

test('a corrupt base block reads as ECHECKSUM naming the base; a partial write over it is refused', async (t) => {
  const base = await frozen(t, 4 * MiB, [[0, randomBytes(8 * BS)]])
  flipByte(base.data, 5 * BS + 9)
  const h = await openLayered(t, files(t), { create: true, bases: [base] })
  const err = await t.throwsAsync<NativeError>(readAll(h, 4 * BS, 3 * BS), { code: 'ECHECKSUM' })
  t.is(err?.block, 5)
  t.is(err?.path, base.data)
  await t.throwsAsync<NativeError>(writeStore(h, 5 * BS + 100, Buffer.alloc(10, 1)), { code: 'ECHECKSUM' })
  await t.throwsAsync<NativeError>(discard(h, 5 * BS + 100, 10), { code: 'ECHECKSUM' })
  t.true((await readAll(h, 0, 5 * BS)).length === 5 * BS, 'the blocks around it read')
  await writeStore(h, 5 * BS, Buffer.alloc(BS, 3)) // a whole block over it needs no old bytes
  t.true((await readAll(h, 5 * BS, BS)).equals(Buffer.alloc(BS, 3)))
})

test('argument types are checked synchronously', (t) => {
  const cb = () => t.fail('callback must not run')
  const loose = native as unknown as Record<string, (...args: unknown[]) => unknown>
  const bad: Array<[string, unknown[]]> = [
    ['storeOpenLayered', ['/a', '/b', '/c', MiB, BS, false, 'no', [], cb]],
    ['storeOpenLayered', ['/a', '/b', '/c', MiB, BS, false, false, ['/only-data'], cb]],
    ['storeOpenLayered', ['/a', '/b', '/c', MiB, BS, false, false, ['/d', 7], cb]],
    ['storeOpenLayered', ['/a', '/b', '/c', MiB, BS, false, false, '/d', cb]],
    ['storeOpenLayered', ['/a', '/b', '/c', MiB, BS, false, false, []]],
    ['storeMergeBase', [{}, cb]],
    ['layerMerge', ['/a', '/b', '/c', 4, BS, cb]],
    ['layerMerge', ['/a', '/b', '/c', '/d', BS]],
  ]
  for (const [fn, args] of bad) t.throws(() => loose[fn]!(...args), { instanceOf: TypeError }, fn)
})

test('hashes with data over layers return the blocks as they read, checked in the base they come from', async (t) => {
  const base = await frozen(t, 4 * MiB, [[0, randomBytes(2 * MiB)]])
  const h = await openLayered(t, files(t), { create: true, bases: [base] })
  await writeStore(h, MiB - BS, randomBytes(3 * BS))
  await writeStore(h, 3 * MiB, randomBytes(BS))
  const data = Buffer.alloc(4 * MiB, 0xee)
  const hashes = Buffer.alloc((4 * MiB / BS) * 8)
  await done((cb) => native.storeHashes(h, 0, hashes, cb, data))
  t.true(data.equals(await readAll(h, 0, 4 * MiB)), 'the data as read returns it')
  const alone = Buffer.alloc(hashes.length)
  await done((cb) => native.storeHashes(h, 0, alone, cb))
  t.true(hashes.equals(alone), 'the hashes as without data')
  flipByte(base.data, 5 * BS + 3)
  const err = await t.throwsAsync(done((cb) => native.storeHashes(h, 0, Buffer.alloc(64 * 8), cb, Buffer.alloc(64 * BS))))
  t.is((err as NativeError).code, 'ECHECKSUM', 'a rotten block in the base fails the read with data')
  await t.notThrowsAsync(done((cb) => native.storeHashes(h, 0, Buffer.alloc(64 * 8), cb)), 'hashes alone do not check')
  await t.throwsAsync(done((cb) => native.storeHashes(h, 0, Buffer.alloc(64 * 8), cb, Buffer.alloc(63 * BS))), { message: /data buffer/ })
})
