import test from 'ava'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { EmbeddedKvdb } from '../../src/kvdb/embedded'
import { isPxdError } from '../../src/errors'

const tempFile = (t: import('ava').ExecutionContext) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-kvdb-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'kvdb.json')
}

test('put, get, list by prefix, delete', async (t) => {
  const db = await EmbeddedKvdb.open(tempFile(t))
  await db.put('volumes/a', { n: 1 })
  await db.put('volumes/b', { n: 2 })
  await db.put('nodes/x', { n: 3 })
  t.deepEqual((await db.get('volumes/a'))?.value, { n: 1 })
  t.deepEqual((await db.list('volumes/')).map((e) => e.key), ['volumes/a', 'volumes/b'])
  await db.delete('volumes/a')
  t.is(await db.get('volumes/a'), undefined)
})

test('compare-and-swap: create-if-absent and update-if-unchanged', async (t) => {
  const db = await EmbeddedKvdb.open(tempFile(t))
  t.true(await db.txn({ compares: [{ key: 'k', modRevision: 0 }], puts: [{ key: 'k', value: 1 }] }))
  t.false(await db.txn({ compares: [{ key: 'k', modRevision: 0 }], puts: [{ key: 'k', value: 2 }] }))
  const e = (await db.get<number>('k'))!
  t.true(await db.txn({ compares: [{ key: 'k', modRevision: e.modRevision }], puts: [{ key: 'k', value: 3 }] }))
  t.false(await db.txn({ compares: [{ key: 'k', modRevision: e.modRevision }], puts: [{ key: 'k', value: 4 }] }))
  t.is((await db.get<number>('k'))!.value, 3)
})

test('concurrent CAS: exactly one of many racing creators wins', async (t) => {
  const db = await EmbeddedKvdb.open(tempFile(t))
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => db.txn({ compares: [{ key: 'v', modRevision: 0 }], puts: [{ key: 'v', value: i }] })))
  t.is(results.filter(Boolean).length, 1)
})

test('survives a reopen; values are copies, not shared objects', async (t) => {
  const file = tempFile(t)
  const db = await EmbeddedKvdb.open(file)
  const value = { list: [1, 2] }
  await db.put('a', value)
  value.list.push(3)
  t.deepEqual((await db.get('a'))?.value, { list: [1, 2] })
  await db.close()
  const again = await EmbeddedKvdb.open(file)
  t.deepEqual((await again.get('a'))?.value, { list: [1, 2] })
})

test('after close every call fails with KVDB_UNAVAILABLE; close twice is fine', async (t) => {
  const db = await EmbeddedKvdb.open(tempFile(t))
  await db.close()
  await db.close()
  const err = await t.throwsAsync(db.get('a'))
  t.true(isPxdError(err, 'KVDB_UNAVAILABLE'))
})

test('a corrupt metadata file is refused, not silently replaced', async (t) => {
  const file = tempFile(t)
  writeFileSync(file, '{not json')
  const err = await t.throwsAsync(EmbeddedKvdb.open(file))
  t.true(isPxdError(err, 'KVDB_UNAVAILABLE'))
})
