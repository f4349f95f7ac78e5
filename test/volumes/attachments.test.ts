import test, { type ExecutionContext } from 'ava'
import { isPxdError, pxdError } from '../../src/errors'
import type { Kvdb } from '../../src/kvdb/kvdb'
import { KeyedMutex } from '../../src/util/mutex'
import { Attachments, RELEASE_RETRY_MS } from '../../src/volumes/attachments'
import { attachmentOf, FakeMembership, HookedKvdb, node, openKvdb, putAttachment, silent, sleep } from './fakes'

const VOL = 'vol1'

function attachments(kvdb: Kvdb, nodeId: string, membership: FakeMembership) {
  return new Attachments({ nodeId, kvdb, membership, locks: new KeyedMutex(), log: silent })
}

async function setup(t: ExecutionContext) {
  const db = await openKvdb(t)
  const hooked = new HookedKvdb(db)
  const membership = new FakeMembership([node('n1'), node('n2')])
  return { db, hooked, membership, n1: attachments(hooked, 'n1', membership), n2: attachments(hooked, 'n2', membership) }
}

test('a claim on a free volume takes it at the next epoch, clean', async (t) => {
  const { db, n1 } = await setup(t)
  t.deepEqual(await n1.claim(VOL), { epoch: 1, unclean: false, previous: undefined })
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1 })
  await n1.release(VOL, 1)
  t.deepEqual(await n1.claim(VOL), { epoch: 2, unclean: false, previous: { nodeId: null, epoch: 1 } }, 'every claim bumps the epoch, even by the same node')
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 2 })
})

test('a claim against a holder that is online is IN_USE and changes nothing', async (t) => {
  const { db, n1, n2 } = await setup(t)
  await n1.claim(VOL)
  const err = await t.throwsAsync(n2.claim(VOL))
  t.true(isPxdError(err, 'IN_USE'), String(err))
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1 })
})

test('a claim against an offline holder takes the volume over and marks it unclean', async (t) => {
  const { db, n1, n2, membership } = await setup(t)
  await n1.claim(VOL)
  membership.list = [node('n1', { online: false }), node('n2')]
  t.deepEqual(await n2.claim(VOL), { epoch: 2, unclean: true, previous: { nodeId: 'n1', epoch: 1 } })
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n2', epoch: 2, unclean: true })
})

test('a detached volume that is still unclean stays unclean through the next claim', async (t) => {
  const { db, n1 } = await setup(t)
  await putAttachment(db, VOL, { nodeId: null, epoch: 4, unclean: true })
  t.deepEqual(await n1.claim(VOL), { epoch: 5, unclean: true, previous: { nodeId: null, epoch: 4, unclean: true } })
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 5, unclean: true })
})

test('a claim loses the compare-and-swap to a concurrent claim: CONFLICT, the other claim stands', async (t) => {
  const { db, hooked, n1 } = await setup(t)
  hooked.onTxn = () => putAttachment(db, VOL, { nodeId: 'n2', epoch: 1 })
  const err = await t.throwsAsync(n1.claim(VOL))
  t.true(isPxdError(err, 'CONFLICT'), String(err))
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n2', epoch: 1 })
})

test('release: only the holder at its epoch gives the volume back; the epoch stays', async (t) => {
  const { db, n1, n2 } = await setup(t)
  await n1.claim(VOL)
  await n1.release(VOL, 2)
  await n2.release(VOL, 1)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1 }, 'a stale epoch or another node releases nothing')
  await n1.release(VOL, 1)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 1 })
  await n1.release('never-attached', 1)
  t.is(await attachmentOf(db, 'never-attached'), undefined)
})

test('release keeps the unclean mark', async (t) => {
  const { db, n1, n2, membership } = await setup(t)
  await n1.claim(VOL)
  membership.list = [node('n1', { online: false }), node('n2')]
  await n2.claim(VOL)
  await n2.release(VOL, 2)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 2, unclean: true })
})

test('markClean clears the mark while the volume is ours at the epoch, and is FENCED once it moved', async (t) => {
  const { db, n1, n2, membership } = await setup(t)
  await putAttachment(db, VOL, { nodeId: null, epoch: 1, unclean: true })
  await n1.claim(VOL)
  membership.list = [node('n1', { online: false }), node('n2')]
  await n2.claim(VOL)
  const err = await t.throwsAsync(n1.markClean(VOL, 2))
  t.true(isPxdError(err, 'FENCED'), String(err))
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n2', epoch: 3, unclean: true }, 'the fenced node changed nothing')
  const stale = await t.throwsAsync(n2.markClean(VOL, 2))
  t.true(isPxdError(stale, 'FENCED'), 'the holder at an older epoch is fenced too')
  await n2.markClean(VOL, 3)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n2', epoch: 3 })
})

