import test from 'ava'
import { dueForReplacement, healerOf, needingResync, needsHealing, readyToRetire, replacementDueAt, withoutReplicas, withReplacements, type ClusterView } from '../../src/volumes/healing-plan'
import { volumeRecord } from './fakes'

const NOW = Date.parse('2026-01-01T12:00:00Z')
const MIN = 60_000

function view(o: Partial<ClusterView> = {}): ClusterView {
  return { online: new Set(['a', 'b', 'c']), offlineSince: new Map(), draining: new Set(), replaceAfterMs: 10 * MIN, now: NOW, ...o }
}

test('a replica is due once its node has been offline longer than --replace-after, at once when draining, never with 0', (t) => {
  const rec = volumeRecord('v', { replicas: ['a', 'b'] })
  const away = view({ online: new Set(['a', 'c']), offlineSince: new Map([['b', NOW - 9 * MIN]]) })
  t.is(replacementDueAt('b', away), NOW + MIN)
  t.deepEqual(dueForReplacement(rec, away), [], 'not yet')
  t.deepEqual(dueForReplacement(rec, { ...away, now: NOW + MIN }), ['b'])
  t.is(replacementDueAt('b', { ...away, replaceAfterMs: 0 }), undefined, '0: never')
  t.is(replacementDueAt('b', view({ online: new Set(['a']) })), undefined, 'offline but nobody marked when: not due')
  t.deepEqual(dueForReplacement(rec, view({ draining: new Set(['a']) })), ['a'], 'a draining node is due while online')
  t.deepEqual(dueForReplacement({ ...rec, retiring: ['a'] }, view({ draining: new Set(['a']) })), [], 'not twice')
})

test('a retiring replica goes only once the replicas that stay hold repl in-sync copies', (t) => {
  const moving = withReplacements(volumeRecord('v', { replicas: ['a', 'b'] }), ['c'], ['b'], NOW)
  t.deepEqual(moving.replicas.map((r) => r.nodeId), ['a', 'b', 'c'])
  t.deepEqual(moving.retiring, ['b'])
  t.is(moving.degradedSince, new Date(NOW).toISOString())
  t.deepEqual(readyToRetire(moving), [], 'c is not in sync yet')
  const synced = { ...moving, inSync: ['a', 'b', 'c'] }
  t.deepEqual(readyToRetire(synced), ['b'])
  const done = withoutReplicas(synced, ['b'])
  t.deepEqual(done.replicas.map((r) => r.nodeId), ['a', 'c'])
  t.deepEqual(done.inSync, ['a', 'c'])
  t.is(done.retiring, undefined)
  t.is(done.degradedSince, undefined, 'healthy again')
  t.deepEqual(readyToRetire({ ...moving, inSync: ['b', 'c'] }), [], 'a and c must both be in sync, b does not count')
})

test('resync targets: out of sync, online, not retiring; the healer is the first online in-sync node', (t) => {
  const rec = { ...volumeRecord('v', { replicas: ['a', 'b', 'c'], inSync: ['b'] }), retiring: ['c'] }
  t.deepEqual(needingResync(rec, new Set(['a', 'b', 'c'])), ['a'])
  t.deepEqual(needingResync(rec, new Set(['b', 'c'])), [])
  t.is(healerOf(volumeRecord('v', { replicas: ['a', 'b'], inSync: ['a', 'b'] }), new Set(['b'])), 'b')
  t.is(healerOf(volumeRecord('v', { replicas: ['a', 'b'], inSync: ['a'] }), new Set(['b'])), undefined, 'no source online: nobody')
  t.false(needsHealing(volumeRecord('v', { replicas: ['a', 'b'] }), view()))
  t.true(needsHealing(volumeRecord('v', { replicas: ['a', 'b'], inSync: ['a'] }), view()))
})
