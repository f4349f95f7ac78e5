import test from 'ava'
import type { OutgoingRequest, RequestOptions } from '../../src/replication'
import { FLUSH_BASE_TIMEOUT_MS, FLUSH_TIMEOUT_MS, flushTimeoutMs, ReplicaClient } from '../../src/replicas/replica-client'

/** A peer channel that answers every request at once and records the options each came with. */
function channel() {
  const calls: Array<{ t: string; opts: RequestOptions | undefined }> = []
  return {
    calls,
    request: async (req: OutgoingRequest, opts?: RequestOptions): Promise<Uint8Array | undefined> => {
      calls.push({ t: req.t, opts })
      return undefined
    },
  }
}

test('a flush is not timed out as if it were a small write: its timeout grows with what it has to write out', async (t) => {
  const link = channel()
  const client = new ReplicaClient('n2', link, { volumeId: '0123456789abcdef', size: 1 << 30, epoch: 3 })
  await client.write(0, new Uint8Array(4096), 1)
  await client.flush()
  for (let i = 0; i < 64; i++) await client.write(i * (1 << 20), new Uint8Array(1 << 20), 2 + i)
  await client.flush()
  await client.flush()
  await client.close()
  const timeouts = link.calls.filter((c) => c.t !== 'write').map((c) => c.opts?.timeoutMs)
  t.deepEqual(link.calls.filter((c) => c.t === 'write').map((c) => c.opts), Array(65).fill(undefined), 'writes keep the link\'s default')
  t.is(timeouts[0], flushTimeoutMs(4096))
  t.true(timeouts[0]! < 10_000, 'a flush after a small write is noticed as soon as a write would be')
  t.true(timeouts[1]! >= FLUSH_BASE_TIMEOUT_MS + 3_000, `a flush of 64 MiB may take longer: ${timeouts[1]} ms`)
  t.is(timeouts[2], FLUSH_BASE_TIMEOUT_MS, 'nothing left to write out')
  t.is(timeouts[3], FLUSH_BASE_TIMEOUT_MS)
  t.is(flushTimeoutMs(1e12), FLUSH_TIMEOUT_MS, 'never more than the cap')
})
