import test from 'ava'
import { blocksIn, chunks, countWritten, isUnwritten, sameEntry } from '../../src/engine/digest'

const digest = Uint8Array.from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9])

test('a block is unwritten only when all four bytes of its crc are 0', (t) => {
  t.true(isUnwritten(digest, 0))
  t.false(isUnwritten(digest, 1))
  t.false(isUnwritten(digest, 2), 'the last byte counts')
  t.is(countWritten(digest), 2)
  t.is(countWritten(new Uint8Array(0)), 0)
})

test('sameEntry compares one crc of two digests', (t) => {
  const other = Uint8Array.from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 8])
  t.true(sameEntry(digest, other, 0))
  t.true(sameEntry(digest, other, 1))
  t.false(sameEntry(digest, other, 2))
})

test('chunks cover the size with a short last piece; blocksIn rounds up', (t) => {
  t.deepEqual(chunks(10, 4), [[0, 4], [4, 4], [8, 2]])
  t.deepEqual(chunks(0, 4), [])
  t.is(blocksIn(4096), 1)
  t.is(blocksIn(4097), 2)
})
