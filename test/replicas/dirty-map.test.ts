import test from 'ava'
import { mkdtempSync, promises as fsp, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { DIRTY_REGION_BYTES, DirtyMap } from '../../src/replicas/dirty-map'
import { tick } from '../engine/mem-replica'

const VOLUME = '0123456789abcdef'
const EPOCH = 3

function tmpDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-dirty-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function onDisk(dir: string): number[] {
  return (JSON.parse(readFileSync(DirtyMap.fileOf(dir, VOLUME, 'b'), 'utf8')) as { regions: number[] }).regions
}

/** Run `fn` and return the paths fs.promises.open was called with meanwhile. */
async function opensDuring(fn: () => Promise<void>): Promise<string[]> {
  const original = fsp.open
  const opened: string[] = []
  fsp.open = ((file: Parameters<typeof fsp.open>[0], ...rest: [never?, never?]) => {
    opened.push(String(file))
    return original(file, ...rest)
  }) as typeof fsp.open
  try {
    await fn()
  } finally {
    fsp.open = original
  }
  return opened
}

test('a region is on disk before mark resolves: a second mark of a region whose save is in flight waits for that save', async (t) => {
  const dir = tmpDir(t)
  const map = await DirtyMap.create(dir, VOLUME, 'b', EPOCH)
  const first = map.mark(DIRTY_REGION_BYTES + 10, 10)
  t.truthy(first)
  const second = map.mark(DIRTY_REGION_BYTES + 4096, 4096)
  t.truthy(second, 'the region is pending, not saved: the second write must wait too')
  await second
  t.deepEqual(onDisk(dir), [1])
  await first
  t.is(map.mark(DIRTY_REGION_BYTES, 1), undefined, 'once saved, a region costs nothing')
})

test('a region marked while a save runs goes to the next save, and waiting for it covers the one running', async (t) => {
  const dir = tmpDir(t)
  const map = await DirtyMap.create(dir, VOLUME, 'b', EPOCH)
  const first = map.mark(0, 1)
  await tick(0)
  const second = map.mark(2 * DIRTY_REGION_BYTES, 1)
  const both = map.mark(0, 3 * DIRTY_REGION_BYTES)
  await both
  t.deepEqual(onDisk(dir), [0, 1, 2])
  await Promise.all([first, second])
})

test.serial('a save that fails leaves its regions unsaved: the write waiting for it fails, and the next mark saves them again', async (t) => {
  const dir = tmpDir(t)
  const map = await DirtyMap.create(dir, VOLUME, 'b', EPOCH)
  const original = fsp.rename
  fsp.rename = async () => { throw Object.assign(new Error('EIO'), { code: 'EIO' }) }
  try {
    await t.throwsAsync(map.mark(0, 1) ?? Promise.resolve(), { message: 'EIO' })
  } finally {
    fsp.rename = original
  }
  t.deepEqual(onDisk(dir), [], 'not on disk')
  const again = map.mark(0, 1)
  t.truthy(again, 'not taken for saved')
  await again
  t.deepEqual(onDisk(dir), [0])
})

test.serial('the map is saved durably: its directory is fsynced after the rename, and a new dirty dir\'s parent after the mkdir', async (t) => {
  const parent = tmpDir(t)
  const dir = path.join(parent, 'dirty')
  let map: DirtyMap | undefined
  const opened = await opensDuring(async () => {
    map = await DirtyMap.create(dir, VOLUME, 'b', EPOCH)
  })
  t.true(opened.includes(parent), 'the parent is opened (to fsync it) once the dirty dir is made')
  t.true(opened.includes(dir), 'the dirty dir is opened (to fsync it) after the rename')
  const later = await opensDuring(async () => { await map!.mark(0, 1) })
  t.true(later.includes(dir), 'every save syncs the directory')
})
