/**
 * Snapshot layers of one replica (src/store/layers.ts through ReplicaStore): snapshots read
 * as they were taken while the live files move on, restores, deletes by each of their ways
 * (gone, merged up, collapsed down, hidden), clones sharing layers, and crashes part way
 * through a snapshot or a collapse, finished by the next open.
 */
import test, { type ExecutionContext } from 'ava'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BLOCK_SIZE } from '../../src/constants'
import { isPxdError } from '../../src/errors'
import { layerFiles } from '../../src/store/layers'
import { overlayLayer } from '../../src/store/native-store'
import { ReplicaStore, type Superblock } from '../../src/store/replica-store'

const SIZE = 4 * 1024 * 1024

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-layers-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'replica')
}

const superblock = (dir: string): Superblock => JSON.parse(fs.readFileSync(path.join(dir, 'super.json'), 'utf8')) as Superblock

async function contents(store: ReplicaStore): Promise<string> {
  const buf = Buffer.alloc(store.size)
  await store.read(0, buf)
  return createHash('sha256').update(buf).digest('hex')
}

async function viewOf(dir: string, layer?: string): Promise<string> {
  const store = layer === undefined ? await ReplicaStore.open(dir) : await ReplicaStore.openView(dir, layer)
  try {
    return await contents(store)
  } finally {
    await store.close()
  }
}

/** A replica with `blocks` random blocks written from block `at`, closed. */
async function made(t: ExecutionContext, blocks: number, at = 0): Promise<string> {
  const dir = tempDir(t)
  const store = await ReplicaStore.create(dir, '0123456789abcdef', SIZE)
  await store.write(at * BLOCK_SIZE, randomBytes(blocks * BLOCK_SIZE))
  await store.close()
  return dir
}

async function write(dir: string, offset: number, data: Buffer): Promise<void> {
  const store = await ReplicaStore.open(dir)
  await store.write(offset, data)
  await store.close()
}

test('a snapshot reads as it was taken; the live files move on; no data is copied', async (t) => {
  const dir = await made(t, 256)
  const before = await viewOf(dir)
  const allocated = fs.statSync(path.join(dir, 'data')).blocks
  await ReplicaStore.snapshot(dir, 's1')
  t.is(fs.statSync(layerFiles(dir, 's1').data).blocks, allocated, 'the layer is the old live file')
  t.is(fs.statSync(path.join(dir, 'data')).blocks, 0, 'the new live file is empty')
  await write(dir, 10 * BLOCK_SIZE, randomBytes(3 * BLOCK_SIZE + 100))
  await write(dir, 300 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE)) // zeros over nothing
  t.is(await viewOf(dir, 's1'), before)
  t.not(await viewOf(dir), before)
  const view = await ReplicaStore.openView(dir, 's1')
  const err = await t.throwsAsync(view.write(0, Buffer.alloc(BLOCK_SIZE)))
  t.true(isPxdError(err, 'READ_ONLY'), String(err))
  await view.close()
  const dup = await t.throwsAsync(ReplicaStore.snapshot(dir, 's1'))
  t.true(isPxdError(dup, 'ALREADY_EXISTS'), String(dup))
})

test('restore: the replica reads as the snapshot, later snapshots keep theirs; an unknown one is refused', async (t) => {
  const dir = await made(t, 64)
  await ReplicaStore.snapshot(dir, 's1')
  const s1 = await viewOf(dir, 's1')
  await write(dir, 0, randomBytes(8 * BLOCK_SIZE))
  await ReplicaStore.snapshot(dir, 's2')
  const s2 = await viewOf(dir, 's2')
  await write(dir, 0, randomBytes(8 * BLOCK_SIZE))
  await ReplicaStore.restore(dir, 's1')
  t.is(await viewOf(dir), s1)
  t.is(await viewOf(dir, 's2'), s2)
  const err = await t.throwsAsync(ReplicaStore.restore(dir, 'nope'))
  t.true(isPxdError(err, 'NOT_FOUND'), String(err))
})

