import test from 'ava'
import { isPxdError } from '../../src/errors'
import { ResyncPace } from '../../src/volumes/resync-pace'

test('slots: at most `concurrency` at once, each given back once', (t) => {
  const pace = new ResyncPace(1e9, 2)
  const one = pace.slot()!
  const two = pace.slot()!
  t.is(pace.slot(), undefined)
  t.is(pace.running, 2)
  one()
  one()
  t.is(pace.running, 1, 'giving a slot back twice frees it once')
  t.truthy(pace.slot())
  two()
})

test('copies are paced to the rate, with no burst after a quiet spell', async (t) => {
  const pace = new ResyncPace(10 * 1024 * 1024, 1)
  const start = Date.now()
  for (let i = 0; i < 10; i++) await pace.take(256 * 1024)
  // Ten 256 KiB copies at 10 MiB/s: the tenth starts 9 x 25 ms after the first.
  const elapsed = Date.now() - start
  t.true(elapsed >= 215 && elapsed < 400, `took ${elapsed} ms`)
  await new Promise((r) => setTimeout(r, 300))
  const again = Date.now()
  await pace.take(256 * 1024)
  await pace.take(256 * 1024)
  t.true(Date.now() - again >= 20, 'unused time is not saved up')
})

test('bad settings are refused', (t) => {
  t.true(isPxdError(t.throws(() => new ResyncPace(0, 1)), 'INVALID_ARGUMENT'))
  t.true(isPxdError(t.throws(() => new ResyncPace(1, 0)), 'INVALID_ARGUMENT'))
})
