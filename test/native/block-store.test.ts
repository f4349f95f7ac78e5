import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import test, { type ExecutionContext } from 'ava'
import { native, type Callback, type NativeError, type StoreHandle } from '../../src/native/binding'

const BS = 4096
const MiB = 1 << 20

// ---- helpers ---------------------------------------------------------------

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-native-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

function done(run: (cb: Callback) => void): Promise<void> {
  return new Promise((resolve, reject) => run((err) => (err ? reject(err) : resolve())))
}

/** The intent map beside the crc file unless named. */
const open = (data: string, crc: string, size: number, blockSize: number, create: boolean, intent = `${crc}.intent`) =>
  new Promise<StoreHandle>((resolve, reject) =>
    native.storeOpen(data, crc, intent, size, blockSize, create, (err, handle) => (err ? reject(err) : resolve(handle!))),
  )
const write = (h: StoreHandle, offset: number, buf: Uint8Array) => done((cb) => native.storeWrite(h, offset, buf, cb))
const read = (h: StoreHandle, offset: number, buf: Uint8Array) => done((cb) => native.storeRead(h, offset, buf, cb))
const flush = (h: StoreHandle) => done((cb) => native.storeFlush(h, cb))
const close = (h: StoreHandle) => done((cb) => native.storeClose(h, cb))

async function readAll(h: StoreHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length)
  await read(h, offset, buf)
  return buf
}

/** Fails with the first differing offset instead of a huge diff. */
function sameBytes(t: ExecutionContext, actual: Uint8Array, expected: Uint8Array, what: string): void {
  if (Buffer.compare(actual, expected) === 0) return void t.pass()
  let i = 0
  while (i < actual.length && actual[i] === expected[i]) i++
  t.fail(`${what}: first difference at byte ${i} (got ${actual[i]}, want ${expected[i]}; lengths ${actual.length}/${expected.length})`)
}

