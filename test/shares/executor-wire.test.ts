import test from 'ava'
import { randomBytes } from 'node:crypto'
import { header, HEADER_BYTES, Kind, MessageReader, type Message } from '../../src/shares/executor-wire'

test('messages come out whole however the stream is cut', (t) => {
  const payloads = [randomBytes(0), randomBytes(5), randomBytes(1 << 20), randomBytes(333)]
  const stream = Buffer.concat(payloads.flatMap((p, i) => [header(Kind.Exec, i + 1, 7, 3, p.length), p]))
  for (const cut of [7, HEADER_BYTES, 4096, 65536, stream.length]) {
    const got: Message[] = []
    const reader = new MessageReader((m) => got.push({ ...m, payload: Buffer.from(m.payload) }))
    for (let at = 0; at < stream.length; at += cut) reader.push(stream.subarray(at, at + cut))
    t.is(got.length, payloads.length, `cut every ${cut} bytes`)
    got.forEach((m, i) => {
      t.is(m.kind, Kind.Exec)
      t.is(m.id, i + 1)
      t.is(m.exportId, 7)
      t.is(m.client, 3)
      t.true(m.payload.equals(payloads[i]!))
    })
  }
})

test('a length beyond the limit is refused', (t) => {
  const reader = new MessageReader(() => t.fail('no message'))
  t.throws(() => reader.push(header(Kind.Exec, 1, 1, 1, 0xffffffff)), { message: /share executor message/ })
})
