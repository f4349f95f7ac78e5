/**
 * The block store (native/block_store.h) on the power-loss file system (test/faults/):
 *
 * - A power cut loses any part of the writes since the last flush: data pages, crc pages,
 *   or both. Every block must read back as a version written since the last flush, never
 *   as a checksum error: the intent map marks the regions being written, durably, and the
 *   next open rebuilds the crc of each torn block in them.
 * - Linux reports a write-back error once, and the next fdatasync succeeds without the
 *   lost pages. Once a flush failed, every later flush of the store must fail, until it is
 *   reopened.
 */
import test, { type ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import { mkdirSync, promises as fs } from 'node:fs'
import path from 'node:path'
import { native, type Callback, type NativeError, type StoreHandle } from '../../src/native/binding'
import { powerLossFsForTests } from '../helpers/power-loss'

const BS = 4096
const MiB = 1024 * 1024
const SIZE = 4 * MiB

let stores = 0
const disk = powerLossFsForTests(test, 'pxd-store-faults-')

function done(run: (cb: Callback) => void): Promise<void> {
  return new Promise((resolve, reject) => run((err) => (err ? reject(err) : resolve())))
}

/** A replica directory on the power-loss file system, its name durable. */
async function replicaDir(): Promise<string> {
  const d = path.join(disk().mountpoint, `replica-${stores++}`)
  mkdirSync(d)
  const h = await fs.open(disk().mountpoint, 'r')
  try { await h.sync() } finally { await h.close() }
  return d
}

function open(t: ExecutionContext, d: string, create: boolean): Promise<StoreHandle> {
  return new Promise((resolve, reject) =>
    native.storeOpen(path.join(d, 'data'), path.join(d, 'crc'), path.join(d, 'intent'), SIZE, BS, create, (err, h) => {
      if (err) return reject(err)
      t.teardown(() => close(h!).catch(() => undefined))
      resolve(h!)
    }),
  )
}

const write = (h: StoreHandle, offset: number, buf: Uint8Array) => done((cb) => native.storeWrite(h, offset, buf, cb))
const read = (h: StoreHandle, offset: number, buf: Uint8Array) => done((cb) => native.storeRead(h, offset, buf, cb))
const flush = (h: StoreHandle) => done((cb) => native.storeFlush(h, cb))
const close = (h: StoreHandle) => done((cb) => native.storeClose(h, cb))
const abandon = (h: StoreHandle) => done((cb) => native.storeAbandon(h, cb))

test.serial('after a power cut every block reads back as a version written since the last flush, never ECHECKSUM', async (t) => {
  const d = await replicaDir()
  let h = await open(t, d, true)
  const blocks = SIZE / BS
  // versions[b]: what block b may read back as; the first is what the last flush covered.
  const versions: Buffer[][] = Array.from({ length: blocks }, () => [Buffer.alloc(BS)])
  let rebuilt = 0
  for (let round = 0; round < 8; round++) {
    // Flushed: the starting point every block may fall back to.
    for (let b = 0; b < blocks; b++) versions[b] = [versions[b]!.at(-1)!]
    // Unflushed writes over every region, some blocks twice, one of them all zeros.
    const touched = new Set<number>()
    for (let i = 0; i < 120; i++) {
      const b = (i * 37 + round * 11) % blocks
      const data = i % 29 === 0 ? Buffer.alloc(BS) : randomBytes(BS)
      await write(h, b * BS, data)
      versions[b]!.push(data)
      touched.add(b)
    }
    await abandon(h) // the process dies...
    const cut = await disk().cut(1000 + round) // ...and then the power: a random half of the dirty pages is lost
    t.true(cut.droppedPages > 0 && cut.keptPages > 0, JSON.stringify(cut))

    h = await open(t, d, false)
    rebuilt += native.storeRecovery(h).blocks
    const buf = Buffer.alloc(BS)
    for (let b = 0; b < blocks; b++) {
      try {
        await read(h, b * BS, buf)
      } catch (err) {
        t.fail(`round ${round}: block ${b} (${touched.has(b) ? 'written' : 'not written'} since the flush): ${(err as NativeError).code} ${(err as Error).message}`)
        continue
      }
      const i = versions[b]!.findIndex((v) => v.equals(buf))
      if (i < 0) t.fail(`round ${round}: block ${b} reads as none of the ${versions[b]!.length} versions written since the last flush`)
      else versions[b] = [...versions[b]!.slice(0, 1), versions[b]![i]!] // what it now is, for the next round
    }
    await flush(h)
  }
  t.log(`${rebuilt} torn blocks had their crc rebuilt over 8 cuts`)
  t.true(rebuilt > 0, 'the cuts tore blocks (else this proves nothing)')
  await close(h)
})

test.serial('once an fdatasync failed, every later flush fails until the store is reopened', async (t) => {
  const d = await replicaDir()
  let h = await open(t, d, true)
  await write(h, 0, randomBytes(8 * BS))
  await flush(h)

  await write(h, MiB, randomBytes(4 * BS))
  await disk().failFsyncs(1)
  const first = await t.throwsAsync<NativeError>(flush(h), { code: 'EIO' })
  t.is(first?.syscall, 'fdatasync')
  t.is((await disk().status()).failedFsyncs, 1)

  // The file system would now report success: the lost pages are gone for good.
  for (let i = 0; i < 3; i++) {
    const again = await t.throwsAsync<NativeError>(flush(h), { code: 'EIO' }, `flush ${i + 1} after the failure`)
    t.regex(again!.message, /an earlier flush failed \(fdatasync failed on .*: Input\/output error\).*needs a resync/)
  }
  await write(h, 2 * MiB, randomBytes(BS)).catch(() => undefined) // writes may fail or not
  await t.throwsAsync(flush(h), { code: 'EIO' }, 'a flush after more writes fails too')
  await close(h)

  // A reopen (what a resync or a replacement does) starts afresh; blocks the failed
  // flush tore read back, the marks being left for the open to recover.
  h = await open(t, d, false)
  const buf = Buffer.alloc(4 * BS)
  await read(h, MiB, buf)
  await write(h, 3 * MiB, randomBytes(BS))
  await flush(h)
  await close(h)
  t.pass()
})
