import { randomBytes } from 'node:crypto'
import test from 'ava'
import { pack } from 'msgpackr'
import { isReplicationError } from '../../src/replication/errors'
import {
  decodeFrame, encodeFrame, encodeFrameParts, isRequest, payloadBytes, sendFrame, MAX_DATA_BYTES, MAX_FRAME_BYTES, MAX_FSOP_BYTES, REQUEST_TYPES, type Frame,
} from '../../src/replication/frames'

const n32 = () => randomBytes(32)

const samples: Frame[] = [
  { t: 'hello', v: 1, nodeId: 'node-1', clusterId: 'c1', nonce: n32() },
  { t: 'challenge', v: 1, nodeId: 'node-2', nonce: n32(), proof: n32() },
  { t: 'auth', proof: n32() },
  { t: 'ready' },
  { t: 'create', id: 12, vol: 'vol-1', size: 1024 ** 3 },
  { t: 'open', id: 1, vol: 'vol-1', epoch: 3, size: 1024 ** 3 },
  { t: 'fsop', id: 5, vol: 'vol-1', xid: 1796195239761000, data: randomBytes(1024 * 1024 + 200) },
  { t: 'fscancel', id: 6, vol: 'vol-1', xid: 77 },
  { t: 'fsop', id: 7, vol: 'vol-1', xid: 78, data: randomBytes(100), reclaim: true },
  { t: 'write', id: 2, vol: 'v.a_b-c', epoch: 3, seq: 17, offset: 4096, data: randomBytes(128 * 1024) },
  { t: 'write', id: 3, vol: 'v', epoch: 0, seq: 0, offset: 0, data: Buffer.alloc(0) },
  { t: 'write', id: 4, vol: 'v', epoch: 0, seq: 0, offset: Number.MAX_SAFE_INTEGER, data: randomBytes(MAX_DATA_BYTES) },
  { t: 'read', id: 5, vol: 'vol-1', epoch: 3, offset: 8192, length: MAX_DATA_BYTES },
  { t: 'discard', id: 14, vol: 'vol-1', epoch: 3, seq: 18, offset: 4096, length: 4 * 1024 ** 3 },
  { t: 'flush', id: 6, vol: 'vol-1', epoch: 3 },
  { t: 'close', id: 7, vol: 'vol-1', epoch: 3 },
  { t: 'drop', id: Number.MAX_SAFE_INTEGER, vol: 'vol-1' },
  { t: 'snapshot', id: 4, vol: 'vol-1', epoch: 3, snap: '0123456789abcdef' },
  { t: 'restore', id: 5, vol: 'vol-1', epoch: 3, snap: '0123456789abcdef' },
  { t: 'clone', id: 6, vol: 'vol-2', size: 4096 * 16, snap: '0123456789abcdef' },
  { t: 'ack', id: 8, ok: true },
  { t: 'ack', id: 9, ok: true, data: randomBytes(4096) },
  { t: 'ack', id: 10, ok: false, code: 'STALE_EPOCH', message: 'epoch 2 < 3' },
  { t: 'ack', id: 13, ok: false, code: 'CHECKSUM_MISMATCH', message: 'block 5 is bad', block: 5 },
  { t: 'error', code: 'AUTH_FAILED', message: 'no' },
  { t: 'ping', id: 11, sent: 1234.5678 },
  { t: 'pong', id: 11, sent: 0 },
]

const badFrame = (t: import('ava').ExecutionContext, input: Uint8Array, code = 'BAD_FRAME') => {
  const err = t.throws(() => decodeFrame(input))
  t.true(isReplicationError(err, code as never), `expected ${code}, got ${String(err)}`)
}

test('every frame type round-trips', (t) => {
  for (const frame of samples) {
    const decoded = decodeFrame(encodeFrame(frame))
    t.deepEqual(decoded, frame, frame.t)
  }
})

test('decoded data shares the received buffer (zero-copy)', (t) => {
  const data = randomBytes(64 * 1024)
  const buf = encodeFrame({ t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, data })
  const frame = decodeFrame(buf)
  if (frame.t !== 'write') return t.fail()
  t.true(Buffer.isBuffer(frame.data))
  t.is(frame.data.buffer, buf.buffer)
  t.true(data.equals(frame.data))
})

