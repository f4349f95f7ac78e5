import test from 'ava'
import { VolumeEngine } from '../../src/engine/volume-engine'
import { isPxdError, pxdError, type PxdError } from '../../src/errors'
import { MemReplica } from './mem-replica'

const SIZE = 64 * 1024
const VOLUME = '0123456789abcdef'

function pair(demote: (failed: Array<{ nodeId: string; error: unknown }>) => Promise<void>) {
  const a = new MemReplica('a', SIZE)
  const b = new MemReplica('b', SIZE)
  b.beforeWrite = () => { throw pxdError('PEER_TIMEOUT', 'b did not answer') }
  const fenced: PxdError[] = []
  const engine = new VolumeEngine({ volumeId: VOLUME, size: SIZE, replicas: [a, b], demote, onFenced: (e) => fenced.push(e) })
  return { a, b, engine, fenced }
}

test('a write one replica fails is acknowledged once that replica is demoted, and the rest carry on without it', async (t) => {
  const calls: string[][] = []
  const { a, b, engine } = pair(async (failed) => { calls.push(failed.map((f) => f.nodeId)) })
  await engine.write(0, Buffer.alloc(4096, 1))
  t.deepEqual(calls, [['b']])
  t.deepEqual(engine.inSync, ['a'])
  t.is(b.closed, 1)
  await engine.write(4096, Buffer.alloc(4096, 2))
  t.deepEqual(a.writes, [[0, 4096], [4096, 4096]])
  t.deepEqual(calls, [['b']], 'not demoted twice')
})

test('a write whose demotion cannot be recorded is not acknowledged, and the replica stays in sync', async (t) => {
  const { engine } = pair(() => Promise.reject(pxdError('KVDB_UNAVAILABLE', 'kvdb down')))
  t.true(isPxdError(await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1))), 'KVDB_UNAVAILABLE'))
  t.deepEqual(engine.inSync, ['a', 'b'])
})

test('a demotion the kvdb refuses as FENCED fences the engine, once', async (t) => {
  const { engine, fenced } = pair(() => Promise.reject(pxdError('FENCED', 'attached elsewhere')))
  t.true(isPxdError(await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1))), 'FENCED'))
  t.is(fenced.length, 1)
  t.true(isPxdError(await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1))), 'FENCED'))
  t.true(isPxdError(await t.throwsAsync(engine.flush()), 'FENCED'))
  t.is(fenced.length, 1)
})

test('a replica refusing with STALE_EPOCH fences the engine without any demotion', async (t) => {
  let demotions = 0
  const { b, engine, fenced } = pair(async () => { demotions++ })
  b.beforeWrite = () => { throw pxdError('STALE_EPOCH', 'newer epoch') }
  t.true(isPxdError(await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1))), 'FENCED'))
  t.is(demotions, 0)
  t.is(fenced.length, 1)
  t.deepEqual(engine.inSync, ['a', 'b'])
})

test('when every replica fails a write it fails with the first error and nobody is demoted', async (t) => {
  let demotions = 0
  const { a, engine } = pair(async () => { demotions++ })
  a.beforeWrite = () => { throw pxdError('IO_ERROR', 'a failed') }
  const err = await t.throwsAsync(engine.write(0, Buffer.alloc(4096, 1)))
  t.is(err?.message, 'a failed')
  t.is(demotions, 0)
  t.deepEqual(engine.inSync, ['a', 'b'])
})
