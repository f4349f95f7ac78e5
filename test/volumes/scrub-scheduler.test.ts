import test from 'ava'
import { DEFAULT_SCRUB_BYTES_PER_SECOND } from '../../src/constants'
import type { ScrubResult } from '../../src/engine/volume-engine'
import { pxdError } from '../../src/errors'
import { ScrubScheduler, type ScrubbableVolume } from '../../src/volumes/scrub-scheduler'
import { silent, sleep, waitFor } from './fakes'

const INTERVAL_SECONDS = 0.05
type Calls = Array<{ name: string; bytesPerSecond: number | undefined; signal: AbortSignal | undefined }>

const RESULT: ScrubResult = { checkedBlocks: 1, badBlocks: 0, repairedBlocks: 0, unrecoverableBlocks: 0 }

function volume(calls: Calls, name: string, fail = false): ScrubbableVolume {
  return {
    volumeId: `${name}-id`,
    engine: {
      scrub: async (o = {}) => {
        calls.push({ name, bytesPerSecond: o.bytesPerSecond, signal: o.signal })
        if (fail) throw pxdError('IO_ERROR', 'disk gone')
        return RESULT
      },
    },
  }
}

test('every interval each attached volume is scrubbed in turn at the rate, until stop aborts the signal', async (t) => {
  const calls: Calls = []
  const attached = new Map([['a', volume(calls, 'a', true)], ['b', volume(calls, 'b')]])
  const scheduler = new ScrubScheduler({ intervalSeconds: INTERVAL_SECONDS, bytesPerSecond: 1234, attached, log: silent })
  scheduler.start()
  await waitFor(() => calls.length >= 2)
  scheduler.stop()
  t.deepEqual(calls.slice(0, 2).map((c) => [c.name, c.bytesPerSecond]), [['a', 1234], ['b', 1234]], 'a failing volume does not stop the next')
  t.true(calls.every((c) => c.signal === scheduler.signal))
  t.true(scheduler.signal.aborted)
  const after = calls.length
  await sleep(INTERVAL_SECONDS * 1000 * 3)
  t.is(calls.length, after, 'no scrub after stop')
})

test('no interval: no background scrub; the rate defaults to DEFAULT_SCRUB_BYTES_PER_SECOND', async (t) => {
  const calls: Calls = []
  const idle = new ScrubScheduler({ attached: new Map([['a', volume(calls, 'a')]]), log: silent })
  idle.start()
  await sleep(100)
  idle.stop()
  t.deepEqual(calls, [])
  const paced = new ScrubScheduler({ intervalSeconds: INTERVAL_SECONDS, attached: new Map([['a', volume(calls, 'a')]]), log: silent })
  paced.start()
  await waitFor(() => calls.length >= 1)
  paced.stop()
  t.is(calls[0]?.bytesPerSecond, DEFAULT_SCRUB_BYTES_PER_SECOND)
})