test('after a restart every volume this node held is marked detached and unclean; others are left alone', async (t) => {
  const { db, n1 } = await setup(t)
  await putAttachment(db, 'a', { nodeId: 'n1', epoch: 3 })
  await putAttachment(db, 'b', { nodeId: 'n2', epoch: 7 })
  await putAttachment(db, 'c', { nodeId: null, epoch: 2 })
  await n1.markDetachedAfterRestart()
  t.deepEqual(await attachmentOf(db, 'a'), { nodeId: null, epoch: 3, unclean: true })
  t.deepEqual(await attachmentOf(db, 'b'), { nodeId: 'n2', epoch: 7 })
  t.deepEqual(await attachmentOf(db, 'c'), { nodeId: null, epoch: 2 })
})

test('a release the kvdb refused is retried in the background until it is recorded', async (t) => {
  const { db, hooked, n1 } = await setup(t)
  await n1.claim(VOL)
  const down = pxdError('KVDB_UNAVAILABLE', 'etcd is unreachable')
  hooked.onTxn = () => { throw down }
  t.is(await t.throwsAsync(n1.release(VOL, 1)), down)
  n1.retryRelease(VOL, 1)
  await sleep(RELEASE_RETRY_MS + 200)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1 }, 'still refused: still attached')
  hooked.onTxn = undefined
  await sleep(RELEASE_RETRY_MS + 200)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 1 })
})

test('no background release runs after stop', async (t) => {
  const { db, n1 } = await setup(t)
  await n1.claim(VOL)
  n1.retryRelease(VOL, 1)
  n1.stop()
  await sleep(RELEASE_RETRY_MS + 200)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1 })
})

test('unclaim puts the attachment back as the claim found it, and only while this node holds it at that epoch', async (t) => {
  const { db, n1, n2, membership } = await setup(t)
  const first = await n1.claim(VOL)
  await n1.unclaim(VOL, first)
  t.is(await attachmentOf(db, VOL), undefined, 'a volume never attached before has no attachment again')
  await putAttachment(db, VOL, { nodeId: null, epoch: 7 })
  for (let i = 0; i < 5; i++) await n1.unclaim(VOL, await n1.claim(VOL))
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 7 }, 'failed attaches retried do not bump the epoch')
  await n1.claim(VOL)
  membership.list = [node('n1', { online: false }), node('n2')]
  const takeover = await n2.claim(VOL)
  await n2.unclaim(VOL, takeover)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 8 })
  const stale = await n2.claim(VOL)
  await putAttachment(db, VOL, { nodeId: 'n1', epoch: 10 })
  await n2.unclaim(VOL, stale)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 10 }, 'a claim that was superseded changes nothing')
})

test('a release of an engine whose replicas may differ leaves the volume unclean for the next attach to reconcile', async (t) => {
  const { db, n1 } = await setup(t)
  await n1.claim(VOL)
  await n1.release(VOL, 1, { unclean: true })
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 1, unclean: true })
  t.like(await n1.claim(VOL), { epoch: 2, unclean: true })
})

test('a background resync holds a volume with its own epoch; a mount claim takes it over while its node is online, without marking it unclean', async (t) => {
  const { db, n1, n2 } = await setup(t)
  t.deepEqual(await n1.claim(VOL, 'resync'), { epoch: 1, unclean: false, previous: undefined })
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1, purpose: 'resync' })
  const err = await t.throwsAsync(n2.claim(VOL, 'resync'))
  t.true(isPxdError(err, 'IN_USE'), 'another background resync does not take it')
  t.like(await n2.claim(VOL), { epoch: 2, unclean: false })
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n2', epoch: 2 }, 'an ordinary attachment now')
  t.true(isPxdError(await t.throwsAsync(n1.claim(VOL)), 'IN_USE'), 'and no one takes that from an online holder')
})

test('markMounted turns a background hold into an ordinary attachment, only at its epoch', async (t) => {
  const { db, n1, n2 } = await setup(t)
  await n1.claim(VOL, 'resync')
  await n1.markMounted(VOL, 1)
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: 'n1', epoch: 1 })
  t.true(isPxdError(await t.throwsAsync(n2.claim(VOL)), 'IN_USE'))
  t.true(isPxdError(await t.throwsAsync(n1.markMounted(VOL, 2)), 'FENCED'))
})

test('a restart leaves a background hold clean, an ordinary one unclean', async (t) => {
  const { db, n1 } = await setup(t)
  await n1.claim(VOL, 'resync')
  await putAttachment(db, 'other', { nodeId: 'n1', epoch: 4 })
  await n1.markDetachedAfterRestart()
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 1 })
  t.deepEqual(await attachmentOf(db, 'other'), { nodeId: null, epoch: 4, unclean: true })
})
