import test from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import { isPxdError } from '../../src/errors'
import { keys } from '../../src/kvdb/kvdb'
import { GRANT_MAX_AGE_MS, grantRefusal, ReplicaGrants, type ReplicaGrant } from '../../src/replicas/grants'
import { ReplicaHost } from '../../src/replicas/replica-host'
import { ReplicaService } from '../../src/replicas/replica-service'
import { openKvdb, silent, sleep } from '../volumes/fakes'

const MiB = 1024 * 1024
const VOL = '0123456789abcdef'
const now = Date.parse('2026-01-01T00:00:00Z')
const grant = (o: Partial<ReplicaGrant> = {}): ReplicaGrant => ({ by: 'node-a', op: 'drop', at: new Date(now - 1000).toISOString(), token: 't', ...o })

test('the rule: only the node a fresh grant names, and only for the operation it names', (t) => {
  t.is(grantRefusal(grant(), 'node-a', 'drop', now), undefined)
  t.regex(grantRefusal(undefined, 'node-a', 'drop', now) ?? '', /grants nobody/)
  t.regex(grantRefusal(grant(), 'node-x', 'drop', now) ?? '', /to node node-a, not to node-x/)
  t.regex(grantRefusal(grant(), 'node-a', 'create', now) ?? '', /grant to drop this replica, not to create/)
  t.regex(grantRefusal(grant({ at: new Date(now - GRANT_MAX_AGE_MS).toISOString() }), 'node-a', 'drop', now) ?? '', /600 s old/)
  t.regex(grantRefusal(grant({ at: 'garbage' }), 'node-a', 'drop', now) ?? '', /unreadable/)
  t.is(grantRefusal(grant({ at: new Date(now - GRANT_MAX_AGE_MS + 1000).toISOString() }), 'node-a', 'drop', now), undefined)
})

test('a grant exists exactly while its request runs, also when the request fails; a newer grant at the key is left alone', async (t) => {
  const db = await openKvdb(t)
  const a = new ReplicaGrants(db, 'node-a')
  const seen = await a.around(VOL, 'node-b', 'create', async () => (await db.get<ReplicaGrant>(keys.replicaGrant(VOL, 'node-b')))?.value)
  t.like(seen, { by: 'node-a', op: 'create' })
  t.is(await db.get(keys.replicaGrant(VOL, 'node-b')), undefined, 'deleted after the request')
  await t.throwsAsync(a.around(VOL, 'node-b', 'drop', async () => { throw new Error('peer down') }), { message: 'peer down' })
  t.is(await db.get(keys.replicaGrant(VOL, 'node-b')), undefined, 'deleted after a failed request')

  const c = new ReplicaGrants(db, 'node-c')
  await a.around(VOL, 'node-b', 'drop', () => c.around(VOL, 'node-b', 'drop', async () => undefined).then(() => db.put(keys.replicaGrant(VOL, 'node-b'), grant({ by: 'node-c', token: 'newer' }))))
  t.like((await db.get<ReplicaGrant>(keys.replicaGrant(VOL, 'node-b')))?.value, { by: 'node-c', token: 'newer' }, 'node-a deletes only its own grant')
  t.is((await new ReplicaGrants(db, 'node-b').here(VOL))?.by, 'node-c', 'the serving node reads the grant for its replica')

  await db.put(keys.replicaGrant('fedcba9876543210', 'node-c'), grant({ by: 'node-a' }))
  t.is(await a.forgetOwn(), 1)
  t.is(await db.get(keys.replicaGrant('fedcba9876543210', 'node-c')), undefined, 'a grant node-a left is deleted at its start')
  t.truthy(await db.get(keys.replicaGrant(VOL, 'node-b')), 'another node\'s grant stays')
})

test('the replica service creates and drops only for the granted node; others get NOT_COORDINATOR, logged once per interval with a count', async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'pxd-grants-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const db = await openKvdb(t)
  const host = new ReplicaHost(dataDir, silent)
  t.teardown(() => host.close())
  const lines: Array<{ msg: string; remote?: string; volumeId?: string }> = []
  const log = pino(new Writable({ write(chunk: Buffer, _e, done) { lines.push(JSON.parse(chunk.toString())); done() } }))
  // The kvdb lists node-a as a replica of VOL (so create is allowed by the record) until the test drops it from there.
  let listed = ['node-a', 'node-b']
  const service = new ReplicaService({
    nodeId: 'node-a', host, log, refusalLogIntervalMs: 200,
    lookup: async () => ({ size: MiB, replicas: listed }),
    grant: (id) => new ReplicaGrants(db, 'node-a').here(id),
  })
  const coordinator = new ReplicaGrants(db, 'node-b')

  for (let i = 0; i < 3; i++) {
    const err = await t.throwsAsync(service.handle('node-x', { t: 'create', id: i, vol: VOL, size: MiB }))
    t.true(isPxdError(err, 'NOT_COORDINATOR'), String(err))
  }
  t.false(await host.exists(VOL), 'no replica was made for a peer without a grant')
  await coordinator.around(VOL, 'node-a', 'create', async () => {
    const err = await t.throwsAsync(service.handle('node-x', { t: 'create', id: 9, vol: VOL, size: MiB }))
    t.true(isPxdError(err, 'NOT_COORDINATOR'), 'a grant to node-b is not one to node-x')
    await service.handle('node-b', { t: 'create', id: 10, vol: VOL, size: MiB })
  })
  t.true(await host.exists(VOL), 'the granted node made the replica')
  const late = await t.throwsAsync(service.handle('node-b', { t: 'create', id: 11, vol: VOL, size: MiB }))
  t.true(isPxdError(late, 'NOT_COORDINATOR'), 'the grant ends with its request')

  listed = ['node-b']
  for (const peer of ['node-x', 'node-b']) {
    const err = await t.throwsAsync(service.handle(peer, { t: 'drop', id: 12, vol: VOL }))
    t.true(isPxdError(err, 'NOT_COORDINATOR'), `${peer}: ${String(err)}`)
  }
  await coordinator.around(VOL, 'node-a', 'create', async () => {
    const err = await t.throwsAsync(service.handle('node-b', { t: 'drop', id: 13, vol: VOL }))
    t.true(isPxdError(err, 'NOT_COORDINATOR'), 'a grant to create is not one to drop')
  })
  t.true(await host.exists(VOL), 'the replica is intact after every refused drop')
  await coordinator.around(VOL, 'node-a', 'drop', () => service.handle('node-b', { t: 'drop', id: 14, vol: VOL }))
  t.false(await host.exists(VOL), 'the granted node dropped it')

  const first = lines.filter((l) => l.msg === 'replica request refused')
  t.deepEqual(first.map((l) => l.remote).sort(), ['node-b', 'node-x'], 'one line per peer in the interval')
  await sleep(300)
  t.true(lines.some((l) => l.msg === 'refused 4 more replica requests from node-x in the last 0.2s'), JSON.stringify(lines.map((l) => l.msg)))
  t.true(lines.some((l) => l.msg === 'refused 2 more replica requests from node-b in the last 0.2s'), JSON.stringify(lines.map((l) => l.msg)))
})
