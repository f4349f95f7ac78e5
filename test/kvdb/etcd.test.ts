/**
 * The kvdb contract against a real etcd, plus what only etcd has: namespaces shared in
 * one etcd, leases that expire when their holder dies, and bounded failure while etcd
 * is down or frozen. The outage tests take their own etcd so they do not disturb the
 * tests that share the main one.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import path from 'node:path'
import { isPxdError } from '../../src/errors'
import { EtcdKvdb } from '../../src/kvdb/etcd'
import { openKvdb } from '../../src/kvdb/open'
import { startEtcd, type EtcdServer } from '../helpers/etcd'
import { defineKvdbContract } from './contract'

let etcd: EtcdServer | undefined

test.before(async () => {
  etcd = await startEtcd()
})

test.after.always(async () => {
  await etcd?.stop()
})

const clusterId = () => `t-${randomUUID().slice(0, 8)}`

async function openOn(t: ExecutionContext, server: EtcdServer, id = clusterId()): Promise<EtcdKvdb> {
  const db = await EtcdKvdb.open({ endpoints: [server.url], clusterId: id })
  t.teardown(() => db.close())
  return db
}

/** Poll until `check` holds, for at most `ms`; returns how long it took. */
async function within(ms: number, what: string, check: () => Promise<boolean> | boolean): Promise<number> {
  const start = Date.now()
  for (;;) {
    if (await check()) return Date.now() - start
    if (Date.now() - start > ms) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

async function timed(fn: () => Promise<unknown>): Promise<{ ms: number; err: unknown }> {
  const start = Date.now()
  try {
    await fn()
    return { ms: Date.now() - start, err: undefined }
  } catch (err) {
    return { ms: Date.now() - start, err }
  }
}

defineKvdbContract('etcd', async (t) => openOn(t, etcd!))

test('etcd: clusters sharing one etcd do not see each other', async (t) => {
  const a = await openOn(t, etcd!)
  const b = await openOn(t, etcd!)
  await a.put('volumes/v', 'from a')
  await b.put('volumes/v', 'from b')
  await b.put('volumes/only-b', 1)
  t.is((await a.get('volumes/v'))?.value, 'from a')
  t.deepEqual((await a.list('')).map((e) => e.key), ['volumes/v'])
  t.deepEqual((await b.list('')).map((e) => e.key), ['volumes/only-b', 'volumes/v'])
  await a.delete('volumes/v')
  t.is((await b.get('volumes/v'))?.value, 'from b')
})

test('etcd: racers on separate clients of one cluster, exactly one wins', async (t) => {
  const id = clusterId()
  const clients = await Promise.all(Array.from({ length: 4 }, () => openOn(t, etcd!, id)))
  const results = await Promise.all(clients.flatMap((db, c) => Array.from({ length: 5 }, (_, i) =>
    db.txn({ compares: [{ key: 'attachments/v', modRevision: 0 }], puts: [{ key: 'attachments/v', value: { node: c, i } }] }))))
  t.is(results.filter(Boolean).length, 1)
  const seen = await Promise.all(clients.map((db) => db.get('attachments/v')))
  t.true(seen.every((e) => e !== undefined && e.modRevision === seen[0]!.modRevision))
})

test('etcd: openKvdb parses etcd:// and the store says where it is', async (t) => {
  const db = await openKvdb(`etcd://${etcd!.endpoint}`, { dataDir: '/nonexistent', clusterId: clusterId() })
  t.teardown(() => db.close())
  t.is(db.description, `etcd://${etcd!.endpoint}`)
  await db.put('a', 1)
  t.is((await db.get('a'))?.value, 1)
})

test('etcd: open fails with KVDB_UNAVAILABLE when nothing answers', async (t) => {
  const { ms, err } = await timed(() => EtcdKvdb.open({ endpoints: ['http://127.0.0.1:1'], clusterId: clusterId() }))
  t.true(isPxdError(err, 'KVDB_UNAVAILABLE'), String(err))
  t.regex((err as Error).message, /^metadata store etcd:\/\/127\.0\.0\.1:1 unavailable: .*ECONNREFUSED/)
  t.true(ms < 6000, `${ms} ms`)
})

test('etcd: close revokes the leases it holds', async (t) => {
  const id = clusterId()
  const holder = await EtcdKvdb.open({ endpoints: [etcd!.url], clusterId: id })
  const observer = await openOn(t, etcd!, id)
  await holder.putLeased('alive/n1', { up: true }, 30)
  t.truthy(await observer.get('alive/n1'))
  await holder.close()
  t.is(await observer.get('alive/n1'), undefined)
})

test('etcd: a released lease is left to its TTL: close does not revoke it, a successor\'s put takes the key over', async (t) => {
  const id = clusterId()
  const holder = await EtcdKvdb.open({ endpoints: [etcd!.url], clusterId: id })
  const observer = await openOn(t, etcd!, id)
  const leased = await holder.putLeased('alive/n1', 'old', 2)
  leased.release()
  await holder.close()
  t.is((await observer.get('alive/n1'))?.value, 'old', 'still there after the close')
  const successor = await observer.putLeased('alive/n1', 'new', 30)
  await new Promise((resolve) => setTimeout(resolve, 4500))
  t.is((await observer.get('alive/n1'))?.value, 'new', 'the old lease expired without taking the successor\'s key')
  await successor.revoke()
})

test('etcd: a lease outlives its TTL while its holder runs', async (t) => {
  const db = await openOn(t, etcd!)
  const changes: Array<Error | undefined> = []
  // TTL 4 s held for 9 s: more than two TTLs, with keepalives every few seconds even on a busy machine.
  const leased = await db.putLeased('alive/n1', 'up', 4)
  leased.onChange((lost) => changes.push(lost))
  await new Promise((resolve) => setTimeout(resolve, 9000))
  t.is((await db.get('alive/n1'))?.value, 'up')
  t.deepEqual(changes, [])
  await leased.revoke()
})

test('etcd: a dead holder\'s leased key disappears after its TTL', async (t) => {
  const id = clusterId()
  const observer = await openOn(t, etcd!, id)
  // The holder is a separate process, SIGKILLed: no revoke, no more keepalives.
  const etcdModule = path.resolve(__dirname, '..', '..', 'src', 'kvdb', 'etcd.js')
  const script = `
    const { EtcdKvdb } = require(process.argv[1])
    EtcdKvdb.open({ endpoints: [process.argv[2]], clusterId: process.argv[3] })
      .then((db) => db.putLeased('alive/dead', 'up', 2))
      .then(() => process.stdout.write('ready\\n'), (err) => { console.error(err); process.exit(1) })
    setInterval(() => {}, 1000)`
  const child = spawn(process.execPath, ['-e', script, etcdModule, etcd!.url, id], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  await within(15_000, 'holder ready', () => new Promise<boolean>((resolve) => {
    child.stdout!.once('data', () => resolve(true))
    child.once('exit', () => resolve(false))
  }))
  t.is((await observer.get('alive/dead'))?.value, 'up')
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGKILL')
  await exited
  const killedAt = Date.now()
  t.truthy(await observer.get('alive/dead'), 'still there right after the holder died')
  const ms = await within(8000, 'leased key expired', async () => (await observer.get('alive/dead')) === undefined)
  t.log(`leased key (TTL 2 s) gone ${Date.now() - killedAt} ms after its holder was killed`)
  t.true(ms >= 500, `gone after ${ms} ms: too soon for a TTL of 2 s`)
})

test('etcd: with etcd down calls fail fast; when it is back they work, data intact, lease held again', async (t) => {
  t.timeout(40_000)
  const server = await startEtcd()
  t.teardown(() => server.stop())
  const db = await openOn(t, server)
  await db.put('volumes/v', { spec: 1 })
  const changes: Array<Error | undefined> = []
  const leased = await db.putLeased('alive/n1', { free: 1 }, 2)
  leased.onChange((lost) => changes.push(lost))
  const other = await EtcdKvdb.open({ endpoints: [server.url], clusterId: clusterId() })
  await other.putLeased('alive/n2', 1, 30)

  await server.kill()
  const closing = await timed(() => other.close())
  t.log(`close with etcd down (one lease held) took ${closing.ms} ms`)
  t.is(closing.err, undefined)
  t.true(closing.ms < 6000)
  t.true(isPxdError(await t.throwsAsync(other.get('a')), 'KVDB_UNAVAILABLE'))

  for (const [what, call] of [
    ['get', () => db.get('volumes/v')],
    ['txn', () => db.txn({ compares: [{ key: 'volumes/v', modRevision: 0 }], puts: [{ key: 'volumes/v', value: 2 }] })],
    ['list', () => db.list('volumes/')],
    ['put', () => db.put('volumes/w', 1)],
  ] as const) {
    const { ms, err } = await timed(call)
    t.log(`${what} with etcd down failed after ${ms} ms: ${(err as Error).message}`)
    t.true(isPxdError(err, 'KVDB_UNAVAILABLE'), `${what}: ${String(err)}`)
    t.true((err as Error).message.startsWith(`metadata store etcd://${server.endpoint} unavailable: `), (err as Error).message)
    t.true(ms < 6000, `${what} took ${ms} ms`)
  }

  const lostAfter = await within(8000, 'lease reported lost', () => changes.length > 0)
  t.log(`lease loss reported ${lostAfter} ms after etcd went down (TTL 2 s)`)
  t.true(isPxdError(changes[0], 'KVDB_UNAVAILABLE'))
  const lostUpdate = await t.throwsAsync(leased.update({ free: 2 }))
  t.true(isPxdError(lostUpdate, 'KVDB_UNAVAILABLE'))

  const restartedAt = Date.now()
  await server.restart()
  const backAfter = await within(10_000, 'calls work again', async () => {
    try {
      await db.get('volumes/v')
      return true
    } catch {
      return false
    }
  })
  t.log(`etcd restart took ${Date.now() - restartedAt - backAfter} ms; calls worked ${backAfter} ms after it answered`)
  t.deepEqual((await db.get('volumes/v'))?.value, { spec: 1 })
  t.true(await db.txn({ compares: [{ key: 'volumes/x', modRevision: 0 }], puts: [{ key: 'volumes/x', value: 'after' }] }))

  const regained = await within(10_000, 'lease held again', () => changes.length > 1)
  t.log(`leased key held again ${regained} ms after calls worked`)
  t.deepEqual(changes.slice(1), [undefined])
  t.deepEqual((await db.get('alive/n1'))?.value, { free: 2 }, 'the latest value, set while the lease was lost')
  await leased.update({ free: 3 })
  t.deepEqual((await db.get('alive/n1'))?.value, { free: 3 })
  await leased.revoke()
  t.is(await db.get('alive/n1'), undefined)
})

test('etcd: with etcd frozen calls fail at the deadline, and work once it thaws', async (t) => {
  t.timeout(40_000)
  const server = await startEtcd()
  t.teardown(async () => {
    try { process.kill(server.pid, 'SIGCONT') } catch { /* gone */ }
    await server.stop()
  })
  const db = await openOn(t, server)
  await db.put('k', 1)
  const k = (await db.get('k'))!
  process.kill(server.pid, 'SIGSTOP')
  // The stop is in effect only once the process is seen stopped; a call sent before could still be answered.
  await within(5_000, 'etcd stopped', () => / T /.test(readFileSync(`/proc/${server.pid}/stat`, 'utf8').replace(/^.*\) /, ') ')))
  const [get, txn] = await Promise.all([
    timed(() => db.get('k')),
    timed(() => db.txn({ compares: [{ key: 'k', modRevision: k.modRevision }], puts: [{ key: 'k', value: 2 }] })),
  ])
  for (const [what, { ms, err }] of [['get', get], ['txn', txn]] as const) {
    t.log(`${what} with etcd frozen failed after ${ms} ms: ${(err as Error).message}`)
    t.true(isPxdError(err, 'KVDB_UNAVAILABLE'), `${what}: ${String(err)}`)
    t.true(ms >= 4000 && ms < 6500, `${what} took ${ms} ms`)
  }
  t.regex((txn.err as Error).message, /may or may not have been applied/)
  process.kill(server.pid, 'SIGCONT')
  const backAfter = await within(10_000, 'calls work again', async () => {
    try {
      await db.get('k')
      return true
    } catch {
      return false
    }
  })
  t.log(`calls worked ${backAfter} ms after etcd thawed`)
  // The timed-out txn may have landed once etcd thawed; a retry of it is still safe:
  // it succeeds only if the first attempt did not.
  const after = (await db.get<number>('k'))!
  t.log(`the timed-out txn was ${after.value === 2 ? '' : 'not '}applied`)
  t.true(after.value === 1 || after.value === 2)
  t.is(await db.txn({ compares: [{ key: 'k', modRevision: k.modRevision }], puts: [{ key: 'k', value: 3 }] }), after.value === 1)
})

test('etcd: a dead endpoint among several does not fail calls', async (t) => {
  const db = await EtcdKvdb.open({ endpoints: ['http://127.0.0.1:1', etcd!.url], clusterId: clusterId() })
  t.teardown(() => db.close())
  t.is(db.description, `etcd://127.0.0.1:1,${etcd!.endpoint}`)
  for (let i = 0; i < 20; i++) {
    t.true(await db.txn({ compares: [{ key: `k${i}`, modRevision: 0 }], puts: [{ key: `k${i}`, value: i }] }))
    t.is((await db.get(`k${i}`))?.value, i)
  }
  const leased = await db.putLeased('alive/n1', 1, 5)
  await leased.revoke()
})
