/**
 * The power-loss file system the fault tests put under a node's data dir: it must lose
 * exactly what a power cut loses, or the tests built on it prove nothing.
 */
import test from 'ava'
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { powerLossFsForTests } from '../helpers/power-loss'

const disk = powerLossFsForTests(test, 'pxd-plfs-')

const at = (name: string) => path.join(disk().mountpoint, name)

async function syncDir(p: string): Promise<void> {
  const h = await fs.open(p, 'r')
  try { await h.sync() } finally { await h.close() }
}

async function writeFile(p: string, data: Buffer, opts: { sync: boolean }): Promise<void> {
  const h = await fs.open(p, 'w')
  try {
    await h.write(data, 0, data.length, 0)
    if (opts.sync) await h.datasync()
  } finally {
    await h.close()
  }
}

test.serial('a write not fsynced is lost at the cut; a synced one and its synced name survive', async (t) => {
  await writeFile(at('kept'), Buffer.alloc(10_000, 1), { sync: true })
  await syncDir(disk().mountpoint)
  // Overwrite the first page and extend, never synced.
  const h = await fs.open(at('kept'), 'r+')
  await h.write(Buffer.alloc(20_000, 2), 0, 20_000, 0)
  await h.close()
  t.is((await fs.stat(at('kept'))).size, 20_000, 'processes see the cached write')
  t.true((await disk().status()).dirtyPages > 0)
  const report = await disk().cut()
  t.true(report.droppedPages >= 5, JSON.stringify(report))
  t.deepEqual(await fs.readFile(at('kept')), Buffer.alloc(10_000, 1), 'the synced contents, not the cached ones')
})

test.serial('a new file whose directory was not fsynced is gone, even with its data synced', async (t) => {
  await writeFile(at('orphan'), Buffer.alloc(4096, 3), { sync: true })
  await disk().cut()
  await t.throwsAsync(fs.stat(at('orphan')), { code: 'ENOENT' })
  await fs.mkdir(at('d'))
  await syncDir(disk().mountpoint)
  await writeFile(at('d/f'), Buffer.alloc(4096, 4), { sync: true })
  await syncDir(at('d'))
  await disk().cut()
  t.deepEqual(await fs.readFile(at('d/f')), Buffer.alloc(4096, 4))
})

test.serial('rename into place without a directory fsync is undone: the old file is back', async (t) => {
  await writeFile(at('super'), Buffer.from('old'), { sync: true })
  await syncDir(disk().mountpoint)
  await writeFile(at('super.tmp'), Buffer.from('new'), { sync: true })
  await fs.rename(at('super.tmp'), at('super'))
  t.is(readFileSync(at('super'), 'utf8'), 'new')
  const report = await disk().cut()
  t.true(report.undone.some((u) => u.startsWith('rename')), JSON.stringify(report))
  t.is(readFileSync(at('super'), 'utf8'), 'old')
  await t.throwsAsync(fs.stat(at('super.tmp')), { code: 'ENOENT' })
  // With the directory fsync it stays.
  await writeFile(at('super.tmp'), Buffer.from('new'), { sync: true })
  await fs.rename(at('super.tmp'), at('super'))
  await syncDir(disk().mountpoint)
  await disk().cut()
  t.is(readFileSync(at('super'), 'utf8'), 'new')
})

test.serial('an unlink not made durable is undone', async (t) => {
  await writeFile(at('victim'), Buffer.from('here'), { sync: true })
  await syncDir(disk().mountpoint)
  await fs.unlink(at('victim'))
  await disk().cut()
  t.is(readFileSync(at('victim'), 'utf8'), 'here')
})

test.serial('a seeded cut keeps a random part of the dirty pages, the same part for the same seed', async (t) => {
  const pages = 64
  const kept: number[][] = []
  for (let round = 0; round < 2; round++) {
    await writeFile(at('torn'), Buffer.alloc(pages * 4096, 0), { sync: true })
    await syncDir(disk().mountpoint)
    const h = await fs.open(at('torn'), 'r+')
    await h.write(Buffer.alloc(pages * 4096, 9), 0, pages * 4096, 0)
    await h.close()
    const report = await disk().cut(42)
    const data = await fs.readFile(at('torn'))
    const survivors = [...Array(pages).keys()].filter((i) => data[i * 4096] === 9)
    t.is(survivors.length, report.keptPages)
    kept.push(survivors)
  }
  t.true(kept[0]!.length > 0 && kept[0]!.length < pages, `kept ${kept[0]!.length} of ${pages}`)
  t.deepEqual(kept[0], kept[1])
})

test.serial('a stall holds every request back for its duration', async (t) => {
  await writeFile(at('s'), Buffer.from('x'), { sync: true })
  await disk().stall(1500)
  const started = Date.now()
  await fs.readFile(at('s'))
  t.true(Date.now() - started >= 1200, `read took ${Date.now() - started} ms`)
})

test.serial('an injected fsync failure returns EIO once and loses the pages, as Linux does', async (t) => {
  await writeFile(at('e'), Buffer.alloc(4096, 1), { sync: true })
  await syncDir(disk().mountpoint)
  await disk().failFsyncs(1)
  const h = await fs.open(at('e'), 'r+')
  await h.write(Buffer.alloc(4096, 2), 0, 4096, 0)
  await t.throwsAsync(h.datasync(), { code: 'EIO' })
  await h.datasync() // the next one succeeds, with nothing left to write
  await h.close()
  t.deepEqual(await fs.readFile(at('e')), Buffer.alloc(4096, 1), 'the failed write never reached the disk')
  t.is((await disk().status()).failedFsyncs, 1)
})
