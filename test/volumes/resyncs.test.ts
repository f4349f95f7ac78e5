import test, { type ExecutionContext } from 'ava'
import type { ResyncOptions, ResyncProgress } from '../../src/engine/volume-engine'
import { pxdError } from '../../src/errors'
import { keys } from '../../src/kvdb/kvdb'
import type { Replica } from '../../src/replicas/replica'
import { Resyncs, type ResyncableVolume } from '../../src/volumes/resyncs'
import { ResyncPace } from '../../src/volumes/resync-pace'
import type { ResyncRecord } from '../../src/volumes/types'
import { FakeMembership, GiB, node, openKvdb, putVolume, silent, sleep, volumeRecord, waitFor } from './fakes'

const EPOCH = 7

/** An engine that resyncs at once: reports progress, commits, and says what it did. */
function fakeEngine(o: { busy?: string[]; fail?: Error; hold?: Promise<void> } = {}) {
  const resynced: string[] = []
  return {
    resynced,
    resyncing: o.busy ?? [],
    async resync(target: Replica, commit: () => Promise<void>, options?: ResyncOptions): Promise<ResyncProgress> {
      resynced.push(target.nodeId)
      await o.hold
      if (o.fail) throw o.fail
      options?.onProgress?.({ nodeId: target.nodeId, method: 'dirty-map', totalBytes: GiB, scannedBytes: GiB / 2, copiedBytes: 10 })
      await commit()
      return { nodeId: target.nodeId, method: 'dirty-map', totalBytes: GiB, scannedBytes: GiB, copiedBytes: 20 }
    },
  }
}

async function setup(t: ExecutionContext, engine: ReturnType<typeof fakeEngine>, online = ['n1', 'n2', 'n3', 'n4'], pace = new ResyncPace()) {
  const db = await openKvdb(t)
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2', 'n3', 'n4'], inSync: ['n1'] }))
  const promoted: string[] = []
  const opened: string[] = []
  const attached = new Map<string, ResyncableVolume>([['v', { engine, epoch: EPOCH, volumeId: 'vid', size: GiB }]])
  const resyncs = new Resyncs({
    kvdb: db,
    membership: new FakeMembership(['n1', 'n2', 'n3', 'n4'].map((id) => node(id, { online: online.includes(id) }))),
    replicas: { replica: async (nodeId, volumeId, size, epoch) => { opened.push(`${nodeId}/${volumeId}/${size}/${epoch}`); return { nodeId } as Replica } },
    inSync: { promote: async (name, epoch, nodeId) => { promoted.push(`${name}/${epoch}/${nodeId}`) } },
    attached,
    pace,
    nodeId: 'n1',
    log: silent,
  })
  t.teardown(() => resyncs.stop())
  return { db, promoted, opened, attached, resyncs }
}

/** The resync record once the resync has finished, one way or the other. */
async function settledRecord(db: Awaited<ReturnType<typeof openKvdb>>): Promise<ResyncRecord | undefined> {
  const read = async () => (await db.get<ResyncRecord>(keys.resync('v', 'n2')))?.value
  await waitFor(async () => ((await read())?.state ?? 'running') !== 'running')
  return read()
}

test('check resyncs the replicas that are online, out of sync and not resyncing yet, and promotes them at the epoch', async (t) => {
  const engine = fakeEngine({ busy: ['n3'] })
  const { db, promoted, opened, resyncs } = await setup(t, engine, ['n1', 'n2', 'n3'])
  await resyncs.check('v')
  const record = await settledRecord(db)
  t.deepEqual(engine.resynced, ['n2'], 'n1 is in sync, n3 busy, n4 offline')
  t.deepEqual(opened, [`n2/vid/${GiB}/${EPOCH}`])
  t.deepEqual(promoted, [`v/${EPOCH}/n2`])
  t.like(record, { nodeId: 'n2', state: 'done', method: 'dirty-map', scannedBytes: GiB, copiedBytes: 20, epoch: EPOCH })
  t.is(record?.error, undefined)
})

