import test from 'ava'
import { commitRequest, COMMIT_BYTES, parseWrite, UnstableWrites } from '../../src/shares/unstable-writes'

const O_APPEND = 0o2000

/** A WRITE wire request (native/share_wire.h): header, `groups` groups, one handle, fuse_write_in, data. */
function writeRequest(handleByte: number, fh: number, offset: number, data: Buffer, groups = 0): Buffer {
  const groupBytes = (groups * 4 + 7) & ~7
  const handle = Buffer.alloc(16 + 8)
  handle.writeBigUInt64LE(0x1234n, 0)
  handle.writeInt32LE(1, 8)
  handle.writeUInt32LE(8, 12)
  handle.fill(handleByte, 16)
  const body = Buffer.alloc(40)
  body.writeBigUInt64LE(BigInt(fh), 0)
  body.writeBigUInt64LE(BigInt(offset), 8)
  body.writeUInt32LE(data.length, 16)
  const head = Buffer.alloc(32)
  head.writeUInt32LE(16, 0)
  head.writeUInt16LE(groups, 16)
  head[18] = 1
  head.writeUInt32LE(body.length + data.length, 20)
  return Buffer.concat([head, Buffer.alloc(groupBytes), handle, body, data])
}

test('a WRITE request names its file by handle and carries its fh, whatever the groups before it', (t) => {
  const a = parseWrite(writeRequest(7, 0o2, 0, Buffer.from('x'), 3))!
  const b = parseWrite(writeRequest(7, 0o1, 4096, Buffer.from('y')))!
  t.is(a.key, b.key)
  t.is(a.fh, 0o2n)
  t.not(parseWrite(writeRequest(8, 0o2, 0, Buffer.from('x')))!.key, a.key)
  t.is(parseWrite(Buffer.alloc(10)), undefined)
})

test('writes are kept until an fsync on the same server, and written again in order on another', (t) => {
  const u = new UnstableWrites()
  const w1 = writeRequest(1, 0o2, 0, Buffer.from('one'))
  const w2 = writeRequest(2, 0o2, 0, Buffer.from('two'))
  const w3 = writeRequest(1, 0o2, 8, Buffer.from('three'))
  u.wrote('a@1', w1)
  u.wrote('a@1', w2)
  u.wrote('a@1', w3)
  t.is(u.bytes, w1.length + w2.length + w3.length)
  // An fsync of file 2 on a@1 makes its write durable; file 1's stay.
  u.committed('a@1', parseWrite(w2)!.key, u.seq)
  const replay = u.toReplay('b@2')
  t.deepEqual(replay.map((r) => r.request), [w1, w3])
  // A commit on another server than the one that holds a write does not drop it.
  u.committed('b@2', parseWrite(w1)!.key, u.seq)
  t.is(u.toReplay('b@2').length, 2)
  for (const r of replay) u.moved(r.key, r.request, 'b@2')
  u.committed('b@2', parseWrite(w1)!.key, u.seq)
  t.is(u.toReplay('c@3').length, 0)
  t.is(u.bytes, 0)
})

test('appends are never written twice: the file\'s next fsync fails instead, once', (t) => {
  const u = new UnstableWrites()
  const w = writeRequest(5, 0o1 | O_APPEND, 0, Buffer.from('record'))
  u.wrote('a@1', w)
  t.deepEqual(u.toReplay('b@2'), [])
  const key = parseWrite(w)!.key
  t.true(u.takeLost(key))
  t.false(u.takeLost(key))
})

test('old or too many unstable writes are due for a commit that names the file and its fh', (t) => {
  const u = new UnstableWrites()
  const w = writeRequest(9, 0o2, 0, Buffer.alloc(100))
  u.wrote('a@1', w)
  t.deepEqual(u.due(Date.now()), [])
  const due = u.due(Date.now() + 60_000)
  t.is(due.length, 1)
  t.deepEqual(due[0]!.request, commitRequest(parseWrite(w)!.handle, 0o2n))
  t.is(due[0]!.request.readUInt32LE(0), 20, 'an FSYNC')
  const big = new UnstableWrites()
  big.wrote('a@1', writeRequest(3, 0o2, 0, Buffer.alloc(COMMIT_BYTES + 1)))
  t.is(big.due(Date.now()).length, 1)
})
