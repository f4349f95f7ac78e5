import { randomBytes } from 'node:crypto'
import test from 'ava'
import { native } from '../../src/native/binding'

const ascii = (s: string) => new Uint8Array(Buffer.from(s, 'latin1'))
const hasHw = native.hasHardwareCrc32c()
const variants = [
  ['dispatch', native.crc32c],
  ['software', native.crc32cSoftware],
  ...(hasHw ? [['hardware', native.crc32cHardware] as const] : []),
] as const

test('check value "123456789" is 0xE3069283 on every path', (t) => {
  for (const [name, fn] of variants) t.is(fn(ascii('123456789')), 0xe3069283, name)
})

test('RFC 3720 vectors and the empty buffer', (t) => {
  const ascending = new Uint8Array(32).map((_, i) => i)
  for (const [name, fn] of variants) {
    t.is(fn(new Uint8Array(0)), 0, name)
    t.is(fn(new Uint8Array(32)), 0x8a9136aa, name)
    t.is(fn(new Uint8Array(32).fill(0xff)), 0x62a8ab43, name)
    t.is(fn(ascending), 0x46dd794e, name)
  }
})

test('the machine has the SSE4.2 path, or crc32cHardware refuses', (t) => {
  if (hasHw) {
    t.is(native.crc32cHardware(ascii('123456789')), 0xe3069283)
  } else {
    const err = t.throws(() => native.crc32cHardware(ascii('x')))
    t.is((err as Error & { code?: string }).code, 'ENOTSUP')
  }
})

test('hardware equals software for sizes 0..4100 at every alignment', (t) => {
  if (!hasHw) return t.pass('no SSE4.2 here')
  const base = new Uint8Array(randomBytes(4100 + 8))
  let mismatches = 0
  for (let size = 0; size <= 4100; size++) {
    for (let start = 0; start < 8; start++) {
      const buf = base.subarray(start, start + size)
      if (native.crc32cHardware(buf) !== native.crc32cSoftware(buf)) mismatches++
    }
  }
  t.is(mismatches, 0)
})

test('hardware equals software around the interleaving boundaries and on 1 MiB', (t) => {
  if (!hasHw) return t.pass('no SSE4.2 here')
  const base = new Uint8Array(randomBytes((1 << 20) + 8))
  const sizes = [767, 768, 769, 1535, 1536, 24575, 24576, 24577, 49152 + 13, 73727, 73728, 1 << 20]
  for (const size of sizes) {
    for (let start = 0; start < 8; start++) {
      const buf = base.subarray(start, start + size)
      t.is(native.crc32cHardware(buf), native.crc32cSoftware(buf), `size ${size} at +${start}`)
      t.is(native.crc32c(buf), native.crc32cSoftware(buf), `dispatch size ${size} at +${start}`)
    }
  }
})

test('init continues a previous crc: crc(a+b) == crc(b, crc(a))', (t) => {
  const whole = new Uint8Array(randomBytes(100_000))
  const fns = variants.map(([, fn]) => fn)
  const expected = native.crc32cSoftware(whole)
  for (const split of [0, 1, 7, 8, 4096, 24577, 77_777, 100_000]) {
    const a = whole.subarray(0, split)
    const b = whole.subarray(split)
    for (const first of fns) {
      for (const second of fns) t.is(second(b, first(a)), expected, `split ${split}`)
    }
  }
  // Three pieces, to show the running value keeps composing.
  t.is(native.crc32c(whole.subarray(9), native.crc32c(whole.subarray(3, 9), native.crc32c(whole.subarray(0, 3)))), expected)
})

test('Buffers and Uint8Array views at an offset hash their own bytes only', (t) => {
  const backing = new Uint8Array(64).fill(0xaa)
  backing.set(ascii('123456789'), 13)
  t.is(native.crc32c(backing.subarray(13, 22)), 0xe3069283)
  t.is(native.crc32c(Buffer.from(backing.buffer, 13, 9)), 0xe3069283)
})

test('bad arguments throw TypeError synchronously', (t) => {
  const buf = ascii('abc')
  const bad: Array<() => unknown> = [
    () => (native.crc32c as (...a: unknown[]) => number)('abc'),
    () => (native.crc32c as (...a: unknown[]) => number)(new Uint16Array(4)),
    () => (native.crc32c as (...a: unknown[]) => number)(),
    () => native.crc32c(buf, -1),
    () => native.crc32c(buf, 2 ** 32),
    () => native.crc32c(buf, 1.5),
    () => (native.crc32c as (...a: unknown[]) => number)(buf, '1'),
    () => (native.crc32cSoftware as (...a: unknown[]) => number)(null),
  ]
  for (const fn of bad) t.throws(fn, { instanceOf: TypeError })
  t.is(native.crc32c(buf, 0xffffffff), native.crc32cSoftware(buf, 0xffffffff))
})