test('a resync that fails is published as failed, with why', async (t) => {
  const engine = fakeEngine({ fail: pxdError('PEER_UNAVAILABLE', 'link to n2 is down') })
  const { db, promoted, resyncs } = await setup(t, engine, ['n1', 'n2'])
  await resyncs.check('v')
  const record = await settledRecord(db)
  t.like(record, { nodeId: 'n2', state: 'failed', totalBytes: GiB, scannedBytes: 0, copiedBytes: 0, epoch: EPOCH, error: 'link to n2 is down' })
  t.deepEqual(promoted, [])
})

test('nothing starts for a volume not attached here, or after stop', async (t) => {
  const engine = fakeEngine()
  const { db, resyncs, attached } = await setup(t, engine)
  await resyncs.check('other')
  resyncs.stop()
  await resyncs.check('v')
  t.true(attached.has('v'))
  t.deepEqual(engine.resynced, [])
  t.is(await db.get(keys.resync('v', 'n2')), undefined)
})

test('a second resync of a node never starts while one runs, even before the engine reports it resyncing', async (t) => {
  let release!: () => void
  const hold = new Promise<void>((resolve) => { release = resolve })
  const engine = fakeEngine({ hold })
  const { db, promoted, resyncs } = await setup(t, engine, ['n1', 'n2'])
  // The replica is slow to reach: two checks (two timer ticks) run before any resync started.
  await Promise.all([resyncs.check('v'), resyncs.check('v')])
  await resyncs.check('v')
  await sleep(20)
  t.deepEqual(engine.resynced, ['n2'], 'one resync, though the engine says nothing is resyncing')
  release()
  await settledRecord(db)
  t.deepEqual(promoted, [`v/${EPOCH}/n2`])
  await waitFor(async () => {
    await resyncs.check('v')
    return engine.resynced.length >= 2
  })
  // The fake promote leaves n2 out of sync in the kvdb, so later checks may start more.
  t.deepEqual(engine.resynced.slice(0, 2), ['n2', 'n2'], 'once it ended, the node may be resynced again')
})

test('at most --resync-concurrency resyncs at once; each replica has its own progress record, and a resumed one counts on', async (t) => {
  let release!: () => void
  const hold = new Promise<void>((resolve) => { release = resolve })
  const engine = fakeEngine({ hold })
  const { db, resyncs } = await setup(t, engine, ['n1', 'n2', 'n3', 'n4'], new ResyncPace(1e9, 2))
  await db.put(keys.resync('v', 'n3'), { nodeId: 'n3', method: 'checksum-scan', totalBytes: GiB, scannedBytes: 100, copiedBytes: 64, state: 'failed', startedAt: new Date().toISOString(), updatedAt: new Date().toISOString(), epoch: EPOCH - 1, attempt: 1 } satisfies ResyncRecord)
  await resyncs.check('v')
  await waitFor(() => engine.resynced.length === 2)
  await sleep(20)
  t.deepEqual(engine.resynced, ['n2', 'n3'], 'two slots: n4 waits')
  release()
  await waitFor(async () => (await db.get<ResyncRecord>(keys.resync('v', 'n3')))?.value.state === 'done')
  t.like((await db.get<ResyncRecord>(keys.resync('v', 'n3')))?.value, { attempt: 2, copiedBefore: 64, coordinator: 'n1' })
  t.like((await db.get<ResyncRecord>(keys.resync('v', 'n2')))?.value, { attempt: 1, copiedBefore: 0, state: 'done' })
  // The fake promote leaves the record alone: say n2 and n3 are in sync now.
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2', 'n3', 'n4'], inSync: ['n1', 'n2', 'n3'] }))
  await waitFor(async () => {
    await resyncs.check('v')
    return engine.resynced.includes('n4')
  })
  t.pass('n4 got a slot once the others ended')
})