test('delete, closed: small live files are copied down into the layer, which takes their place; the view is the same', async (t) => {
  const dir = await made(t, 512)
  await ReplicaStore.snapshot(dir, 's1')
  await write(dir, 5 * BLOCK_SIZE, randomBytes(2 * BLOCK_SIZE))
  const view = await viewOf(dir)
  await ReplicaStore.removeSnapshot(dir, 's1', undefined)
  t.false(fs.existsSync(layerFiles(dir, 's1').dir))
  t.is(superblock(dir).parent, undefined)
  t.deepEqual(superblock(dir).layers, {})
  t.is(await viewOf(dir), view)
})

test('delete, closed: a small layer under large live files is merged up into them', async (t) => {
  const dir = await made(t, 4)
  await ReplicaStore.snapshot(dir, 's1')
  await write(dir, 100 * BLOCK_SIZE, randomBytes(400 * BLOCK_SIZE))
  const view = await viewOf(dir)
  await ReplicaStore.removeSnapshot(dir, 's1', undefined)
  t.false(fs.existsSync(layerFiles(dir, 's1').dir))
  t.is(await viewOf(dir), view)
})

test('delete, open: a large layer under small live files stays hidden (nothing copied while written); a small one is merged up with writes going on', async (t) => {
  const dir = await made(t, 512)
  await ReplicaStore.snapshot(dir, 's1')
  const open = await ReplicaStore.open(dir)
  t.teardown(() => open.close())
  await open.write(0, randomBytes(BLOCK_SIZE))
  await ReplicaStore.removeSnapshot(dir, 's1', open)
  t.true(superblock(dir).layers?.s1?.hidden)
  t.deepEqual(open.superblock.layers, superblock(dir).layers)
  // Larger than the layer now: the next delete collects it, merged up into the open live files.
  await open.write(BLOCK_SIZE * 100, randomBytes(BLOCK_SIZE * 700))
  const now = await contents(open)
  await open.close()
  await ReplicaStore.snapshot(dir, 's2')
  const again = await ReplicaStore.open(dir)
  await again.write(0, randomBytes(BLOCK_SIZE * 1000))
  const later = await contents(again)
  await ReplicaStore.removeSnapshot(dir, 's2', again)
  t.is(await contents(again), later)
  await again.close()
  t.deepEqual(superblock(dir).layers, {}, 'merged up and gone')
  t.is(await viewOf(dir), later)
  t.not(now, later)
})

test('delete of a layer under another snapshot: the later snapshot and the volume read the same', async (t) => {
  for (const [first, second] of [[512, 8], [8, 512]] as const) {
    const dir = await made(t, first)
    await ReplicaStore.snapshot(dir, 's1')
    await write(dir, 0, randomBytes(second * BLOCK_SIZE))
    await ReplicaStore.snapshot(dir, 's2')
    await write(dir, 0, randomBytes(BLOCK_SIZE))
    const [s2, live] = [await viewOf(dir, 's2'), await viewOf(dir)]
    await ReplicaStore.removeSnapshot(dir, 's1', undefined)
    t.deepEqual(Object.keys(superblock(dir).layers ?? {}), ['s2'], `${first}/${second}`)
    t.is(superblock(dir).layers!.s2!.parent, undefined)
    t.is(await viewOf(dir, 's2'), s2, `${first}/${second}: s2`)
    t.is(await viewOf(dir), live, `${first}/${second}: live`)
  }
})