/** Small seeded PRNG (mulberry32) so a failing sequence can be replayed. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return Math.floor((((x ^ (x >>> 14)) >>> 0) / 4294967296) * n)
  }
}

interface Fixture {
  h: StoreHandle
  data: string
  crc: string
  dir: string
}

async function fresh(t: ExecutionContext, size = MiB, blockSize = BS): Promise<Fixture> {
  const dir = tempDir(t)
  const data = path.join(dir, 'data')
  const crc = path.join(dir, 'crc')
  const h = await open(data, crc, size, blockSize, true)
  t.teardown(() => close(h))
  return { h, data, crc, dir }
}

function patchFile(file: string, offset: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'r+')
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offset)
  } finally {
    fs.closeSync(fd)
  }
}

function flipByte(file: string, offset: number, mask = 0x01): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const b = Buffer.alloc(1)
    fs.readSync(fd, b, 0, 1, offset)
    b[0] = b[0]! ^ mask
    fs.writeSync(fd, b, 0, 1, offset)
  } finally {
    fs.closeSync(fd)
  }
}

// ---- open / create ---------------------------------------------------------

test('create, write, close, reopen and read back', async (t) => {
  const { h, data, crc } = await fresh(t, 4 * MiB)
  t.is(fs.statSync(data).size, 4 * MiB)
  t.is(fs.statSync(crc).size, (4 * MiB / BS) * 4)
  const payload = randomBytes(3 * BS + 17)
  await write(h, MiB + 5, payload)
  await close(h)

  const again = await open(data, crc, 4 * MiB, BS, false)
  t.teardown(() => close(again))
  sameBytes(t, await readAll(again, MiB + 5, payload.length), payload, 'reopened')
})

test('create refuses existing files with EEXIST and leaves nothing behind', async (t) => {
  const { h, data, crc, dir } = await fresh(t)
  await close(h)
  const err = await t.throwsAsync<NativeError>(open(data, crc, MiB, BS, true), { code: 'EEXIST' })
  t.is(err?.syscall, 'open')
  t.is(typeof err?.errno, 'number')
  t.true(err?.message.includes(data))

  const crcOnly = path.join(dir, 'crc-only')
  const newData = path.join(dir, 'new-data')
  fs.writeFileSync(crcOnly, '')
  await t.throwsAsync(open(newData, crcOnly, MiB, BS, true), { code: 'EEXIST' })
  t.false(fs.existsSync(newData), 'the half-created data file was removed')
  t.true(fs.existsSync(crcOnly), 'the pre-existing file was left alone')
})

test('open checks that the files exist and have the right sizes', async (t) => {
  const { h, data, crc, dir } = await fresh(t)
  await close(h)
  const wrongSize = await t.throwsAsync<NativeError>(open(data, crc, 2 * MiB, BS, false), { code: 'EINVAL' })
  t.regex(wrongSize!.message, /data file .*data has 1048576 bytes, expected 2097152/)

  const missing = await t.throwsAsync<NativeError>(open(path.join(dir, 'nope'), crc, MiB, BS, false), { code: 'ENOENT' })
  t.is(missing?.errno, os.constants.errno.ENOENT)
  t.is(missing?.syscall, 'open')

  fs.truncateSync(crc, 100)
  const badCrc = await t.throwsAsync<NativeError>(open(data, crc, MiB, BS, false), { code: 'EINVAL' })
  t.true(badCrc?.message.includes(crc))
})

test('open validates size and block size (EINVAL)', async (t) => {
  const dir = tempDir(t)
  let n = 0
  const attempt = (size: number, bs: number) => {
    n++
    return open(path.join(dir, `d${n}`), path.join(dir, `c${n}`), size, bs, true)
  }
  for (const bs of [0, 256, 1000, 4097, 131072]) {
    await t.throwsAsync(attempt(MiB, bs), { code: 'EINVAL' }, `block size ${bs}`)
  }
  for (const size of [0, -4096, BS + 1]) {
    await t.throwsAsync(attempt(size, BS), { code: 'EINVAL' }, `size ${size}`)
  }
  for (const bs of [512, 65536]) {
    const h = await attempt(MiB, bs)
    await close(h)
  }
  t.deepEqual(fs.readdirSync(dir).sort(), ['c9', 'c9.intent', 'c10', 'c10.intent', 'd9', 'd10'].sort(), 'failed creates left no files')
})

test('wrong argument types throw TypeError synchronously', async (t) => {
  const { h } = await fresh(t)
  const buf = Buffer.alloc(BS)
  const cb = () => t.fail('callback must not run')
  const loose = native as unknown as Record<string, (...args: unknown[]) => unknown>
  const bad: Array<[string, unknown[]]> = [
    ['storeWrite', [{}, 0, buf, cb]],
    ['storeWrite', [null, 0, buf, cb]],
    ['storeWrite', [h, '0', buf, cb]],
    ['storeWrite', [h, 1.5, buf, cb]],
    ['storeWrite', [h, Number.NaN, buf, cb]],
    ['storeWrite', [h, 2 ** 60, buf, cb]],
    ['storeWrite', [h, 0, 'text', cb]],
    ['storeWrite', [h, 0, new Uint16Array(8), cb]],
    ['storeWrite', [h, 0, buf]],
    ['storeRead', [h, 0, new DataView(new ArrayBuffer(8)), cb]],
    ['storeFlush', [h, 'cb']],
    ['storeClose', [{}, cb]],
    ['storeOpen', ['/tmp/a', '/tmp/b', '/tmp/c', MiB, BS, 'yes', cb]],
    ['storeOpen', ['/tmp/a', 7, '/tmp/c', MiB, BS, true, cb]],
    ['storeOpen', ['/tmp/a', '/tmp/b', MiB, BS, true, cb]],
    ['storeOpen', ['/tmp/a', '/tmp/b', '/tmp/c', MiB, BS, true]],
    ['storeRecovery', [{}]],
    ['storeSetIntentIdle', [h, -1]],
    ['storeAbandon', [h]],
  ]
  for (const [fn, args] of bad) {
    t.throws(() => loose[fn]!(...args), { instanceOf: TypeError }, `${fn}(${args.map((a) => typeof a).join(', ')})`)
  }
  await flush(h) // the store is still fine
})

// ---- reads and writes ------------------------------------------------------

test('unwritten regions read as zeros, partial blocks included', async (t) => {
  const { h } = await fresh(t)
  sameBytes(t, await readAll(h, 0, MiB), Buffer.alloc(MiB), 'whole store')
  sameBytes(t, await readAll(h, 4095, 2), Buffer.alloc(2), 'across a block edge')
  sameBytes(t, await readAll(h, 100, 10), Buffer.alloc(10), 'inside one block')
  await read(h, MiB, Buffer.alloc(0))
  t.pass()
})

for (const blockSize of [512, 4096, 65536]) {
  test(`aligned and unaligned writes read back like a model (block size ${blockSize})`, async (t) => {
    const size = 4 * MiB
    const { h } = await fresh(t, size, blockSize)
    const model = Buffer.alloc(size)
    const seed = Date.now() >>> 0
    const r = rng(seed)
    for (let i = 0; i < 300; i++) {
      const kind = r(4)
      let offset: number
      let len: number
      if (kind === 0) {
        offset = r(size / blockSize) * blockSize // aligned
        len = Math.min(size - offset, (1 + r(4)) * blockSize)
      } else if (kind === 1) {
        offset = r(size) // small, unaligned
        len = Math.min(size - offset, 1 + r(blockSize * 2))
      } else if (kind === 2) {
        offset = r(size - 1) // spanning many blocks, unaligned ends
        len = Math.min(size - offset, 1 + r(64 * blockSize))
      } else {
        offset = r(size) // inside one block
        len = Math.min(size - offset, 1 + r(blockSize - (offset % blockSize)))
      }
      const data = randomBytes(len)
      await write(h, offset, data)
      data.copy(model, offset)
      if (i % 25 === 0) {
        const ro = r(size)
        const rl = Math.min(size - ro, 1 + r(8 * blockSize))
        sameBytes(t, await readAll(h, ro, rl), model.subarray(ro, ro + rl), `seed ${seed} step ${i} read ${ro}+${rl}`)
      }
    }
    sameBytes(t, await readAll(h, 0, size), model, `seed ${seed} final`)
    // Odd-sized reads at odd offsets, including a single byte at the very end.
    for (const [ro, rl] of [[1, 1], [blockSize - 1, 2], [size - 1, 1], [3, 3 * blockSize + 5]] as const) {
      sameBytes(t, await readAll(h, ro, rl), model.subarray(ro, ro + rl), `read ${ro}+${rl}`)
    }
  })
}

test('buffers that are views into larger memory are read and written in place', async (t) => {
  const { h } = await fresh(t)
  const backing = new Uint8Array(3 * BS)
  backing.fill(0xee)
  const src = backing.subarray(7, 7 + BS)
  src.set(randomBytes(BS))
  await write(h, 2 * BS, src)
  const dest = new Uint8Array(4 * BS).fill(0x11)
  await read(h, 2 * BS, dest.subarray(5, 5 + BS))
  sameBytes(t, dest.subarray(5, 5 + BS), src, 'payload')
  t.is(dest[4], 0x11, 'byte before the view untouched')
  t.is(dest[5 + BS], 0x11, 'byte after the view untouched')
})

test('out-of-range writes and reads fail with ERANGE and change nothing', async (t) => {
  const size = MiB
  const { h, data } = await fresh(t, size)
  const buf = Buffer.alloc(20, 0xab)
  const cases: Array<[number, Uint8Array]> = [
    [size - 10, buf],
    [size, buf],
    [size + BS, buf],
    [-1, buf],
    [-BS, Buffer.alloc(BS)],
    [Number.MAX_SAFE_INTEGER, buf],
    [0, Buffer.alloc(size + 1)],
  ]
  for (const [offset, b] of cases) {
    const err = await t.throwsAsync<NativeError>(write(h, offset, b), { code: 'ERANGE' }, `write at ${offset}`)
    t.true(err?.message.includes(data))
    await t.throwsAsync(read(h, offset, Buffer.alloc(b.length)), { code: 'ERANGE' }, `read at ${offset}`)
  }
  await write(h, size, Buffer.alloc(0)) // empty at the end is fine
  sameBytes(t, await readAll(h, 0, size), Buffer.alloc(size), 'nothing written')
})

// ---- concurrency -----------------------------------------------------------

test('hundreds of concurrent writes sharing blocks and reads see whole blocks, never a checksum error', async (t) => {
  const size = 2 * MiB
  const { h } = await fresh(t, size)
  const seed = Date.now() >>> 0
  const r = rng(seed)
  const before = randomBytes(size)
  await write(h, 0, before)

  // Cut the store into disjoint byte ranges; write 60% of them concurrently.
  // Neighbours share blocks, so each merge must see the other's result.
  const after = Buffer.from(before)
  const writes: Array<[number, Buffer]> = []
  for (let offset = 0; offset < size; ) {
    const len = Math.min(size - offset, 1 + r(3 * BS))
    if (r(10) < 6) {
      const data = Buffer.from(before.subarray(offset, offset + len).map((b) => b ^ (1 + r(255))))
      writes.push([offset, data])
      data.copy(after, offset)
    }
    offset += len
  }

  const ops: Array<Promise<void>> = []
  const order = writes.map((_, i) => i).sort(() => r(3) - 1)
  let readsChecked = 0
  const checkRead = async (offset: number, len: number) => {
    const got = await readAll(h, offset, len)
    for (let i = 0; i < len; i++) {
      const at = offset + i
      if (got[i] !== before[at] && got[i] !== after[at]) {
        t.fail(`seed ${seed}: byte ${at} is neither old nor new`)
        return
      }
    }
    readsChecked++
  }
  for (const i of order) {
    const [offset, data] = writes[i]!
    ops.push(write(h, offset, data))
    if (r(2) === 0) {
      const ro = r(size)
      ops.push(checkRead(ro, Math.min(size - ro, 1 + r(8 * BS))))
    }
  }
  t.true(ops.length > 200, `${ops.length} requests in flight`)
  await Promise.all(ops)
  t.true(readsChecked > 50)
  sameBytes(t, await readAll(h, 0, size), after, `seed ${seed} final`)
})

test('concurrent writes of one multi-region range are atomic: no read sees a mix', async (t) => {
  const { h } = await fresh(t, 2 * MiB)
  const offset = 1000 // unaligned, and spanning several lock regions
  const len = 600_000
  const ops: Array<Promise<void>> = []
  const seen = new Set<number>()
  for (let i = 1; i <= 40; i++) {
    ops.push(write(h, offset, Buffer.alloc(len, i)))
    ops.push(
      readAll(h, offset, len).then((got) => {
        const v = got[0]!
        t.true(got.every((b) => b === v), 'a read saw parts of two writes')
        seen.add(v)
      }),
    )
  }
  await Promise.all(ops)
  const final = await readAll(h, offset, len)
  const v = final[0]!
  t.true(v >= 1 && v <= 40)
  t.true(final.every((b) => b === v), 'final content mixes writes')
  sameBytes(t, await readAll(h, 0, offset), Buffer.alloc(offset), 'bytes before the range')
  sameBytes(t, await readAll(h, offset + len, 2 * MiB - offset - len), Buffer.alloc(2 * MiB - offset - len), 'bytes after')
})

// ---- corruption ------------------------------------------------------------

test('a bit flipped in the data file fails reads of that block only', async (t) => {
  const { h, data } = await fresh(t)
  const content = randomBytes(10 * BS)
  await write(h, 0, content)
  flipByte(data, 5 * BS + 123, 0x10)

  const err = await t.throwsAsync<NativeError>(read(h, 5 * BS, Buffer.alloc(BS)), { code: 'ECHECKSUM' })
  t.is(err?.block, 5)
  t.is(err?.message, `checksum mismatch in block 5 of ${data}`)
  await t.throwsAsync(read(h, 0, Buffer.alloc(10 * BS)), { code: 'ECHECKSUM', message: /block 5 / })
  // A partial read must not hand out the unverified bytes either.
  await t.throwsAsync(read(h, 5 * BS + 200, Buffer.alloc(10)), { code: 'ECHECKSUM' })
  // Nor may a partial write re-checksum the corrupt block.
  await t.throwsAsync(write(h, 5 * BS + 10, Buffer.alloc(10, 1)), { code: 'ECHECKSUM' })
  await t.throwsAsync(read(h, 5 * BS, Buffer.alloc(BS)), { code: 'ECHECKSUM' })

  sameBytes(t, await readAll(h, 0, 5 * BS), content.subarray(0, 5 * BS), 'blocks before')
  sameBytes(t, await readAll(h, 6 * BS, 4 * BS), content.subarray(6 * BS), 'blocks after')
  sameBytes(t, await readAll(h, 7 * BS - 1, 2), content.subarray(7 * BS - 1, 7 * BS + 1), 'across the next blocks\' edge')

  // A whole-block write repairs it (this is how read repair rewrites a block).
  const repaired = randomBytes(BS)
  await write(h, 5 * BS, repaired)
  sameBytes(t, await readAll(h, 5 * BS, BS), repaired, 'repaired block')
})

test('a corrupted crc entry is detected too', async (t) => {
  const { h, crc } = await fresh(t)
  await write(h, 0, randomBytes(8 * BS))
  flipByte(crc, 3 * 4 + 2, 0x80)
  const err = await t.throwsAsync<NativeError>(read(h, 0, Buffer.alloc(8 * BS)), { code: 'ECHECKSUM' })
  t.is(err?.block, 3)

  // A zeroed entry for a written block must not pass for "never written".
  patchFile(crc, 6 * 4, Buffer.alloc(4))
  await t.throwsAsync(read(h, 6 * BS, Buffer.alloc(BS)), { code: 'ECHECKSUM', message: /block 6 / })
  // And a block of zeros written through the store has a real crc.
  await write(h, 10 * BS, Buffer.alloc(BS))
  sameBytes(t, await readAll(h, 10 * BS, BS), Buffer.alloc(BS), 'written zeros')
})

test('zeroed data under a real crc (a lost write) is detected', async (t) => {
  const { h, data } = await fresh(t)
  await write(h, 2 * BS, Buffer.alloc(BS, 0x5a))
  patchFile(data, 2 * BS, Buffer.alloc(BS))
  await t.throwsAsync(read(h, 2 * BS, Buffer.alloc(BS)), { code: 'ECHECKSUM', message: /block 2 / })
})

// ---- flush -----------------------------------------------------------------

test('flush succeeds and the data survives a reopen', async (t) => {
  const { h, data, crc } = await fresh(t)
  const payload = randomBytes(5 * BS)
  await write(h, 7, payload)
  await flush(h)
  await Promise.all([flush(h), write(h, 9 * BS, payload), flush(h)])
  await close(h)
  const again = await open(data, crc, MiB, BS, false)
  t.teardown(() => close(again))
  sameBytes(t, await readAll(again, 7, payload.length), payload, 'after flush')
})

// ---- close -----------------------------------------------------------------

test('close waits for in-flight writes; later calls fail ECLOSED', async (t) => {
  const { h, data, crc } = await fresh(t)
  const events: string[] = []
  const payload = randomBytes(BS)
  const writes = Array.from({ length: 100 }, (_, i) =>
    new Promise<string>((resolve) =>
      native.storeWrite(h, i * BS, payload, (err) => {
        const what = err ? err.code : 'ok'
        events.push(what)
        resolve(what)
      }),
    ),
  )
  const closed = new Promise<NativeError | null>((resolve) =>
    native.storeClose(h, (err) => {
      events.push('closed')
      resolve(err)
    }),
  )
  // Requested while closing: refused.
  await t.throwsAsync(write(h, 0, payload), { code: 'ECLOSED' })

  const results = await Promise.all(writes)
  t.is(await closed, null)
  t.is(events.at(-1), 'closed', 'close called back after every write')
  t.true(results.every((r) => r === 'ok' || r === 'ECLOSED'))

  for (const call of [
    () => write(h, 0, payload),
    () => read(h, 0, Buffer.alloc(BS)),
    () => flush(h),
  ]) {
    const err = await t.throwsAsync<NativeError>(call(), { code: 'ECLOSED' })
    t.true(err?.message.includes(data))
  }

  const again = await open(data, crc, MiB, BS, false)
  t.teardown(() => close(again))
  for (let i = 0; i < 100; i++) {
    if (results[i] === 'ok') sameBytes(t, await readAll(again, i * BS, BS), payload, `write ${i}`)
  }
})

test('close twice, or while closing, is harmless and answers in order', async (t) => {
  const { h } = await fresh(t)
  const order: string[] = []
  const pending = [write(h, 0, Buffer.alloc(MiB, 1)), write(h, 0, Buffer.alloc(MiB, 2))]
  const first = close(h).then(() => order.push('first'))
  const second = close(h).then(() => order.push('second'))
  await Promise.all([...pending, first, second])
  t.deepEqual(order, ['first', 'second'])
  await close(h)
  await close(h)
  t.pass()
})

// ---- event loop, threads, lifetime ----------------------------------------

// Serial: ava runs these before the concurrent tests, whose own JS work would
// otherwise show up as gaps here.
test.serial('a 64 MiB burst of 1 MiB writes and reads does not block the event loop', async (t) => {
  const { h } = await fresh(t, 64 * MiB)
  const chunks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(MiB, i + 1))
  const back = Array.from({ length: 64 }, () => Buffer.alloc(MiB)) // allocated up front: mmap stalls are not the point
  let ticks = 0
  let last = performance.now()
  let maxGap = 0
  const timer = setInterval(() => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    ticks++
  }, 1)
  const started = performance.now()
  try {
    await Promise.all(chunks.map((c, i) => write(h, i * MiB, c)))
    await Promise.all(back.map((b, i) => read(h, i * MiB, b)))
    back.forEach((b, i) => sameBytes(t, b, chunks[i]!, `chunk ${i}`))
  } finally {
    clearInterval(timer)
  }
  const elapsed = performance.now() - started
  t.log(`burst took ${elapsed.toFixed(0)} ms; ${ticks} ticks, longest gap ${maxGap.toFixed(1)} ms`)
  // Blocking I/O on the loop would stall it for about the whole burst; the
  // bound is loose because other test processes compete for the 2 cores.
  t.true(ticks >= 5, `only ${ticks} ticks in ${elapsed.toFixed(0)} ms`)
  t.true(maxGap < elapsed / 2, `the loop stalled for ${maxGap.toFixed(0)} of ${elapsed.toFixed(0)} ms`)
})

test('works from worker threads, and a terminated worker does not take the process down', async (t) => {
  const { Worker } = await import('node:worker_threads')
  const dir = tempDir(t)
  const binding = path.join(__dirname, '..', '..', 'src', 'native', 'binding.js')
  const code = `
    const { parentPort, workerData } = require('node:worker_threads')
    const { native } = require(workerData.binding)
    const p = (f) => new Promise((res, rej) => f((e, v) => (e ? rej(e) : res(v))))
    ;(async () => {
      const h = await p((cb) => native.storeOpen(workerData.data, workerData.crc, workerData.crc + '.intent', 1 << 20, 4096, true, cb))
      const buf = Buffer.alloc(4096 * 3 + 1, workerData.fill)
      await p((cb) => native.storeWrite(h, 4095, buf, cb))
      const back = Buffer.alloc(buf.length)
      await p((cb) => native.storeRead(h, 4095, back, cb))
      if (workerData.hang) {
        // Leave every kind of callback pending (successes, errors, results).
        for (let i = 0; i < 16; i++) {
          native.storeWrite(h, 0, Buffer.alloc(1 << 20, 1), () => {})
          native.storeRead(h, 100, Buffer.alloc(5000), () => {})
          native.storeRead(h, 1 << 30, Buffer.alloc(1), () => {})
        }
        if (workerData.fill % 2 === 0) native.storeClose(h, () => {})
        native.storeOpen(workerData.data + '2', workerData.crc + '2', workerData.crc + '2.intent', 1 << 20, 4096, true, () => {})
        parentPort.postMessage('busy')
        return
      }
      await p((cb) => native.storeClose(h, cb))
      parentPort.postMessage(back.equals(buf) ? 'ok' : 'mismatch')
    })().catch((e) => parentPort.postMessage('error: ' + e.message))
  `
  const run = (name: string, fill: number, hang = false) => {
    const worker = new Worker(code, {
      eval: true,
      workerData: { binding, data: path.join(dir, `${name}.data`), crc: path.join(dir, `${name}.crc`), fill, hang },
    })
    return new Promise<string>((resolve, reject) => {
      worker.once('message', (m: string) => {
        if (hang) setTimeout(() => void worker.terminate().then(() => resolve(m), reject), fill % 5)
        else resolve(m)
      })
      worker.once('error', reject)
    })
  }
  t.deepEqual(await Promise.all([run('a', 1), run('b', 2)]), ['ok', 'ok'])
  // Terminating a worker while its callbacks are pending once killed the
  // process (node-addon-api turned the failed calls into a fatal error).
  for (let i = 0; i < 20; i++) t.is(await run(`t${i}`, i, true), 'busy')
  // The main thread's addon instance is unaffected.
  const { h } = await fresh(t)
  await write(h, 0, Buffer.alloc(BS, 7))
  sameBytes(t, await readAll(h, 0, BS), Buffer.alloc(BS, 7), 'main thread')
})

test('a handle dropped without close() is freed by GC, files closed', async (t) => {
  const v8 = await import('node:v8')
  const vm = await import('node:vm')
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc') as () => void
  const dir = tempDir(t)
  const openInDir = () =>
    fs.readdirSync('/proc/self/fd').flatMap((fd) => {
      try {
        const target = fs.readlinkSync(`/proc/self/fd/${fd}`)
        return target.startsWith(dir) ? [target] : []
      } catch {
        return []
      }
    })
  const fdsInDir = () => openInDir().length
  // Open and use the store in a callback chain that keeps no reference after.
  await new Promise<void>((resolve, reject) =>
    native.storeOpen(path.join(dir, 'data'), path.join(dir, 'crc'), path.join(dir, 'intent'), MiB, BS, true, (err, h) => {
      if (err) return reject(err)
      // data, crc and intent map; the data file may be open twice (once O_DIRECT).
      t.is(new Set(openInDir()).size, 3)
      native.storeWrite(h!, 0, Buffer.alloc(BS, 1), (werr) => (werr ? reject(werr) : resolve()))
    }),
  )
  for (let i = 0; i < 20 && fdsInDir() > 0; i++) {
    gc()
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  t.is(fdsInDir(), 0)
})

test('a block written as zeros stores crc 0, like a block never written', async (t) => {
  const f = await fresh(t)
  const data = Buffer.alloc(3 * BS)
  data.fill(7, BS, 2 * BS)
  await write(f.h, 0, data)
  await flush(f.h)
  const crcs = fs.readFileSync(f.crc)
  t.is(crcs.readUInt32LE(0), 0, 'zero block')
  t.is(crcs.readUInt32LE(4), native.crc32c(data.subarray(BS, 2 * BS)), 'data block')
  t.is(crcs.readUInt32LE(8), 0, 'zero block')
  sameBytes(t, await readAll(f.h, 0, 3 * BS), data, 'reads back')
})