test('request kinds and payload sizes', (t) => {
  t.deepEqual([...REQUEST_TYPES].sort(), ['clone', 'close', 'create', 'digest', 'discard', 'drop', 'flush', 'fscancel', 'fsop', 'hashes', 'open', 'read', 'restore', 'snapshot', 'write'])
  for (const frame of samples) t.is(isRequest(frame), REQUEST_TYPES.has(frame.t), frame.t)
  t.is(payloadBytes({ t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, data: Buffer.alloc(100) }), 100)
  t.is(payloadBytes({ t: 'read', id: 1, vol: 'v', epoch: 1, offset: 0, length: 300 }), 300)
  t.is(payloadBytes({ t: 'flush', id: 1, vol: 'v', epoch: 1 }), 0)
  t.is(payloadBytes({ t: 'discard', id: 1, vol: 'v', epoch: 1, seq: 2, offset: 0, length: 1024 ** 3 }), 0, 'a discard carries no data')
  t.is(payloadBytes({ t: 'hashes', id: 1, vol: 'v', epoch: 1, offset: 0, length: 4096 * 10 }), 80)
  t.is(payloadBytes({ t: 'fsop', id: 1, vol: 'v', xid: 9, data: Buffer.alloc(700) }), 700)
  t.is(payloadBytes({ t: 'fscancel', id: 1, vol: 'v', xid: 9 }), 0)
})

test('random bytes never decode as a valid frame and only throw coded errors', (t) => {
  let accepted = 0
  for (let i = 0; i < 5000; i++) {
    const buf = randomBytes(1 + (i % 200))
    try {
      decodeFrame(buf)
      accepted++
    } catch (err) {
      if (!isReplicationError(err, 'BAD_FRAME') && !isReplicationError(err, 'UNSUPPORTED_VERSION')) t.fail(`uncoded error: ${String(err)}`)
    }
  }
  t.is(accepted, 0)
})

test('random bytes with a frame-like prefix are refused too', (t) => {
  const prefix = encodeFrame({ t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, data: Buffer.alloc(8) }).subarray(0, 12)
  for (let i = 0; i < 2000; i++) {
    const buf = Buffer.concat([prefix, randomBytes(i % 64)])
    const err = t.throws(() => decodeFrame(buf))
    t.true(isReplicationError(err), String(err))
  }
})

/** Every cut of a small frame; for a large one, every cut near its head and its tail and one
 * in each 4 KiB between (a million cuts of a 1 MiB fsop take most of a minute to no purpose). */
function cuts(length: number): number[] {
  if (length < 64 * 1024) return Array.from({ length }, (_, i) => i)
  const out: number[] = []
  for (let len = 0; len < length; len++) {
    if (len < 4096 || len >= length - 4096 || len % 4096 === 1) out.push(len)
  }
  return out
}

test('every truncation of a valid frame is refused', (t) => {
  for (const frame of samples) {
    const buf = encodeFrame(frame)
    for (const len of cuts(buf.length)) badFrame(t, buf.subarray(0, len))
  }
})

test('trailing bytes after a frame are refused', (t) => {
  badFrame(t, Buffer.concat([encodeFrame({ t: 'ready' }), Buffer.from([0])]))
})

test('unknown types, non-maps and missing types are refused', (t) => {
  badFrame(t, pack({ t: 'resync', id: 1, vol: 'v' }))
  badFrame(t, pack({ t: 'constructor', id: 1 }))
  badFrame(t, pack({ t: '__proto__', id: 1 }))
  badFrame(t, pack({ id: 1, vol: 'v', epoch: 1 }))
  badFrame(t, pack([1, 2, 3]))
  badFrame(t, pack('write'))
  badFrame(t, pack(null))
  badFrame(t, pack({ t: 5 }))
})

