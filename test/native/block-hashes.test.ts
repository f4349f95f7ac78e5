/**
 * Block hashes (native/block_hashes.cc through ReplicaStore.readHashes): what replicas
 * compare. They must tell apart blocks whose crc32c is the same.
 */
import test, { type ExecutionContext } from 'ava'
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BLOCK_SIZE, HASH_BYTES } from '../../src/constants'
import { blockOf, isPxdError } from '../../src/errors'
import { ReplicaStore } from '../../src/store/replica-store'
import { selfChecksummedBlock } from '../helpers/self-checksummed'

const SIZE = 4 * 1024 * 1024

async function store(t: ExecutionContext): Promise<ReplicaStore> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-hashes-'))
  const s = await ReplicaStore.create(path.join(dir, 'r'), '0123456789abcdef', SIZE)
  t.teardown(async () => {
    await s.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return s
}

const hashOf = (hashes: Buffer, block: number) => hashes.subarray(block * HASH_BYTES, (block + 1) * HASH_BYTES).toString('hex')
const crcOf = (crcs: Buffer, block: number) => crcs.readUInt32LE(block * 4)

test('two blocks that end in their own crc32c share a stored crc but not a hash', async (t) => {
  const a = await store(t)
  const b = await store(t)
  await a.write(0, selfChecksummedBlock())
  await b.write(0, selfChecksummedBlock())
  t.is(crcOf(await a.readChecksums(0, BLOCK_SIZE), 0), crcOf(await b.readChecksums(0, BLOCK_SIZE), 0), 'the crc32c cannot tell them apart')
  t.not(hashOf(await a.readHashes(0, BLOCK_SIZE), 0), hashOf(await b.readHashes(0, BLOCK_SIZE), 0))
})

test('equal blocks hash equal wherever they are; unwritten and zero blocks hash to 0; the rest never does', async (t) => {
  const s = await store(t)
  const block = selfChecksummedBlock()
  // Past one hashing chunk (256 blocks) too, and with a block of zeros written in between.
  await s.write(BLOCK_SIZE, block)
  await s.write(300 * BLOCK_SIZE, block)
  await s.write(2 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE))
  const hashes = await s.readHashes(0, 512 * BLOCK_SIZE)
  t.is(hashes.length, 512 * HASH_BYTES)
  t.is(hashOf(hashes, 1), hashOf(hashes, 300))
  t.is(hashOf(hashes, 0), '0000000000000000', 'never written')
  t.is(hashOf(hashes, 2), '0000000000000000', 'written as zeros')
  t.not(hashOf(hashes, 1), '0000000000000000')
  t.is(hashOf(await s.readHashes(300 * BLOCK_SIZE, BLOCK_SIZE), 0), hashOf(hashes, 1), 'a range starting inside a chunk')
})

test('a hash range that is not block-aligned or runs past the end is refused', async (t) => {
  const s = await store(t)
  for (const [offset, length] of [[1, BLOCK_SIZE], [0, 100], [SIZE - BLOCK_SIZE, 2 * BLOCK_SIZE], [-BLOCK_SIZE, BLOCK_SIZE]] as const) {
    const err = await t.throwsAsync(s.readHashes(offset, length))
    t.true(isPxdError(err, 'INVALID_ARGUMENT'), `${offset}+${length}: ${err?.message}`)
  }
})

test('read with hashes returns the range as read does and the same hashes, in one pass; holes read as zeros', async (t) => {
  const s = await store(t)
  const data = Buffer.alloc(SIZE / 2)
  for (let b = 0; b < data.length / BLOCK_SIZE; b += 3) data.fill(b % 251 + 1, b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)
  await s.write(BLOCK_SIZE, data)
  const into = Buffer.alloc(SIZE, 0xee) // not zeros: holes must be filled
  const hashes = await s.readWithHashes(0, into)
  const read = Buffer.alloc(SIZE)
  await s.read(0, read)
  t.true(into.equals(read), 'the data as read returns it')
  t.true(hashes.equals(await s.readHashes(0, SIZE)), 'the hashes as readHashes returns them')
  await t.throwsAsync(s.readWithHashes(100, Buffer.alloc(BLOCK_SIZE)), { message: /block-aligned/ })
})

test('read with hashes checks the data: a rotten block fails with its number, as a read does', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-hashes-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const s = await ReplicaStore.create(path.join(dir, 'r'), '0123456789abcdef', SIZE)
  await s.write(0, Buffer.alloc(8 * BLOCK_SIZE, 7))
  await s.close()
  const dataFile = path.join(dir, 'r', 'data')
  const fd = openSync(dataFile, 'r+')
  writeSync(fd, Buffer.from([0x55]), 0, 1, 5 * BLOCK_SIZE + 17)
  closeSync(fd)
  const again = await ReplicaStore.open(path.join(dir, 'r'))
  t.teardown(() => again.close())
  const err = await t.throwsAsync(again.readWithHashes(0, Buffer.alloc(64 * BLOCK_SIZE)))
  t.true(isPxdError(err, 'CHECKSUM_MISMATCH'), String(err))
  t.is(blockOf(err), 5)
  t.truthy(await again.readHashes(0, 64 * BLOCK_SIZE), 'hashes alone still answer: they only tell blocks apart')
})
