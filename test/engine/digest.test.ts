import test from 'ava'
import { blocksIn, chunks, countWritten, isUnwritten, sameHash } from '../../src/engine/digest'

const digest = Uint8Array.from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9])

test('a block is unwritten only when all four bytes of its crc are 0', (t) => {
  t.true(isUnwritten(digest, 0))
  t.false(isUnwritten(digest, 1))
  t.false(isUnwritten(digest, 2), 'the last byte counts')
  t.is(countWritten(digest), 2)
  t.is(countWritten(new Uint8Array(0)), 0)
})

test('sameHash compares one 8-byte hash of two replicas\' hashes, every byte of it', (t) => {
  const a = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0])
  const b = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1])
  t.true(sameHash(a, b, 0))
  t.false(sameHash(a, b, 1), 'the last byte counts')
  t.false(sameHash(a, Uint8Array.from([1, 2, 3, 4, 9, 6, 7, 8]), 0), 'the upper four bytes count')
})

test('chunks cover the size with a short last piece; blocksIn rounds up', (t) => {
  t.deepEqual(chunks(10, 4), [[0, 4], [4, 4], [8, 2]])
  t.deepEqual(chunks(0, 4), [])
  t.is(blocksIn(4096), 1)
  t.is(blocksIn(4097), 2)
})
