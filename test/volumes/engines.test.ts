import test, { type ExecutionContext } from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isPxdError, pxdError } from '../../src/errors'
import { keys } from '../../src/kvdb/kvdb'
import type { VolumeEngine } from '../../src/engine/volume-engine'
import type { Replica } from '../../src/replicas/replica'
import { KeyedMutex } from '../../src/util/mutex'
import { Attachments } from '../../src/volumes/attachments'
import { VolumeEngines } from '../../src/volumes/engines'
import type { VolumeRecord } from '../../src/volumes/types'
import { attachmentOf, FakeMembership, HookedKvdb, node, openKvdb, putAttachment, putVolume, silent, volumeRecord } from './fakes'

const VOL = 'vol1'

/** A replica that opens (or refuses to) and serves nothing else. */
function replica(nodeId: string, opens: boolean): Replica {
  const fail = () => Promise.reject(pxdError('PEER_UNAVAILABLE', `${nodeId} is down`))
  return {
    nodeId,
    open: () => (opens ? Promise.resolve(0) : fail()),
    write: fail, discard: fail, read: fail, digest: fail, hashes: fail, grow: fail, snapshot: fail, restore: fail,
    flush: () => Promise.resolve(),
    close: () => Promise.resolve(),
  }
}

async function setup(t: ExecutionContext, opens: (nodeId: string) => boolean) {
  const db = await openKvdb(t)
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'pxd-engines-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const membership = new FakeMembership([node('n1'), node('n2', { online: false })])
  const hooked = new HookedKvdb(db)
  const attachments = new Attachments({ nodeId: 'n1', kvdb: hooked, membership, locks: new KeyedMutex(), log: silent })
  const opened: string[][] = []
  const engines = new VolumeEngines({
    nodeId: 'n1', dataDir,
    replicas: { replica: async (nodeId) => replica(nodeId, opens(nodeId)) },
    attachments,
    inSync: { demote: async () => { throw pxdError('IO_ERROR', 'no demotion in this test') }, inSyncOf: async () => [] },
    readRecord: async (name) => {
      const r = (await db.get<VolumeRecord>(keys.volume(name)))!.value
      opened.push(r.inSync)
      return r
    },
    engineEvents: undefined,
    onFenced: () => undefined,
    log: silent,
  })
  return { db, hooked, engines, opened }
}

test('a mount whose only in-sync replica is down fails and leaves the attachment as it found it, however often it is retried', async (t) => {
  const { db, engines } = await setup(t, (n) => n !== 'n2')
  await putVolume(db, volumeRecord(VOL, { replicas: ['n2'] }))
  await putAttachment(db, VOL, { nodeId: null, epoch: 1 })
  for (let i = 0; i < 5; i++) {
    const err = await t.throwsAsync(engines.attach(VOL))
    t.true(isPxdError(err), String(err))
  }
  t.deepEqual(await attachmentOf(db, VOL), { nodeId: null, epoch: 1 }, 'the epoch did not climb 1 -> 6')
})

test('the engine opens on the in-sync set as it is once the claim fenced the last holder', async (t) => {
  const { db, hooked, engines, opened } = await setup(t, () => true)
  await putVolume(db, volumeRecord(VOL, { replicas: ['n1', 'n2'] }))
  await putAttachment(db, VOL, { nodeId: 'n2', epoch: 3 })
  // The last holder (n2, cut off) commits a demotion just before our claim lands.
  hooked.onTxn = async (_txn, n) => {
    if (n === 0) await putVolume(db, volumeRecord(VOL, { replicas: ['n1', 'n2'], inSync: ['n1'] }))
  }
  const { engine, epoch, record } = await engines.attach(VOL)
  t.deepEqual(record.inSync, ['n1'])
  t.deepEqual(opened, [['n1']], 'the record was read after the claim')
  t.deepEqual(engine.inSync, ['n1'])
  await engines.detach(VOL, record.id, engine, epoch)
  t.like(await attachmentOf(db, VOL), { nodeId: null, epoch: 4 })
})

test('an engine that diverged is released unclean, so that the next attach reconciles its replicas', async (t) => {
  const releases: Array<{ name: string; epoch: number; options?: { unclean?: boolean } }> = []
  const engines = new VolumeEngines({
    nodeId: 'n1', dataDir: os.tmpdir(),
    replicas: { replica: async (nodeId) => replica(nodeId, true) },
    attachments: {
      claim: async () => { throw new Error('not in this test') },
      unclaim: async () => undefined,
      markClean: async () => undefined,
      release: async (name, epoch, options) => { releases.push({ name, epoch, ...(options ? { options } : {}) }) },
    },
    inSync: { demote: async () => undefined, inSyncOf: async () => [] },
    readRecord: async () => { throw new Error('not in this test') },
    engineEvents: undefined,
    onFenced: () => undefined,
    log: silent,
  })
  const engine = (diverged: boolean) => ({ diverged, close: async () => undefined }) as unknown as VolumeEngine
  await engines.detach(VOL, 'id', engine(false), 3)
  await engines.detach(VOL, 'id', engine(true), 4)
  t.deepEqual(releases, [{ name: VOL, epoch: 3 }, { name: VOL, epoch: 4, options: { unclean: true } }])
})
