import test from 'ava'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isPxdError } from '../../src/errors'
import { openKvdb, parseEtcdSpec } from '../../src/kvdb/open'

test('no kvdb setting opens the embedded store under the data dir', async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'pxd-kvdb-open-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  for (const spec of [undefined, '', '  ']) {
    const db = await openKvdb(spec, { dataDir, clusterId: 'c1' })
    t.is(db.description, 'embedded')
    await db.put('a', 1)
    await db.close()
  }
  t.true(existsSync(path.join(dataDir, 'kvdb.json')))
})

test('etcd:// specs become http endpoints', (t) => {
  t.deepEqual(parseEtcdSpec('etcd://127.0.0.1:2379'), ['http://127.0.0.1:2379'])
  t.deepEqual(parseEtcdSpec('etcd://a.example:2379, b-2:32379,[::1]:2379'), ['http://a.example:2379', 'http://b-2:32379', 'http://[::1]:2379'])
})

test('anything else is INVALID_ARGUMENT naming the accepted form', async (t) => {
  for (const spec of ['consul://x:1', 'etcd://', 'etcd://host', 'etcd://host:0', 'etcd://host:65536', 'etcd://ho st:1', 'etcd://a:1,', 'http://a:1', 'etcd://a:1/path', 'etcd://-a:1']) {
    const err = await t.throwsAsync(openKvdb(spec, { dataDir: '/nonexistent', clusterId: 'c1' }), undefined, spec)
    t.true(isPxdError(err, 'INVALID_ARGUMENT'), spec)
    t.regex(err!.message, /etcd:\/\/host:port\[,host:port\.\.\.\]/, spec)
  }
})

test('a bad cluster id is INVALID_ARGUMENT', async (t) => {
  const err = await t.throwsAsync(openKvdb('etcd://127.0.0.1:1', { dataDir: '/nonexistent', clusterId: 'a/b' }))
  t.true(isPxdError(err, 'INVALID_ARGUMENT'))
})