test('wrong field types are refused', (t) => {
  const base = { t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, data: Buffer.alloc(4) }
  badFrame(t, pack({ ...base, data: 'abcd' }))
  badFrame(t, pack({ ...base, data: [1, 2, 3, 4] }))
  badFrame(t, pack({ ...base, id: '1' }))
  badFrame(t, pack({ ...base, epoch: true }))
  badFrame(t, pack({ ...base, offset: 1.5 }))
  badFrame(t, pack({ ...base, vol: 42 }))
  badFrame(t, pack({ ...base, vol: '' }))
  badFrame(t, pack({ ...base, vol: 'a/b' }))
  // The peer joins vol to its replicas dir: "." and ".." would name the dir itself and the data dir.
  for (const vol of ['.', '..']) {
    badFrame(t, pack({ ...base, vol }))
    badFrame(t, pack({ t: 'drop', id: 1, vol }))
  }
  t.is(decodeFrame(pack({ t: 'drop', id: 1, vol: '...' })).t, 'drop')
  badFrame(t, pack({ ...base, vol: 'x'.repeat(129) }))
  badFrame(t, pack({ t: 'ack', id: 1, ok: 'yes' }))
  badFrame(t, pack({ t: 'ack', id: 1, ok: false, code: 'lower', message: 'm' }))
  badFrame(t, pack({ t: 'ack', id: 1, ok: false, code: 'X' }))
  badFrame(t, pack({ t: 'ack', id: 1, ok: false, code: 'X', message: 'm', data: Buffer.alloc(1) }))
  badFrame(t, pack({ t: 'ping', id: 1, sent: -1 }))
  badFrame(t, pack({ t: 'ping', id: 1, sent: Infinity }))
  badFrame(t, pack({ t: 'error', code: 'X', message: 'm'.repeat(5000) }))
  const { data: _data, ...noData } = base
  badFrame(t, pack(noData))
})

test('negative, zero and unsafe numbers are refused', (t) => {
  const base = { t: 'read', id: 1, vol: 'v', epoch: 1, offset: 0, length: 10 }
  badFrame(t, pack({ ...base, id: 0 }))
  badFrame(t, pack({ ...base, id: -1 }))
  badFrame(t, pack({ ...base, epoch: -1 }))
  badFrame(t, pack({ ...base, offset: -4096 }))
  badFrame(t, pack({ ...base, offset: 2 ** 53 }))
  badFrame(t, pack({ ...base, offset: Number.NaN }))
  badFrame(t, Buffer.concat([pack({ ...base }).subarray(0, 1), encodeFieldsWithUint64()]))
  badFrame(t, pack({ ...base, length: MAX_DATA_BYTES + 1 }))
  const discard = { t: 'discard', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, length: 4096 }
  badFrame(t, pack({ ...discard, length: -4096 }))
  badFrame(t, pack({ ...discard, length: 2 ** 53 }))
  badFrame(t, pack({ ...discard, seq: -1 }))
  badFrame(t, pack({ ...discard, length: undefined }))
})

/** A map whose `id` is a msgpack uint64 beyond 2^53 (decodes as a BigInt). */
function encodeFieldsWithUint64(): Buffer {
  const rest = pack({ t: 'read', vol: 'v', epoch: 1, offset: 0, length: 10 }).subarray(1)
  const id = Buffer.concat([pack('id'), Buffer.from([0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])])
  return Buffer.concat([id, rest])
}

test('oversized data and extra fields are refused', (t) => {
  const base = { t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0 }
  badFrame(t, pack({ ...base, data: Buffer.alloc(MAX_DATA_BYTES + 1) }))
  badFrame(t, pack({ ...base, data: Buffer.alloc(4), junk: Buffer.alloc(500_000) }))
  badFrame(t, pack({ t: 'ready', extra: 1 }))
  badFrame(t, pack({ t: 'ack', id: 1, ok: true, data: Buffer.alloc(MAX_FSOP_BYTES + 1) }))
  badFrame(t, pack({ t: 'fsop', id: 1, vol: 'v', xid: 1, data: Buffer.alloc(MAX_FSOP_BYTES + 1) }))
  badFrame(t, pack({ t: 'fsop', id: 1, vol: 'v', xid: 0, data: Buffer.alloc(10) }))
  badFrame(t, pack({ t: 'fscancel', id: 1, vol: '..', xid: 3 }))
  badFrame(t, pack({ t: 'fsop', id: 1, vol: 'v', xid: 1, data: Buffer.alloc(10), reclaim: false }))
  badFrame(t, Buffer.alloc(MAX_FRAME_BYTES + 1), 'FRAME_TOO_LARGE')
})

