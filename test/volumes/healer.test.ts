import test, { type ExecutionContext } from 'ava'
import { keys } from '../../src/kvdb/kvdb'
import { Healer, type HealerHost } from '../../src/volumes/healer'
import type { AttachmentRecord, VolumeRecord } from '../../src/volumes/types'
import { attachmentOf, FakeMembership, node, openKvdb, putAttachment, putVolume, silent, volumeRecord } from './fakes'

/** A healer on n1 with a fake host that records what it was asked and holds volumes in memory. */
async function setup(t: ExecutionContext, o: { online?: string[]; replaceAfterMs?: number; nodeId?: string; free?: string[] } = {}) {
  const db = await openKvdb(t)
  const online = o.online ?? ['n1', 'n2', 'n3']
  const membership = new FakeMembership(['n1', 'n2', 'n3'].map((id) => node(id, { online: online.includes(id) })))
  const held = new Map<string, { epoch: number; background: boolean }>()
  const calls: string[] = []
  const self = o.nodeId ?? 'n1'
  const host: HealerHost = {
    attached: (name) => held.get(name),
    healing: () => [...held].filter(([, h]) => h.background).map(([n]) => n),
    dropHealing: async (name) => { calls.push(`drop ${name}`); held.delete(name) },
    attachForHealing: async (name) => {
      calls.push(`hold ${name}`)
      const epoch = ((await attachmentOf(db, name))?.epoch ?? 0) + 1
      await putAttachment(db, name, { nodeId: self, epoch, purpose: 'resync' })
      held.set(name, { epoch, background: true })
      return true
    },
    releaseHealing: async (name) => { calls.push(`release ${name}`); held.delete(name) },
    retire: async (name, nodeIds) => { calls.push(`retire ${name} ${nodeIds.join(',')}`) },
    resyncCheck: async (name) => { calls.push(`resync ${name}`) },
    resyncRunning: () => false,
  }
  const placement = {
    place: async (count: number, _size: number, except: readonly string[] = []) => {
      const free = (o.free ?? ['n1', 'n2', 'n3']).filter((n) => online.includes(n) && !except.includes(n))
      if (free.length < count) throw new Error('no room')
      return free.slice(0, count)
    },
    create: async (nodeIds: readonly string[]) => { calls.push(`create ${nodeIds.join(',')}`); return [] },
    drop: async (r: Pick<VolumeRecord, 'id' | 'replicas'>) => { calls.push(`delete ${r.replicas.map((p) => p.nodeId).join(',')}`) },
  }
  const healer = new Healer({ nodeId: self, kvdb: db, membership, placement, pace: { running: 0, concurrency: 2 }, replaceAfterMs: o.replaceAfterMs ?? 60_000, host, log: silent })
  const record = async (name: string) => (await db.get<VolumeRecord>(keys.volume(name)))!.value
  return { db, healer, held, calls, record, membership }
}

test('an unmounted volume with a replica back online is taken for healing by its first online in-sync node only, and let go when nothing is left', async (t) => {
  const { db, healer, calls, held } = await setup(t)
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2'], inSync: ['n1'] }))
  const other = await setup(t, { nodeId: 'n2' })
  await putVolume(other.db, volumeRecord('v', { replicas: ['n1', 'n2'], inSync: ['n1'] }))
  await other.healer.tick()
  t.deepEqual(other.calls, [], 'n2 is not the healer of v')
  await healer.tick()
  t.deepEqual(calls, ['hold v', 'resync v'])
  t.like(await attachmentOf(db, 'v'), { nodeId: 'n1', purpose: 'resync' })
  t.true(held.has('v'))
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2'] }))
  await healer.tick()
  t.is(calls.at(-1), 'release v', 'in sync: let go')
})

test('a node offline longer than --replace-after: offline mark, replacement placed and retiring, then dropped once the new one is in sync', async (t) => {
  const { db, healer, calls, record } = await setup(t, { online: ['n1', 'n3'], replaceAfterMs: 1_000 })
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2'] }))
  await healer.tick()
  const mark = await db.get<{ since: string }>(keys.offlineSince('n2'))
  t.truthy(mark, 'n2 marked offline')
  t.deepEqual(calls, [], 'not due yet: nothing held, nothing placed')
  await db.put(keys.offlineSince('n2'), { since: new Date(Date.now() - 2_000).toISOString() })
  await healer.tick()
  t.deepEqual(calls.slice(0, 2), ['hold v', 'create n3'])
  const moving = await record('v')
  t.deepEqual(moving.replicas.map((r) => r.nodeId), ['n1', 'n2', 'n3'])
  t.deepEqual(moving.retiring, ['n2'])
  await putVolume(db, { ...moving, inSync: ['n1', 'n3'] })
  await healer.tick()
  const done = await record('v')
  t.deepEqual(done.replicas.map((r) => r.nodeId), ['n1', 'n3'])
  t.is(done.retiring, undefined)
  t.true(calls.includes('retire v n2') && calls.includes('delete n2'), calls.join('; '))
  t.is(healer.replacements, 1)
})

test('no node with room: the volume is not taken (no epoch bump for nothing)', async (t) => {
  const { db, healer, calls } = await setup(t, { online: ['n1', 'n3'], replaceAfterMs: 1_000, free: ['n1'] })
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2'] }))
  await db.put(keys.offlineSince('n2'), { since: new Date(Date.now() - 2_000).toISOString() })
  await healer.tick()
  t.deepEqual(calls, [])
  t.is(await attachmentOf(db, 'v'), undefined)
})

test('a holder whose lease expired is not taken from until its replacement is due', async (t) => {
  const { db, healer, calls } = await setup(t, { online: ['n1', 'n3'], replaceAfterMs: 60_000 })
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2', 'n3'], inSync: ['n1', 'n2'] }))
  await putAttachment(db, 'v', { nodeId: 'n2', epoch: 3 })
  await healer.tick()
  t.deepEqual(calls, [], 'n2 may still be serving, cut from etcd only')
  t.deepEqual(await attachmentOf(db, 'v'), { nodeId: 'n2', epoch: 3 } satisfies AttachmentRecord)
})

test('a held volume another node took over is dropped here without a release', async (t) => {
  const { db, healer, calls, held } = await setup(t)
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2'], inSync: ['n1'] }))
  await healer.tick()
  await putAttachment(db, 'v', { nodeId: 'n3', epoch: 9 })
  await healer.tick()
  t.true(calls.includes('drop v'))
  t.false(calls.includes('release v'))
  t.false(held.has('v'))
})

test('a draining node: its replicas are replaced while it is online, and nothing new is placed there', async (t) => {
  const { db, healer, record } = await setup(t)
  await putVolume(db, volumeRecord('v', { replicas: ['n1', 'n2'] }))
  await db.put(keys.draining('n1'), { since: new Date().toISOString() })
  await healer.tick()
  const moving = await record('v')
  t.deepEqual(moving.replicas.map((r) => r.nodeId), ['n1', 'n2', 'n3'], 'the new one is not on n1 (draining) nor n2 (has one)')
  t.deepEqual(moving.retiring, ['n1'])
})
