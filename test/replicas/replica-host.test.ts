import test from 'ava'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { ReplicaHost } from '../../src/replicas/replica-host'
import { ReplicaService } from '../../src/replicas/replica-service'
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

test('a replica opened at a larger size grows, its written data kept; a stale epoch never grows it; a peer asking for a size the metadata store does not have is refused', async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'pxd-host-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const host = new ReplicaHost(dataDir, pino({ level: 'silent' }))
  const id = '0123456789abcdef'
  const MiB = 1024 * 1024
  await host.create(id, MiB)
  await host.open(id, MiB, 2)
  await host.write(id, 2, 4096, Buffer.alloc(4096, 7))
  await host.open(id, 2 * MiB, 3)
  t.is(host.storeFor(id, 3).size, 2 * MiB, 'grown while open')
  const back = Buffer.alloc(4096)
  await host.storeFor(id, 3).read(4096, back)
  t.true(back.equals(Buffer.alloc(4096, 7)))
  const stale = await t.throwsAsync(host.open(id, 4 * MiB, 1))
  t.true(isPxdError(stale, 'STALE_EPOCH'), String(stale))
  t.is(host.storeFor(id, 3).size, 2 * MiB, 'a stale coordinator grows nothing')

  const service = new ReplicaService({ nodeId: 'node-a', host, lookup: async () => ({ size: 2 * MiB, replicas: ['node-a'] }), grant: async () => undefined, log: pino({ level: 'silent' }) })
  const err = await t.throwsAsync(service.handle('node-b', { t: 'open', id: 1, vol: id, epoch: 3, size: 8 * MiB }))
  t.true(isPxdError(err, 'CONFLICT'), String(err))
  t.is(host.storeFor(id, 3).size, 2 * MiB, 'a peer cannot grow a replica past its record')
  await host.close()
})
