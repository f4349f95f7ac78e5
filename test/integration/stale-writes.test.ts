/**
 * No write of an earlier session lands on a replica after a newer open was answered: a
 * write that a fenced coordinator (or one that timed out and gave the replica up) started
 * would otherwise overwrite what a resync copied. The replica's disk is stalled with the
 * power-loss file system so that the write is still running when the open arrives.
 */
import test from 'ava'
import pino from 'pino'
import { ReplicaHost } from '../../src/replicas/replica-host'
import { powerLossFsForTests } from '../helpers/power-loss'

const disk = powerLossFsForTests(test, 'pxd-stale-')

test('an open is answered only after the writes already running have landed', async (t) => {
  const host = new ReplicaHost(disk().mountpoint, pino({ level: 'silent' }))
  t.teardown(() => host.close())
  const vol = '00000000000000ab'
  await host.create(vol, 1 << 20)
  await host.open(vol, 1 << 20, 1)
  await disk().stall(1500)
  const events: string[] = []
  const write = host.write(vol, 1, 0, Buffer.alloc(64 * 1024, 7)).then(() => events.push('old write landed'))
  await new Promise((r) => setTimeout(r, 100))
  // The same epoch (a resync's re-open after its write timed out): the open itself needs no
  // disk, so only the wait for the running write orders the two.
  const open = host.open(vol, 1 << 20, 1).then(() => events.push('new open answered'))
  await Promise.all([write, open])
  t.deepEqual(events, ['old write landed', 'new open answered'])
  await host.open(vol, 1 << 20, 2)
  const err = await t.throwsAsync(host.write(vol, 1, 0, Buffer.alloc(4096)))
  t.is((err as { code?: string }).code, 'STALE_EPOCH', 'and the old session can write no more')
})

test('an epoch a replica acted on is still its epoch after a power cut (superblock renamed, then its directory synced)', async (t) => {
  const host = new ReplicaHost(disk().mountpoint, pino({ level: 'silent' }))
  const vol = '00000000000000ac'
  await host.create(vol, 1 << 20)
  t.is(await host.open(vol, 1 << 20, 5), 0)
  await host.close()
  const cut = await disk().cut()
  t.is(cut.undone.length, 0, `nothing of the replica's creation or epoch was left undurable: ${cut.undone.join(', ')}`)
  const again = new ReplicaHost(disk().mountpoint, pino({ level: 'silent' }))
  t.teardown(() => again.close())
  t.is(await again.open(vol, 1 << 20, 5), 5, 'the replica came back at epoch 5')
  const err = await t.throwsAsync(again.open(vol, 1 << 20, 4))
  t.is((err as { code?: string }).code, 'STALE_EPOCH', 'and still fences the older coordinator')
})
