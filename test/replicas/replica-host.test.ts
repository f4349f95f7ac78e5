import test from 'ava'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { ReplicaHost } from '../../src/replicas/replica-host'
import { isPxdError } from '../../src/errors'

test('a volume id that is not 16 hex digits never reaches a path: drop("..") deletes nothing', async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'pxd-host-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const keep = path.join(dataDir, 'kvdb.json')
  writeFileSync(keep, '{}')
  const host = new ReplicaHost(dataDir, pino({ level: 'silent' }))
  await host.create('0123456789abcdef', 1024 * 1024)
  for (const bad of ['..', '.', '../..', '0123456789abcdef/..', '', 'ABCDEF0123456789']) {
    const err = await t.throwsAsync(host.drop(bad))
    t.true(isPxdError(err, 'UNKNOWN_VOLUME'), `drop(${JSON.stringify(bad)}): ${String(err)}`)
    t.false(await host.exists(bad))
  }
  t.true(existsSync(keep), 'the data dir is intact')
  t.true(await host.exists('0123456789abcdef'), 'the real replica is intact')
  await host.drop('0123456789abcdef')
  t.false(await host.exists('0123456789abcdef'))
  await host.close()
})
