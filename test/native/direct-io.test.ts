// Large transfers of a store bypass the page cache (native/direct_io.h): what
// goes direct reads back the same as what goes buffered, from any buffer
// address, mixed with small buffered writes; the page cache stays empty of it;
// and a file system without O_DIRECT keeps the store working, buffered.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import test from 'ava'
import { native } from '../../src/native/binding'
import { BS, done, openStore, readStore, storeFiles, writeStore, flushStore } from '../helpers/native-store'

const MiB = 1 << 20

/** Bytes of `file` in the page cache. */
function cachedBytes(file: string): number {
  return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]).toString().trim())
}

/** `len` bytes at `skew` bytes into a larger buffer: an address the device may not take as it is. */
function at(skew: number, len: number): Buffer {
  return Buffer.alloc(len + skew).subarray(skew)
}

test('large transfers round-trip from buffers at any address, mixed with small ones', async (t) => {
  const s = storeFiles(t, 'pxd-direct-', 16 * MiB)
  const h = await openStore(t, s, true)
  const expect = Buffer.alloc(16 * MiB)
  const put = async (offset: number, data: Buffer) => {
    await writeStore(h, offset, data)
    data.copy(expect, offset)
  }
  for (const [skew, offset, len] of [[0, 0, 64 * 1024], [1, MiB, MiB + BS], [512, 3 * MiB, 3 * MiB], [7, 8 * MiB + BS, 2 * MiB]] as const) {
    const data = at(skew, len)
    randomBytes(len).copy(data)
    await put(offset, data)
  }
  // Small buffered writes inside ranges just written direct, and a partial block.
  await put(MiB + 5 * BS, randomBytes(BS))
  await put(3 * MiB + 100, randomBytes(1000))
  for (const [skew, offset, len] of [[0, 0, 16 * MiB], [3, MiB, 2 * MiB], [512, 3 * MiB, 64 * 1024], [9, 8 * MiB, 4 * MiB]] as const) {
    const got = at(skew, len)
    await readStore(h, offset, got)
    t.true(got.equals(expect.subarray(offset, offset + len)), `${len} bytes at ${offset} (buffer skew ${skew})`)
  }
  // A direct write over a range that a small write left dirty in the cache wins (zeros
  // keep crc 0, so the range still counts as unwritten and the large write goes direct).
  await put(5 * MiB, Buffer.alloc(BS))
  t.is(cachedBytes(s.data) > 0, true, 'the small write is in the cache')
  await put(5 * MiB, randomBytes(MiB))
  const got = Buffer.alloc(BS)
  await readStore(h, 5 * MiB, got)
  t.true(got.equals(expect.subarray(5 * MiB, 5 * MiB + BS)), 'the direct write replaced the cached block')
  await flushStore(h)
})

test('a large write into unwritten blocks and the reads behind hashes bypass the cache; overwrites, small writes and reads do not', async (t) => {
  const s = storeFiles(t, 'pxd-direct-', 16 * MiB)
  const h = await openStore(t, s, true)
  await writeStore(h, 0, randomBytes(4 * MiB))
  await flushStore(h)
  t.is(cachedBytes(s.data), 0, 'direct: nothing of 4 MiB written into new blocks cached')
  await writeStore(h, 8 * MiB, randomBytes(BS))
  t.is(cachedBytes(s.data), BS, 'buffered: the small write is cached')
  const hashes = Buffer.alloc((4 * MiB / BS) * 8)
  await done((cb) => native.storeHashes(h, 0, hashes, cb))
  await done((cb) => native.storeHashes(h, 0, hashes, cb, Buffer.alloc(4 * MiB)))
  t.is(cachedBytes(s.data), BS, 'hashing 4 MiB, with its data or without, read it direct')
  await writeStore(h, 0, randomBytes(MiB))
  t.is(cachedBytes(s.data), BS + MiB, 'an overwrite of written blocks is buffered')
  await readStore(h, 2 * MiB, Buffer.alloc(2 * MiB))
  t.true(cachedBytes(s.data) >= BS + 3 * MiB, 'a read is buffered (the cache and readahead serve the volume)')
  // Half written, half new: not all unwritten, so buffered.
  await writeStore(h, 3 * MiB + MiB / 2, randomBytes(MiB))
  t.true(cachedBytes(s.data) >= BS + 3 * MiB + MiB / 2)
})

test('on a file system without O_DIRECT (ramfs) the store stays buffered and works', async (t) => {
  const s = storeFiles(t, 'pxd-direct-ramfs-', 8 * MiB)
  try {
    execFileSync('mount', ['-t', 'ramfs', 'ramfs', s.dir])
  } catch (err) {
    t.fail(`this test needs root to mount a ramfs on ${s.dir}: ${(err as Error).message}`)
    return
  }
  t.teardown(() => execFileSync('umount', [s.dir]))
  const h = await openStore(t, s, true)
  const data = randomBytes(4 * MiB)
  await writeStore(h, MiB, data)
  const got = Buffer.alloc(4 * MiB)
  await readStore(h, MiB, got)
  t.true(got.equals(data))
  t.is(cachedBytes(s.data) >= 4 * MiB, true, 'ramfs holds it in the cache: buffered')
  await flushStore(h)
})
