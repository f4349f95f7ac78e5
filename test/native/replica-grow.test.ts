/**
 * Growing a replica (ReplicaStore.grow): the data keeps its bytes and checksums, the new
 * space reads as zeros and takes writes, and a grow cut short by a crash at any step is
 * finished by the next open.
 */
import test, { type ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, promises as fs, rmSync, statSync, truncateSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BLOCK_SIZE } from '../../src/constants'
import { isPxdError } from '../../src/errors'
import { ReplicaStore } from '../../src/store/replica-store'

const MiB = 1024 * 1024

function dirFor(t: ExecutionContext): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-grow-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'r')
}

async function read(s: ReplicaStore, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length)
  await s.read(offset, buf)
  return buf
}

test('a grown replica keeps its data, reads zeros in the new space and takes writes there', async (t) => {
  const dir = dirFor(t)
  const s = await ReplicaStore.create(dir, '0123456789abcdef', 4 * MiB)
  const content = randomBytes(4 * MiB)
  await s.write(0, content)
  await s.close()
  await ReplicaStore.grow(dir, 12 * MiB)
  const g = await ReplicaStore.open(dir)
  t.teardown(() => g.close())
  t.is(g.size, 12 * MiB)
  t.is(g.superblock.growingTo, undefined)
  t.is(statSync(path.join(dir, 'crc')).size, (12 * MiB / BLOCK_SIZE) * 4)
  t.true((await read(g, 0, 4 * MiB)).equals(content), 'the old data, its checksums intact')
  t.true((await read(g, 4 * MiB, 8 * MiB)).equals(Buffer.alloc(8 * MiB)), 'zeros after it')
  const tail = randomBytes(MiB)
  await g.write(11 * MiB, tail)
  t.true((await read(g, 11 * MiB, MiB)).equals(tail))
  const err = await t.throwsAsync(g.read(12 * MiB, Buffer.alloc(BLOCK_SIZE)))
  t.true(isPxdError(err, 'INVALID_ARGUMENT'), 'nothing past the new end')
})

test('a replica never shrinks, and growing to its own size changes nothing', async (t) => {
  const dir = dirFor(t)
  const s = await ReplicaStore.create(dir, '0123456789abcdef', 4 * MiB)
  await s.close()
  const err = await t.throwsAsync(ReplicaStore.grow(dir, 2 * MiB))
  t.true(isPxdError(err, 'INVALID_ARGUMENT'), String(err))
  await ReplicaStore.grow(dir, 4 * MiB)
  const again = await ReplicaStore.open(dir)
  t.is(again.size, 4 * MiB)
  await again.close()
})

test('a grow cut short after its superblock was written (files not yet extended, or one of them) is finished by the next open', async (t) => {
  for (const extended of ['neither', 'data only'] as const) {
    const dir = dirFor(t)
    const s = await ReplicaStore.create(dir, '0123456789abcdef', 4 * MiB)
    const content = randomBytes(MiB)
    await s.write(MiB, content)
    await s.close()
    // What a crash right after the grow's superblock write leaves.
    const superFile = path.join(dir, 'super.json')
    const sb = JSON.parse(await fs.readFile(superFile, 'utf8')) as Record<string, unknown>
    await fs.writeFile(superFile, JSON.stringify({ ...sb, growingTo: 8 * MiB }))
    if (extended === 'data only') truncateSync(path.join(dir, 'data'), 8 * MiB)
    const g = await ReplicaStore.open(dir)
    t.is(g.size, 8 * MiB, extended)
    t.is(g.superblock.growingTo, undefined, extended)
    t.true((await read(g, MiB, MiB)).equals(content), extended)
    t.true((await read(g, 7 * MiB, MiB)).equals(Buffer.alloc(MiB)), extended)
    await g.close()
  }
})
