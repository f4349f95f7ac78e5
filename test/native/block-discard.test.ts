/**
 * Discard in the block store (native/block_discard.cc): the range reads back as zeros,
 * whole blocks become unwritten (crc 0) and leave the data file as holes, the parts of
 * blocks at either end are zeroed and re-checksummed, and a discard cut short by a crash
 * leaves each block its old contents or zeros, never a checksum failure.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import test, { type ExecutionContext } from 'ava'
import { native, type NativeError, type StoreHandle } from '../../src/native/binding'
import { abandonStore, BS, crcEntry, done, flushStore, openStore, readStore, storeFiles, writeStore } from '../helpers/native-store'

const MiB = 1 << 20

const store = (t: ExecutionContext, size = 8 * MiB) => storeFiles(t, 'pxd-discard-', size)
const open = openStore
const write = writeStore
const flush = flushStore
const abandon = abandonStore
const discard = (h: StoreHandle, offset: number, length: number) => done((cb) => native.storeDiscard(h, offset, length, cb))

async function read(h: StoreHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length)
  await readStore(h, offset, buf)
  return buf
}

const allocated = (file: string) => fs.statSync(file).blocks * 512

test('a discard reads back as zeros; whole blocks get crc 0 and their space goes back to the host', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  const content = randomBytes(4 * MiB)
  await write(h, 0, content)
  await flush(h)
  const before = allocated(s.data)
  t.true(before >= 4 * MiB, `the written data is allocated (${before} bytes)`)

  // From inside block 3 to inside block 771: two partial blocks and 767 whole ones.
  const from = 3 * BS + 100
  const to = 771 * BS + 200
  await discard(h, from, to - from)
  await flush(h)

  const want = Buffer.from(content)
  want.fill(0, from, to)
  t.true((await read(h, 0, 4 * MiB)).equals(want), 'zeros in the range, the data around it unchanged')
  for (const b of [4, 400, 770]) t.is(crcEntry(s, b), 0, `whole block ${b} is unwritten`)
  t.is(crcEntry(s, 3), native.crc32c(want.subarray(3 * BS, 4 * BS)), 'the head block is re-checksummed')
  t.is(crcEntry(s, 771), native.crc32c(want.subarray(771 * BS, 772 * BS)), 'the tail block too')
  const freed = before - allocated(s.data)
  t.true(freed >= 767 * BS, `the whole blocks were punched out: ${freed} bytes freed`)
})

test('a discard inside one block zeroes just those bytes; discarding unwritten space is harmless', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  const block = randomBytes(BS)
  await write(h, 10 * BS, block)
  await discard(h, 10 * BS + 1000, 24)
  const want = Buffer.from(block)
  want.fill(0, 1000, 1024)
  t.true((await read(h, 10 * BS, BS)).equals(want))
  await discard(h, 2 * MiB, 2 * MiB)
  t.true((await read(h, 2 * MiB, 2 * MiB)).equals(Buffer.alloc(2 * MiB)))
  await discard(h, 0, 0)
})

test('a discard past the end is refused and changes nothing', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  const content = randomBytes(BS)
  await write(h, s.size - BS, content)
  await t.throwsAsync<NativeError>(discard(h, s.size - BS, 2 * BS), { code: 'ERANGE' })
  await t.throwsAsync<NativeError>(discard(h, -BS, BS), { code: 'ERANGE' })
  await t.throwsAsync<NativeError>(discard(h, 0, -1), { code: 'ERANGE' })
  t.true((await read(h, s.size - BS, BS)).equals(content))
})

test('a discard under a corrupt partial block reports the block and leaves it as it was', async (t) => {
  const s = store(t)
  const h = await open(t, s, true)
  await write(h, 5 * BS, randomBytes(BS))
  await flush(h)
  const fd = fs.openSync(s.data, 'r+')
  fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, 5 * BS + 7)
  fs.closeSync(fd)
  const err = await t.throwsAsync<NativeError>(discard(h, 5 * BS + 100, 100), { code: 'ECHECKSUM' })
  t.is(err?.block, 5)
})

test('a discard cut short by a crash: after the next open each block reads as its old data or zeros, never a checksum failure', async (t) => {
  const s = store(t)
  let h = await open(t, s, true)
  native.storeSetIntentIdle(h, 0) // a flush clears the write's marks at once: only the discard's are left
  const content = randomBytes(2 * MiB)
  await write(h, 0, content)
  await flush(h)
  await discard(h, 0, 2 * MiB)
  await abandon(h)
  // The punch reached the data file and the crc update did not, for the first half: what a
  // crash between the two leaves.
  const fd = fs.openSync(s.crc, 'r+')
  const oldCrcs = Buffer.alloc(256 * 4)
  for (let b = 0; b < 256; b++) oldCrcs.writeUInt32LE(native.crc32c(content.subarray(b * BS, (b + 1) * BS)), b * 4)
  fs.writeSync(fd, oldCrcs, 0, oldCrcs.length, 0)
  fs.closeSync(fd)

  h = await open(t, s)
  t.is(native.storeRecovery(h).regions, 2, 'the discard marked its two regions')
  t.true((await read(h, 0, 2 * MiB)).equals(Buffer.alloc(2 * MiB)), 'zeros throughout, no ECHECKSUM')
  t.is(crcEntry(s, 0), 0, 'a rebuilt crc of zeros is 0 (unwritten)')
})