test('a handshake of another version is refused as such; nonces and proofs must be 32 bytes', (t) => {
  badFrame(t, pack({ t: 'hello', v: 2, nodeId: 'n', clusterId: 'c', nonce: n32() }), 'UNSUPPORTED_VERSION')
  badFrame(t, pack({ t: 'hello', v: 2, somethingNew: true }), 'UNSUPPORTED_VERSION')
  badFrame(t, pack({ t: 'challenge', v: 0, nodeId: 'n', nonce: n32(), proof: n32() }), 'UNSUPPORTED_VERSION')
  badFrame(t, pack({ t: 'hello', nodeId: 'n', clusterId: 'c', nonce: n32() }))
  badFrame(t, pack({ t: 'hello', v: 1, nodeId: 'n', clusterId: 'c', nonce: randomBytes(31) }))
  badFrame(t, pack({ t: 'hello', v: 1, nodeId: 'n', clusterId: 'c', nonce: randomBytes(33) }))
  badFrame(t, pack({ t: 'hello', v: 1, nodeId: 'n', clusterId: 'c', nonce: n32().toString('hex') }))
  badFrame(t, pack({ t: 'auth', proof: randomBytes(16) }))
  badFrame(t, pack({ t: 'hello', v: 1, nodeId: 'has space', clusterId: 'c', nonce: n32() }))
})

test('a refusal may name a block: a non-negative safe integer', (t) => {
  const refusal = { t: 'ack', id: 1, ok: false, code: 'CHECKSUM_MISMATCH', message: 'bad block' } as const
  for (const block of [0, 1, 2 ** 40, Number.MAX_SAFE_INTEGER]) {
    t.deepEqual(decodeFrame(encodeFrame({ ...refusal, block })), { ...refusal, block }, `block ${block}`)
  }
  t.false('block' in decodeFrame(encodeFrame(refusal)), 'the field is optional')
  for (const block of [-1, 1.5, 2 ** 53, Number.NaN, Infinity, '5', null, true, [5], Buffer.from([5])]) {
    badFrame(t, pack({ ...refusal, block }))
  }
  badFrame(t, pack({ t: 'ack', id: 1, ok: true, block: 5 }), 'BAD_FRAME')
})

test('msgpack extensions (dates, sets, errors) do not pass as fields', (t) => {
  badFrame(t, pack({ t: 'ping', id: 1, sent: new Date() }))
  badFrame(t, pack({ t: 'write', id: 1, vol: 'v', epoch: 1, seq: 1, offset: 0, data: new Set([1]) }))
  badFrame(t, pack({ t: 'ping', id: 1, sent: new Error('x') }))
})

test('a large payload is sent as its own fragment, uncopied, and the message is the same bytes', (t) => {
  for (const size of [0, 4095, 4096, 128 * 1024, MAX_DATA_BYTES]) {
    const data = randomBytes(size)
    for (const frame of [
      { t: 'write', id: 2, vol: 'v', epoch: 3, seq: 17, offset: 4096, data } as Frame,
      { t: 'ack', id: 9, ok: true, data } as Frame,
    ]) {
      const whole = encodeFrame(frame)
      const parts = encodeFrameParts(frame)
      t.is(parts.length, size >= 4096 ? 2 : 1, `${frame.t} with ${size} bytes`)
      if (parts.length === 2) t.is(parts[1], data, 'the payload part is the caller\'s buffer itself')
      t.true(Buffer.concat(parts).equals(whole), `${frame.t} with ${size} bytes: parts join to encodeFrame's bytes`)
      const sent: Array<{ bytes: Uint8Array; fin: boolean }> = []
      sendFrame({ send: (bytes, o) => sent.push({ bytes, fin: o.fin }) }, frame)
      t.deepEqual(sent.map((s) => s.fin), parts.length === 2 ? [false, true] : [true], 'one message: only the last fragment is final')
      t.deepEqual(decodeFrame(Buffer.concat(sent.map((s) => s.bytes))), decodeFrame(whole))
    }
  }
})
