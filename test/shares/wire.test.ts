import test from 'ava'
import { appliesOnce, Op } from '../../src/shares/wire'

const O_APPEND = 0o2000

/** A wire request of `opcode` naming one handle, its body `body`. */
function request(opcode: number, body: Buffer): Buffer {
  const handle = Buffer.alloc(24)
  handle.writeUInt32LE(8, 12)
  handle.fill(7, 16)
  const head = Buffer.alloc(32)
  head.writeUInt32LE(opcode, 0)
  head[18] = 1
  head.writeUInt32LE(body.length, 20)
  return Buffer.concat([head, handle, body])
}

function write(fhFlags: number): Buffer {
  const body = Buffer.alloc(40 + 64)
  body.writeBigUInt64LE(BigInt(fhFlags), 0)
  return request(Op.WRITE, body)
}

test('namespace changes and writes to a file opened to append must not run twice; other writes and reads may', (t) => {
  t.true(appliesOnce(request(Op.CREATE, Buffer.alloc(16))))
  t.true(appliesOnce(request(Op.RENAME, Buffer.alloc(16))))
  t.true(appliesOnce(write(O_APPEND | 1)), 'a write of a file opened O_APPEND')
  t.false(appliesOnce(write(1)), 'a write at an offset lands in the same place again')
  t.false(appliesOnce(request(Op.FSYNC, Buffer.alloc(16))))
  t.false(appliesOnce(Buffer.alloc(8)), 'too short to be a request')
})
