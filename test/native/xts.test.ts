/**
 * The addon's AES-256-XTS (native/xts.cc): IEEE 1619 vector 10, the same bytes as
 * node:crypto's aes-256-xts with the plain64 tweak of each 512-byte unit, in place, the
 * all-zero ciphertext unit that reads as zeros, and the refusals.
 */
import { createCipheriv, randomBytes } from 'node:crypto'
import test from 'ava'
import { native } from '../../src/native/binding'

const KEY10 = Buffer.from(
  '2718281828459045235360287471352662497757247093699959574966967627' +
  '3141592653589793238462643383279502884197169399375105820974944592', 'hex')

function iv(unit: number): Buffer {
  const b = Buffer.alloc(16)
  b.writeBigUInt64LE(BigInt(unit))
  return b
}

test('IEEE 1619 vector 10 (data unit 0xff)', (t) => {
  const pt = Buffer.alloc(512)
  for (let i = 0; i < 512; i++) pt[i] = i & 0xff
  const out = Buffer.alloc(512)
  native.xtsCrypt(KEY10, pt, out, 0xff, true)
  t.is(out.subarray(0, 32).toString('hex'), '1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b')
  const back = Buffer.alloc(512)
  native.xtsCrypt(KEY10, out, back, 0xff, false)
  t.deepEqual(back, pt)
})

test('each 512-byte unit is node:crypto aes-256-xts with its unit number as the tweak', (t) => {
  const key = randomBytes(64)
  const pt = randomBytes(8 * 512)
  const first = 2 ** 40 + 3
  const out = Buffer.alloc(pt.length)
  native.xtsCrypt(key, pt, out, first, true)
  for (let u = 0; u < 8; u++) {
    const c = createCipheriv('aes-256-xts', key, iv(first + u))
    const want = Buffer.concat([c.update(pt.subarray(u * 512, (u + 1) * 512)), c.final()])
    t.deepEqual(out.subarray(u * 512, (u + 1) * 512), want, `unit ${u}`)
  }
  // In place gives the same, and decrypting in place restores the plaintext.
  const inPlace = Buffer.from(pt)
  native.xtsCrypt(key, inPlace, inPlace, first, true)
  t.deepEqual(inPlace, out)
  native.xtsCrypt(key, inPlace, inPlace, first, false)
  t.deepEqual(inPlace, pt)
})

test('an all-zero ciphertext unit decrypts to zeros; zeros encrypt to something else', (t) => {
  const key = randomBytes(64)
  const buf = Buffer.alloc(1024)
  buf.fill(9, 512)
  native.xtsCrypt(key, buf, buf, 0, false)
  t.true(buf.subarray(0, 512).every((b) => b === 0))
  t.false(buf.subarray(512).every((b) => b === 9))
  const zeros = Buffer.alloc(512)
  const enc = Buffer.alloc(512)
  native.xtsCrypt(key, zeros, enc, 0, true)
  t.false(enc.every((b) => b === 0))
})

test('refuses a bad key, a length not a multiple of 512, a short dst', (t) => {
  const key = randomBytes(64)
  t.throws(() => native.xtsCrypt(randomBytes(32), Buffer.alloc(512), Buffer.alloc(512), 0, true), { code: 'EINVAL', message: /64 bytes/ } as never)
  const same = Buffer.concat([key.subarray(0, 32), key.subarray(0, 32)])
  t.throws(() => native.xtsCrypt(same, Buffer.alloc(512), Buffer.alloc(512), 0, true), { message: /halves/ })
  t.throws(() => native.xtsCrypt(key, Buffer.alloc(100), Buffer.alloc(100), 0, true), { message: /multiple of 512/ })
  t.throws(() => native.xtsCrypt(key, Buffer.alloc(1024), Buffer.alloc(512), 0, true), { message: /shorter/ })
  t.throws(() => native.xtsCrypt(key, Buffer.alloc(512), Buffer.alloc(512), -1, true), { message: /non-negative/ })
})
