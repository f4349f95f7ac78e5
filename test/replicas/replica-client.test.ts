import test from 'ava'
import type { OutgoingRequest, RequestOptions } from '../../src/replication'
import { FLUSH_TIMEOUT_MS, ReplicaClient } from '../../src/replicas/replica-client'

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

test('a flush is not timed out as if it were a small write: flush and close get FLUSH_TIMEOUT_MS, writes the link\'s default', async (t) => {
  const link = channel()
  const client = new ReplicaClient('n2', link, '0123456789abcdef', 1 << 20, 3)
  await client.write(0, new Uint8Array(4096), 1)
  await client.flush()
  await client.close()
  t.true(FLUSH_TIMEOUT_MS >= 60_000)
  t.deepEqual(link.calls, [
    { t: 'write', opts: undefined },
    { t: 'flush', opts: { timeoutMs: FLUSH_TIMEOUT_MS } },
    { t: 'close', opts: { timeoutMs: FLUSH_TIMEOUT_MS } },
  ])
})
