/**
 * The engine with a secure volume's cipher (src/engine/cipher.ts): replicas get only
 * ciphertext (the aes-xts-plain64 of the plaintext at its sector), reads give back the
 * plaintext, unwritten space reads as zeros, the caller's buffer is never changed, the
 * pooled ciphertext buffer is reused only after its write settled, and unaligned I/O is
 * INVALID_ARGUMENT.
 */
import { createCipheriv, randomBytes } from 'node:crypto'
import test from 'ava'
import { BLOCK_SIZE } from '../../src/constants'
import { VolumeCipher } from '../../src/engine/cipher'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { deferred, MemReplica } from './mem-replica'

const SIZE = 64 * BLOCK_SIZE
const VOLUME = '0123456789abcdef'

function xts(key: Buffer, sector: number, data: Buffer): Buffer {
  const iv = Buffer.alloc(16)
  iv.writeBigUInt64LE(BigInt(sector))
  const c = createCipheriv('aes-256-xts', key, iv)
  return Buffer.concat([c.update(data), c.final()])
}

test('replicas hold ciphertext; reads give the plaintext; unwritten space reads as zeros', async (t) => {
  const key = randomBytes(64)
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b], cipher: new VolumeCipher(key) })
  const plain = randomBytes(2 * BLOCK_SIZE)
  const copy = Buffer.from(plain)
  await engine.write(3 * BLOCK_SIZE, plain)
  t.deepEqual(plain, copy, 'the caller\'s buffer is unchanged')
  const at = 3 * BLOCK_SIZE
  for (const r of [a, b]) {
    const stored = r.bytes.subarray(at, at + plain.length)
    t.notDeepEqual(stored, plain)
    t.deepEqual(stored.subarray(512, 1024), xts(key, at / 512 + 1, plain.subarray(512, 1024)), 'sector 1 of the write is XTS with its sector number')
  }
  const back = Buffer.alloc(4 * BLOCK_SIZE, 7)
  await engine.read(2 * BLOCK_SIZE, back)
  t.true(back.subarray(0, BLOCK_SIZE).every((x) => x === 0), 'unwritten block reads as zeros')
  t.deepEqual(back.subarray(BLOCK_SIZE, 3 * BLOCK_SIZE), plain)
  await engine.close()
})

test('the ciphertext buffer is not reused before its write settled', async (t) => {
  const a = new MemReplica('a', SIZE)
  const gate = deferred()
  const seen: Buffer[] = []
  a.beforeWrite = async (_o, data) => {
    seen.push(Buffer.from(data))
    if (seen.length === 1) await gate.promise
  }
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a], cipher: new VolumeCipher(randomBytes(64)) })
  const first = engine.write(0, Buffer.alloc(BLOCK_SIZE, 1))
  const second = engine.write(8 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE, 2))
  await new Promise((r) => setTimeout(r, 10))
  gate.resolve()
  await Promise.all([first, second])
  t.deepEqual(a.bytes.subarray(0, BLOCK_SIZE), seen[0], 'the first write landed as it was sent')
  const out = Buffer.alloc(BLOCK_SIZE)
  await engine.read(0, out)
  t.true(out.every((x) => x === 1))
  await engine.read(8 * BLOCK_SIZE, out)
  t.true(out.every((x) => x === 2))
  await engine.close()
})

test('I/O not aligned to 512 bytes is INVALID_ARGUMENT', async (t) => {
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [new MemReplica('a', SIZE)], cipher: new VolumeCipher(randomBytes(64)) })
  await t.throwsAsync(engine.write(100, Buffer.alloc(512)), { code: 'INVALID_ARGUMENT' } as never)
  await t.throwsAsync(engine.read(0, Buffer.alloc(100)), { code: 'INVALID_ARGUMENT' } as never)
  await t.throwsAsync(engine.discard(512, 100), { code: 'INVALID_ARGUMENT' } as never)
  await engine.close()
})

test('closing the engine forgets the data key: the cipher encrypts nothing more', async (t) => {
  const cipher = new VolumeCipher(randomBytes(64))
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [new MemReplica('a', SIZE)], cipher })
  await engine.write(0, randomBytes(BLOCK_SIZE))
  await engine.close()
  t.throws(() => cipher.encrypt(0, Buffer.alloc(512, 1)), undefined, 'a zeroed key (two equal halves) is refused')
})
