import test, { type ExecutionContext } from 'ava'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { EmbeddedKvdb } from '../../src/kvdb/embedded'
import { isPxdError } from '../../src/errors'
import { defineKvdbContract } from './contract'

const tempFile = (t: ExecutionContext) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-kvdb-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'kvdb.json')
}

defineKvdbContract('embedded', async (t) => {
  const db = await EmbeddedKvdb.open(tempFile(t))
  t.teardown(() => db.close())
  return db
})

test('embedded: survives a reopen', async (t) => {
  const file = tempFile(t)
  const db = await EmbeddedKvdb.open(file)
  await db.put('a', { list: [1, 2] })
  await db.put('b', 'bee')
  await db.delete('b')
  const before = (await db.get('a'))!
  await db.close()
  const again = await EmbeddedKvdb.open(file)
  t.deepEqual(await again.get('a'), before)
  t.is(await again.get('b'), undefined)
  await again.put('c', 1)
  t.true((await again.get('c'))!.modRevision > before.modRevision, 'revisions keep counting up')
  await again.close()
})

test('embedded: leased keys do not survive a reopen; plain keys do', async (t) => {
  const file = tempFile(t)
  const db = await EmbeddedKvdb.open(file)
  await db.put('members/n1', { addr: 'x' })
  const leased = await db.putLeased('alive/n1', { free: 1 }, 10)
  await leased.update({ free: 2 })
  t.true(readFileSync(file, 'utf8').includes('alive/n1'), 'the leased key is in the file, marked')
  await db.close()
  const again = await EmbeddedKvdb.open(file)
  t.is(await again.get('alive/n1'), undefined)
  t.deepEqual((await again.get('members/n1'))?.value, { addr: 'x' })
  await again.close()
})

test('embedded: a corrupt metadata file is refused, not silently replaced', async (t) => {
  const file = tempFile(t)
  writeFileSync(file, '{not json')
  const err = await t.throwsAsync(EmbeddedKvdb.open(file))
  t.true(isPxdError(err, 'KVDB_UNAVAILABLE'))
  t.is(readFileSync(file, 'utf8'), '{not json')
})

test('embedded: a file of an unknown version is refused', async (t) => {
  const file = tempFile(t)
  writeFileSync(file, JSON.stringify({ version: 99, revision: 1, entries: {} }))
  const err = await t.throwsAsync(EmbeddedKvdb.open(file))
  t.true(isPxdError(err, 'KVDB_UNAVAILABLE'))
})
