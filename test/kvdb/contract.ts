/**
 * The behaviour every Kvdb must have, as one suite that each implementation's test file
 * runs against its own store. The factory gives each test a fresh, empty store and
 * closes it at teardown.
 */
import test, { type ExecutionContext } from 'ava'
import { isPxdError } from '../../src/errors'
import type { Kvdb } from '../../src/kvdb/kvdb'

export type KvdbFactory = (t: ExecutionContext) => Promise<Kvdb>

const RACERS = 20

export function defineKvdbContract(name: string, open: KvdbFactory): void {
  const unavailable = (err: unknown) => isPxdError(err, 'KVDB_UNAVAILABLE')
  const invalid = (err: unknown) => isPxdError(err, 'INVALID_ARGUMENT')

  test(`${name}: put, get, list by prefix (sorted), delete`, async (t) => {
    const db = await open(t)
    t.is(await db.get('volumes/none'), undefined)
    t.deepEqual(await db.list('volumes/'), [])
    await db.put('volumes/c', { n: 3 })
    await db.put('volumes/a', { n: 1 })
    await db.put('volumesX', { n: 0 })
    await db.put('nodes/x', { n: 9 })
    await db.put('volumes/b', { n: 2 })
    const a = await db.get<{ n: number }>('volumes/a')
    t.deepEqual(a?.value, { n: 1 })
    t.is(a?.key, 'volumes/a')
    t.true(a!.modRevision > 0)
    const listed = await db.list<{ n: number }>('volumes/')
    t.deepEqual(listed.map((e) => [e.key, e.value.n]), [['volumes/a', 1], ['volumes/b', 2], ['volumes/c', 3]])
    t.deepEqual((await db.list('')).map((e) => e.key), ['nodes/x', 'volumes/a', 'volumes/b', 'volumes/c', 'volumesX'])
    await db.put('volumes/a', { n: 10 })
    const a2 = await db.get<{ n: number }>('volumes/a')
    t.is(a2?.value.n, 10)
    t.true(a2!.modRevision > a!.modRevision)
    await db.delete('volumes/a')
    await db.delete('volumes/never-there')
    t.is(await db.get('volumes/a'), undefined)
    t.deepEqual((await db.list('volumes/')).map((e) => e.key), ['volumes/b', 'volumes/c'])
  })

  test(`${name}: txn is compare-and-swap on modRevision; 0 means absent`, async (t) => {
    const db = await open(t)
    t.true(await db.txn({ compares: [{ key: 'k', modRevision: 0 }], puts: [{ key: 'k', value: 1 }] }))
    t.false(await db.txn({ compares: [{ key: 'k', modRevision: 0 }], puts: [{ key: 'k', value: 2 }] }))
    const first = (await db.get<number>('k'))!
    t.is(first.value, 1)
    t.true(await db.txn({ compares: [{ key: 'k', modRevision: first.modRevision }], puts: [{ key: 'k', value: 3 }] }))
    t.false(await db.txn({ compares: [{ key: 'k', modRevision: first.modRevision }], puts: [{ key: 'k', value: 4 }] }), 'a stale revision loses')
    t.is((await db.get<number>('k'))!.value, 3)
    t.true(await db.txn({ puts: [{ key: 'free', value: 'no compares' }] }))
    t.is((await db.get('free'))?.value, 'no compares')
  })

  test(`${name}: txn with several compares applies all puts and deletes, or nothing`, async (t) => {
    const db = await open(t)
    await db.put('a', 'a0')
    await db.put('b', 'b0')
    await db.put('gone', 'x')
    const a = (await db.get('a'))!
    const b = (await db.get('b'))!
    t.false(await db.txn({
      compares: [{ key: 'a', modRevision: a.modRevision }, { key: 'b', modRevision: b.modRevision + 1000 }],
      puts: [{ key: 'a', value: 'a1' }, { key: 'new', value: 'n' }],
      deletes: ['gone'],
    }), 'one stale compare fails the whole txn')
    t.is((await db.get('a'))?.value, 'a0')
    t.is(await db.get('new'), undefined)
    t.is((await db.get('gone'))?.value, 'x')
    t.true(await db.txn({
      compares: [{ key: 'a', modRevision: a.modRevision }, { key: 'b', modRevision: b.modRevision }, { key: 'new', modRevision: 0 }],
      puts: [{ key: 'a', value: 'a1' }, { key: 'new', value: 'n' }],
      deletes: ['gone'],
    }))
    const [a1, n1] = [(await db.get('a'))!, (await db.get('new'))!]
    t.is(a1.value, 'a1')
    t.is(n1.value, 'n')
    t.is(a1.modRevision, n1.modRevision, 'one txn, one revision')
    t.is(await db.get('gone'), undefined)
  })

  test(`${name}: bad requests are INVALID_ARGUMENT`, async (t) => {
    const db = await open(t)
    t.true(invalid(await t.throwsAsync(db.txn({ puts: [{ key: 'k', value: 1 }], deletes: ['k'] }))))
    t.true(invalid(await t.throwsAsync(db.txn({ puts: [{ key: 'k', value: 1 }, { key: 'k', value: 2 }] }))))
    t.true(invalid(await t.throwsAsync(db.put('k', undefined))))
    t.true(invalid(await t.throwsAsync(db.put('k', { big: 1n }))))
    t.true(invalid(await t.throwsAsync(db.put('', 1))))
    t.true(invalid(await t.throwsAsync(db.txn({ compares: [{ key: 'k', modRevision: -1 }] }))))
    t.true(invalid(await t.throwsAsync(db.putLeased('alive/x', 1, 0))))
    t.is(await db.get('k'), undefined, 'nothing of a refused txn was applied')
  })

  test(`${name}: concurrent CAS racers, exactly one wins`, async (t) => {
    const db = await open(t)
    const results = await Promise.all(Array.from({ length: RACERS }, (_, i) => db.txn({ compares: [{ key: 'v', modRevision: 0 }], puts: [{ key: 'v', value: i }] })))
    t.is(results.filter(Boolean).length, 1)
    t.is((await db.get('v'))?.value, results.indexOf(true))
  })

  test(`${name}: read-modify-write counters under contention lose no increment`, async (t) => {
    const db = await open(t)
    await db.put('counter', 0)
    const increment = async () => {
      for (;;) {
        const cur = (await db.get<number>('counter'))!
        if (await db.txn({ compares: [{ key: 'counter', modRevision: cur.modRevision }], puts: [{ key: 'counter', value: cur.value + 1 }] })) return
      }
    }
    await Promise.all(Array.from({ length: 10 }, increment))
    t.is((await db.get('counter'))?.value, 10)
  })

  test(`${name}: values are JSON round-tripped, never shared objects`, async (t) => {
    const db = await open(t)
    const value = { list: [1, 2], when: new Date(0), nested: { s: 'é✓' }, skip: undefined as unknown }
    await db.put('a', value)
    value.list.push(3)
    value.nested.s = 'changed'
    const got = (await db.get<{ list: number[]; when: unknown; nested: { s: string } }>('a'))!.value
    t.deepEqual(got, { list: [1, 2], when: '1970-01-01T00:00:00.000Z', nested: { s: 'é✓' } })
    got.list.push(99)
    t.deepEqual((await db.get('a'))!.value, { list: [1, 2], when: '1970-01-01T00:00:00.000Z', nested: { s: 'é✓' } })
    t.deepEqual((await db.list('a'))[0]!.value, { list: [1, 2], when: '1970-01-01T00:00:00.000Z', nested: { s: 'é✓' } })
    for (const v of [null, 0, 'text', true, [1, 'two']]) {
      await db.put('scalar', v)
      t.deepEqual((await db.get('scalar'))!.value, v)
    }
  })

  test(`${name}: a leased key is visible, updates, and goes at revoke (twice is fine)`, async (t) => {
    const db = await open(t)
    const changes: Array<Error | undefined> = []
    const leased = await db.putLeased('alive/n1', { free: 1 }, 5)
    leased.onChange((lost) => changes.push(lost))
    t.deepEqual((await db.get('alive/n1'))?.value, { free: 1 })
    t.deepEqual((await db.list('alive/')).map((e) => e.key), ['alive/n1'])
    await leased.update({ free: 2 })
    t.deepEqual((await db.get('alive/n1'))?.value, { free: 2 })
    await leased.revoke()
    t.is(await db.get('alive/n1'), undefined)
    await leased.revoke()
    t.true(invalid(await t.throwsAsync(leased.update({ free: 3 }))))
    t.is(await db.get('alive/n1'), undefined)
    t.deepEqual(changes, [])
  })

  test(`${name}: revoking a lease leaves a key that a plain put took over`, async (t) => {
    const db = await open(t)
    const leased = await db.putLeased('alive/n2', 'leased', 5)
    await db.put('alive/n2', 'plain')
    await leased.revoke()
    t.is((await db.get('alive/n2'))?.value, 'plain')
  })

  test(`${name}: after close every call fails with KVDB_UNAVAILABLE; close twice is fine`, async (t) => {
    const db = await open(t)
    await db.put('a', 1)
    const leased = await db.putLeased('alive/x', 1, 5)
    await db.close()
    await db.close()
    t.true(unavailable(await t.throwsAsync(db.get('a'))))
    t.true(unavailable(await t.throwsAsync(db.list(''))))
    t.true(unavailable(await t.throwsAsync(db.txn({ puts: [{ key: 'a', value: 2 }] }))))
    t.true(unavailable(await t.throwsAsync(db.put('a', 2))))
    t.true(unavailable(await t.throwsAsync(db.delete('a'))))
    t.true(unavailable(await t.throwsAsync(db.putLeased('alive/y', 1, 5))))
    await leased.revoke()
  })

  test(`${name}: description says where the store is`, async (t) => {
    const db = await open(t)
    t.regex(db.description, /^(embedded|etcd:\/\/[^,\s]+:\d+(,[^,\s]+:\d+)*)$/)
  })
}
