import test from 'ava'
import { keys } from '../../src/kvdb/kvdb'
import { healthOf, InfoView, replicaInfo } from '../../src/volumes/info'
import type { ResyncRecord } from '../../src/volumes/types'
import { FakeMembership, GiB, node, openKvdb, putAttachment, putVolume, volumeRecord } from './fakes'

const NOW = Date.parse('2024-05-01T12:00:00.000Z')
const record = volumeRecord('v', { replicas: ['n1', 'n2', 'n3'], inSync: ['n1'], repl: 3 })

function resync(o: Partial<ResyncRecord> = {}): ResyncRecord {
  return {
    nodeId: 'n2', method: 'checksum-scan', totalBytes: 4 * GiB, scannedBytes: GiB, copiedBytes: 123,
    state: 'running', startedAt: new Date(NOW - 10_000).toISOString(), updatedAt: new Date(NOW).toISOString(), epoch: 3,
    ...o,
  }
}

test('replica states: in sync, offline, out of sync', (t) => {
  t.deepEqual(replicaInfo('n1', record, true, undefined, NOW), { nodeId: 'n1', inSync: true, online: true, state: 'in-sync', allocatedBytes: null })
  t.deepEqual(replicaInfo('n1', record, false, undefined, NOW), { nodeId: 'n1', inSync: true, online: false, state: 'in-sync', allocatedBytes: null }, 'in sync wins over offline')
  t.deepEqual(replicaInfo('n2', record, false, resync(), NOW), { nodeId: 'n2', inSync: false, online: false, state: 'offline', allocatedBytes: null }, 'offline wins over a running resync')
  t.deepEqual(replicaInfo('n3', record, true, resync(), NOW), { nodeId: 'n3', inSync: false, online: true, state: 'out-of-sync', allocatedBytes: null }, 'the resync is of another replica')
  t.is(replicaInfo('n2', record, true, resync({ state: 'done' }), NOW).state, 'out-of-sync')
  t.is(replicaInfo('n2', record, true, resync({ state: 'failed' }), NOW).state, 'out-of-sync')
})

test('a running resync shows its percent, bytes to go and an eta from its pace so far', (t) => {
  const info = replicaInfo('n2', record, true, resync(), NOW)
  t.is(info.state, 'resyncing')
  // A quarter in 10 s: three quarters to go take 30 s more.
  t.deepEqual(info.resync, { percent: 25, bytesToGo: 3 * GiB, copiedBytes: 123, etaSeconds: 30 })
  t.deepEqual(replicaInfo('n2', record, true, resync({ scannedBytes: 1 }), NOW).resync?.percent, 0, 'percent rounds down')
  t.is(replicaInfo('n2', record, true, resync({ scannedBytes: 0 }), NOW).resync?.etaSeconds, null, 'no pace yet: no eta')
  t.is(replicaInfo('n2', record, true, resync({ startedAt: new Date(NOW).toISOString() }), NOW).resync?.etaSeconds, null, 'just started: no eta')
})

test('info: attachment, degraded, this node\'s mountpoint and mounts, replica states and the last resync', async (t) => {
  const db = await openKvdb(t)
  await putVolume(db, record)
  await putAttachment(db, 'v', { nodeId: 'n1', epoch: 3 })
  const last = resync({ startedAt: new Date(Date.now() - 10_000).toISOString() })
  await db.put(keys.resync('v', 'n2'), last)
  const attached = new Map([['v', { mountpoint: '/run/pxd/v', mountIds: new Set(['a', 'b']) }]])
  const view = new InfoView({ kvdb: db, membership: new FakeMembership([node('n1'), node('n2'), node('n3', { online: false })]), attached })
  const info = await view.info(record)
  t.like(info, {
    name: 'v', id: record.id, size: GiB, repl: 3, fs: 'ext4', blockSize: 4096, shared: false, options: {},
    state: 'attached', degraded: true, attachedOn: 'n1', epoch: 3, mountpoint: '/run/pxd/v', mounts: 2, createdAt: record.createdAt,
  })
  t.deepEqual(info.replicas.map((r) => r.state), ['in-sync', 'resyncing', 'offline'])
  t.deepEqual(info.lastResync, last)
})

test('info of a detached volume that was never attached; nodes given are used instead of membership', async (t) => {
  const db = await openKvdb(t)
  const healthy = volumeRecord('w', { replicas: ['n1', 'n2'] })
  await putVolume(db, healthy)
  const view = new InfoView({ kvdb: db, membership: new FakeMembership([]), attached: new Map() })
  const info = await view.info(healthy, [node('n1'), node('n2')])
  t.like(info, { state: 'detached', degraded: false, attachedOn: null, epoch: 0, mountpoint: null, mounts: 0, lastResync: null })
  t.deepEqual(info.replicas.map((r) => [r.nodeId, r.state, r.online]), [['n1', 'in-sync', true], ['n2', 'in-sync', true]])
  await putAttachment(db, 'w', { nodeId: null, epoch: 6 })
  t.like(await view.info(healthy, [node('n1'), node('n2')]), { state: 'detached', attachedOn: null, epoch: 6 })
  t.deepEqual((await view.info(healthy)).replicas.map((r) => r.online), [false, false], 'without nodes, membership (empty here) decides')
})

test('each replica shows the host bytes its node last reported for it; unknown is null', async (t) => {
  const db = await openKvdb(t)
  const rec = volumeRecord('alloc', { replicas: ['n1', 'n2'] })
  await putVolume(db, rec)
  const view = new InfoView({ kvdb: db, membership: new FakeMembership([]), attached: new Map() })
  const info = await view.info(rec, [{ ...node('n1'), allocated: { [rec.id]: 5 * 4096, other: 1 } }, node('n2')])
  t.deepEqual(info.replicas.map((r) => [r.nodeId, r.allocatedBytes]), [['n1', 5 * 4096], ['n2', null]])
})

test('why a volume is degraded: an offline in-sync replica counts, with since when and when it is replaced; draining and resyncing ones are named', (t) => {
  const rec = { ...volumeRecord('h', { replicas: ['n1', 'n2', 'n3', 'n4'], inSync: ['n1', 'n2', 'n3'], repl: 3 }), retiring: ['n3'] }
  const off = NOW - 60_000
  const view = { online: new Set(['n1', 'n3', 'n4']), offlineSince: new Map([['n2', off]]), draining: new Set(['n3']), replaceAfterMs: 300_000, now: NOW }
  const replicas = rec.replicas.map(({ nodeId }) => replicaInfo(nodeId, rec, view.online.has(nodeId), resync({ nodeId: 'n4' }), NOW))
  const h = healthOf(rec, replicas, view)
  t.true(h.degraded, 'two in-sync replicas online (n1, n3) for repl=3')
  t.is(h.since, new Date(off).toISOString(), 'since its in-sync replica\'s node went offline')
  t.deepEqual(h.reasons, [
    `n2: node offline since ${new Date(off).toISOString()}; replacement due at ${new Date(off + 300_000).toISOString()}`,
    'n3: node draining; moves off once its replacement is in sync',
    'n4: resync running, 25%',
  ])
  t.true(replicas[2]!.retiring)
  const never = healthOf(rec, replicas, { ...view, replaceAfterMs: 0 })
  t.regex(never.reasons[0]!, /not replaced \(--replace-after 0\)/)
})