test('a clone shares the layers by hard links; writes to either never reach the other; a shared layer is never merged', async (t) => {
  const dir = await made(t, 256)
  await ReplicaStore.snapshot(dir, 's1')
  const snap = await viewOf(dir, 's1')
  const cloneDir = path.join(path.dirname(dir), 'clone')
  const clone = await ReplicaStore.clone(dir, 's1', cloneDir, 'fedcba9876543210')
  t.is(fs.statSync(layerFiles(cloneDir, 's1').data).nlink, 2)
  t.is(await contents(clone), snap)
  await clone.write(0, randomBytes(BLOCK_SIZE * 4))
  await clone.close()
  await write(dir, BLOCK_SIZE * 8, randomBytes(BLOCK_SIZE * 4))
  t.is(await viewOf(dir, 's1'), snap, 'the source snapshot is as it was')
  const cloneView = await viewOf(cloneDir)
  await ReplicaStore.removeSnapshot(dir, 's1', undefined)
  t.true(superblock(dir).layers?.s1?.hidden, 'shared with the clone: kept, hidden')
  t.is(await viewOf(cloneDir), cloneView)
  await ReplicaStore.destroy(dir)
  t.is(await viewOf(cloneDir), cloneView, 'the clone outlives its source')
})

test('a snapshot cut short by a crash is finished by the next open, whichever step it reached', async (t) => {
  for (const step of ['pending', 'data moved', 'both moved', 'new data made']) {
    const dir = await made(t, 32)
    const before = await viewOf(dir)
    const sb = superblock(dir)
    const f = layerFiles(dir, 's1')
    fs.writeFileSync(path.join(dir, 'super.json'), JSON.stringify({ ...sb, pending: { op: 'snapshot', layer: 's1', at: new Date().toISOString() } }))
    if (step !== 'pending') {
      fs.mkdirSync(f.dir, { recursive: true })
      fs.renameSync(path.join(dir, 'data'), f.data)
    }
    if (step === 'both moved' || step === 'new data made') fs.renameSync(path.join(dir, 'crc'), f.crc)
    if (step === 'new data made') fs.writeFileSync(path.join(dir, 'data'), Buffer.alloc(100))
    t.is(await viewOf(dir), before, `${step}: the volume`)
    t.is(await viewOf(dir, 's1'), before, `${step}: the snapshot`)
    t.is(superblock(dir).pending, undefined)
    t.is(superblock(dir).parent, 's1')
  }
})

test('a collapse cut short by a crash is finished by the next open', async (t) => {
  for (const step of ['pending', 'data renamed']) {
    const dir = await made(t, 512)
    await ReplicaStore.snapshot(dir, 's1')
    await write(dir, 0, randomBytes(3 * BLOCK_SIZE))
    const view = await viewOf(dir)
    const sb = superblock(dir)
    fs.writeFileSync(path.join(dir, 'super.json'), JSON.stringify({ ...sb, pending: { op: 'collapse', layer: 's1', child: 'live' } }))
    if (step === 'data renamed') {
      // The copy down ran, then one file of two was renamed over the live one.
      const f = layerFiles(dir, 's1')
      await overlayLayer({ data: path.join(dir, 'data'), crc: path.join(dir, 'crc') }, f)
      fs.renameSync(f.data, path.join(dir, 'data'))
    }
    t.is(await viewOf(dir), view, step)
    t.false(fs.existsSync(layerFiles(dir, 's1').dir), step)
    t.is(superblock(dir).pending, undefined)
  }
})

test('a layer left hidden while its replica was open goes once it is closed (collectHidden), the smaller side copied', async (t) => {
  const dir = await made(t, 512)
  await ReplicaStore.snapshot(dir, 's1')
  const open = await ReplicaStore.open(dir)
  await open.write(BLOCK_SIZE * 1000, randomBytes(BLOCK_SIZE * 8))
  await ReplicaStore.removeSnapshot(dir, 's1', open)
  t.true(superblock(dir).layers?.s1?.hidden)
  const view = await contents(open)
  await open.close()
  t.true(await ReplicaStore.collectHidden(dir))
  t.deepEqual(superblock(dir).layers, {})
  t.is(superblock(dir).parent, undefined)
  t.is(await viewOf(dir), view)
  t.false(await ReplicaStore.collectHidden(dir), 'nothing left to do')
})
