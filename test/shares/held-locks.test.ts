import test from 'ava'
import { HeldLocks } from '../../src/shares/held-locks'

const SETLK = 32
const SETLKW = 33
const FLUSH = 25
const RELEASE = 18
const F_WRLCK = 1
const F_UNLCK = 2
const OFFSET_MAX = 0x7fffffffffffffffn

function request(opcode: number, handleByte: number, body: Buffer): Buffer {
  const handle = Buffer.alloc(24)
  handle.writeBigUInt64LE(0x99n, 0)
  handle.writeInt32LE(1, 8)
  handle.writeUInt32LE(8, 12)
  handle.fill(handleByte, 16)
  const head = Buffer.alloc(32)
  head.writeUInt32LE(opcode, 0)
  head[18] = 1
  head.writeUInt32LE(body.length, 20)
  return Buffer.concat([head, handle, body])
}

function lk(opcode: number, file: number, owner: bigint, start: bigint, end: bigint, type: number, flock = false): Buffer {
  const b = Buffer.alloc(48)
  b.writeBigUInt64LE(owner, 8)
  b.writeBigUInt64LE(start, 16)
  b.writeBigUInt64LE(end, 24)
  b.writeUInt32LE(type, 32)
  b.writeUInt32LE(flock ? 1 : 0, 40)
  return request(opcode, file, b)
}

function ownerOp(opcode: number, file: number, owner: bigint, releaseFlags = 0): Buffer {
  const b = Buffer.alloc(24)
  if (opcode === RELEASE) b.writeUInt32LE(releaseFlags, 12)
  b.writeBigUInt64LE(owner, 16)
  return request(opcode, file, b)
}

test('granted locks and unlocks are reclaimed in order, as non-blocking SETLKs', (t) => {
  const h = new HeldLocks()
  h.settled(SETLKW, lk(SETLKW, 1, 7n, 0n, 99n, F_WRLCK))
  h.settled(SETLK, lk(SETLK, 1, 7n, 10n, 19n, F_UNLCK))
  const ops = h.toReclaim()
  t.is(ops.length, 2)
  t.true(ops.every((op) => op.readUInt32LE(0) === SETLK))
  t.is(ops[1]!.readUInt32LE(32 + 24 + 32), F_UNLCK, 'the partial unlock comes second')
})

test('an unlock of the whole file, a close (FLUSH) of the owner, or a RELEASE that unlocks flocks ends what is held', (t) => {
  const h = new HeldLocks()
  h.settled(SETLK, lk(SETLK, 1, 7n, 0n, 99n, F_WRLCK))
  h.settled(SETLK, lk(SETLK, 1, 7n, 0n, OFFSET_MAX, F_UNLCK))
  t.is(h.size, 0)
  h.settled(SETLK, lk(SETLK, 2, 8n, 0n, 0n, F_WRLCK))
  h.settled(SETLK, lk(SETLK, 2, 9n, 0n, 0n, F_WRLCK, true))
  t.is(h.size, 2)
  h.settled(FLUSH, ownerOp(FLUSH, 2, 8n))
  t.is(h.size, 1, 'the close released the POSIX lock, not the flock')
  h.settled(RELEASE, ownerOp(RELEASE, 2, 9n, 0))
  t.is(h.size, 1, 'a release without FLOCK_UNLOCK keeps the flock')
  h.settled(RELEASE, ownerOp(RELEASE, 2, 9n, 1))
  t.is(h.size, 0)
})

test('what a live restart saves restores the same locks, in the same order', (t) => {
  const h = new HeldLocks()
  h.settled(SETLKW, lk(SETLKW, 1, 7n, 0n, 99n, F_WRLCK))
  h.settled(SETLK, lk(SETLK, 1, 7n, 10n, 19n, F_UNLCK))
  h.settled(SETLK, lk(SETLK, 2, 9n, 0n, 0n, F_WRLCK, true))
  const next = new HeldLocks()
  next.restore(h.saved().map((b) => Buffer.from(b.toString('base64'), 'base64')))
  t.is(next.size, h.size)
  t.deepEqual(next.toReclaim(), h.toReclaim())
})
