import test, { type ExecutionContext } from 'ava'
import { isPxdError, pxdError } from '../../src/errors'
import { keys } from '../../src/kvdb/kvdb'
import { CAS_RETRIES, InSyncSet } from '../../src/volumes/in-sync'
import type { VolumeRecord } from '../../src/volumes/types'
import { HookedKvdb, inSyncOf, openKvdb, putAttachment, putVolume, silent, timesOut, volumeRecord } from './fakes'

const VOL = 'vol1'

/** vol1 on n1, n2, n3, all in sync, attached on n1 at epoch 4. */
async function setup(t: ExecutionContext) {
  const db = await openKvdb(t)
  const hooked = new HookedKvdb(db)
  await putVolume(db, volumeRecord(VOL, { replicas: ['n1', 'n2', 'n3'] }))
  await putAttachment(db, VOL, { nodeId: 'n1', epoch: 4 })
  return { db, hooked, set: new InSyncSet({ nodeId: 'n1', kvdb: hooked }) }
}

const failure = (nodeId: string) => ({ nodeId, error: pxdError('IO_ERROR', `${nodeId} failed`) })

test('demote takes the failed replicas out; promote puts one back once', async (t) => {
  const { db, hooked, set } = await setup(t)
  await set.demote(VOL, 4, [failure('n2'), failure('n3')], silent)
  t.deepEqual(await inSyncOf(db, VOL), ['n1'])
  await set.promote(VOL, 4, 'n3')
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n3'])
  const before = hooked.txns
  await set.promote(VOL, 4, 'n3')
  t.is(hooked.txns, before, 'promoting a replica already in sync writes nothing')
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n3'])
})

test('demoting every in-sync replica is an IO_ERROR and leaves the set as it was', async (t) => {
  const { db, set } = await setup(t)
  const err = await t.throwsAsync(set.demote(VOL, 4, [failure('n1'), failure('n2'), failure('n3')], silent))
  t.true(isPxdError(err, 'IO_ERROR'), String(err))
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2', 'n3'])
})

test('FENCED once the attachment moved: another node, a newer epoch, or detached', async (t) => {
  const { db, hooked, set } = await setup(t)
  for (const moved of [{ nodeId: 'n2', epoch: 5 }, { nodeId: 'n1', epoch: 5 }, { nodeId: null, epoch: 4 }]) {
    await putAttachment(db, VOL, moved)
    const err = await t.throwsAsync(set.demote(VOL, 4, [failure('n2')], silent))
    t.true(isPxdError(err, 'FENCED'), `${JSON.stringify(moved)}: ${String(err)}`)
  }
  await db.delete(keys.attachment(VOL))
  t.true(isPxdError(await t.throwsAsync(set.promote(VOL, 4, 'n2')), 'FENCED'), 'no attachment at all')
  t.is(hooked.txns, 0, 'a fenced coordinator never writes')
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2', 'n3'])
})

test('a takeover between the read and the write is FENCED on the retry, not written', async (t) => {
  const { db, hooked, set } = await setup(t)
  hooked.onTxn = (_txn, n) => (n === 0 ? putAttachment(db, VOL, { nodeId: 'n2', epoch: 5, unclean: true }) : undefined)
  const err = await t.throwsAsync(set.demote(VOL, 4, [failure('n3')], silent))
  t.true(isPxdError(err, 'FENCED'), String(err))
  t.is(hooked.txns, 1)
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2', 'n3'])
})

test('a lost compare-and-swap reads again and applies the change to what is there now', async (t) => {
  const { db, hooked, set } = await setup(t)
  hooked.onTxn = async (_txn, n) => {
    if (n > 0) return
    const entry = (await db.get<VolumeRecord>(keys.volume(VOL)))!
    await db.put(entry.key, { ...entry.value, inSync: ['n1', 'n3'] })
  }
  await set.demote(VOL, 4, [failure('n1')], silent)
  t.is(hooked.txns, 2)
  t.deepEqual(await inSyncOf(db, VOL), ['n3'], 'the concurrent change is kept, not overwritten')
})

test('CONFLICT after CAS_RETRIES lost compare-and-swaps', async (t) => {
  const { db, hooked, set } = await setup(t)
  hooked.onTxn = async () => {
    const entry = (await db.get<VolumeRecord>(keys.volume(VOL)))!
    await db.put(entry.key, { ...entry.value, createdAt: new Date().toISOString() })
  }
  const err = await t.throwsAsync(set.demote(VOL, 4, [failure('n2')], silent))
  t.true(isPxdError(err, 'CONFLICT'), String(err))
  t.is(hooked.txns, CAS_RETRIES)
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2', 'n3'])
})

test('a transaction the kvdb rejects propagates as it is', async (t) => {
  const { db, hooked, set } = await setup(t)
  const down = pxdError('KVDB_UNAVAILABLE', 'etcd is unreachable')
  hooked.onTxn = () => { throw down }
  t.is(await t.throwsAsync(set.demote(VOL, 4, [failure('n2')], silent)), down)
  t.is(hooked.txns, 1, 'a rejection is not a lost compare-and-swap: no retry')
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2', 'n3'])
})

test('a transaction that times out propagates, and the set is unchanged', async (t) => {
  const { db, hooked, set } = await setup(t)
  const timeout = pxdError('KVDB_UNAVAILABLE', 'etcd request timed out')
  await set.demote(VOL, 4, [failure('n3')], silent)
  hooked.onTxn = () => timesOut(50, timeout)
  t.is(await t.throwsAsync(set.promote(VOL, 4, 'n3')), timeout)
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2'])
})

test('a promotion whose transaction timed out but was applied is read back as in sync by inSyncOf', async (t) => {
  const { db, hooked, set } = await setup(t)
  await set.demote(VOL, 4, [failure('n3')], silent)
  const timeout = pxdError('KVDB_UNAVAILABLE', 'etcd request timed out')
  hooked.onTxn = async (txn) => {
    await db.txn(txn)
    throw timeout
  }
  t.is(await t.throwsAsync(set.promote(VOL, 4, 'n3')), timeout)
  t.deepEqual(await set.inSyncOf(VOL), ['n1', 'n2', 'n3'], 'what the kvdb says, not what the caller was told')
  hooked.onTxn = undefined
  await db.delete(keys.volume(VOL))
  t.true(isPxdError(await t.throwsAsync(set.inSyncOf(VOL)), 'NOT_FOUND'))
})

test('a demotion records since when the volume is short of copies; the promotion that ends it clears it; a dropped replica is never promoted', async (t) => {
  const { db, set } = await setup(t)
  await set.demote(VOL, 4, [failure('n3')], silent)
  const since = (await db.get<VolumeRecord>(keys.volume(VOL)))!.value.degradedSince
  t.truthy(since)
  await set.demote(VOL, 4, [failure('n2')], silent)
  t.is((await db.get<VolumeRecord>(keys.volume(VOL)))!.value.degradedSince, since, 'kept while it stays degraded')
  await set.promote(VOL, 4, 'n2')
  await set.promote(VOL, 4, 'n3')
  t.is((await db.get<VolumeRecord>(keys.volume(VOL)))!.value.degradedSince, undefined)
  const rec = (await db.get<VolumeRecord>(keys.volume(VOL)))!.value
  await putVolume(db, { ...rec, replicas: rec.replicas.filter((r) => r.nodeId !== 'n3'), inSync: ['n1', 'n2'] })
  t.true(isPxdError(await t.throwsAsync(set.promote(VOL, 4, 'n3')), 'CONFLICT'))
  t.deepEqual(await inSyncOf(db, VOL), ['n1', 'n2'])
})
