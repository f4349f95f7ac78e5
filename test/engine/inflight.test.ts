import test from 'ava'
import { dirtyRanges, RESYNC_SCAN_BYTES } from '../../src/engine/resync'
import { InflightWrites } from '../../src/engine/inflight'
import { DIRTY_REGION_BYTES } from '../../src/replicas/dirty-map'
import { deferred, tick } from './mem-replica'

test('copy locks on disjoint regions are held at once; an overlapping one waits; writes wait only for the locks they overlap', async (t) => {
  const w = new InflightWrites()
  const first = deferred()
  const order: string[] = []
  const a = w.withCopyLock(0, 100, async () => { order.push('a'); await first.promise; order.push('a done') })
  const b = w.withCopyLock(100, 100, async () => { order.push('b') })
  await tick()
  await b
  t.deepEqual(order, ['a', 'b'], 'the disjoint copy ran while the first held its lock')
  const c = w.withCopyLock(50, 100, async () => { order.push('c') })
  await tick()
  t.deepEqual(order, ['a', 'b'], 'the overlapping copy waits')
  t.truthy(w.blocker(10, 20), 'a write into a locked region waits')
  t.is(w.blocker(300, 400), undefined, 'a write elsewhere does not')
  first.resolve()
  await Promise.all([a, c])
  t.deepEqual(order, ['a', 'b', 'a done', 'c'])
})

test('a copy waits for the overlapping writes in flight, not for the others', async (t) => {
  const w = new InflightWrites()
  const far = deferred()
  w.add(1000, 2000, far.promise, 1)
  let ran = false
  await w.withCopyLock(0, 100, async () => { ran = true })
  t.true(ran, 'a write elsewhere still in flight does not hold the copy back')
  const near = deferred()
  w.add(50, 60, near.promise, 2)
  let ranNear = false
  const copying = w.withCopyLock(0, 100, async () => { ranNear = true })
  await tick()
  t.false(ranNear)
  near.resolve()
  await copying
  t.true(ranNear)
  far.resolve()
})

test('dirty regions become compare ranges: adjacent ones merged up to one scan request, in order', (t) => {
  const R = DIRTY_REGION_BYTES
  const per = RESYNC_SCAN_BYTES / R
  t.deepEqual(dirtyRanges([5, 1, 2, 3], 100 * R), [[R, 3 * R], [5 * R, R]])
  const many = Array.from({ length: per + 1 }, (_, i) => i)
  t.deepEqual(dirtyRanges(many, 1000 * R), [[0, RESYNC_SCAN_BYTES], [RESYNC_SCAN_BYTES, R]])
  t.deepEqual(dirtyRanges([9, 10], 9 * R + 4096), [[9 * R, 4096]], 'clipped at the end of the volume, none past it')
})
