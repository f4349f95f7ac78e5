import test from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { isPxdError, PxdError } from '../../src/errors'
import { EmbeddedKvdb } from '../../src/kvdb/embedded'
import { keys } from '../../src/kvdb/kvdb'
import { ReplicaDirectory, type PeerDialer } from '../../src/replicas/directory'
import { LocalReplica } from '../../src/replicas/local-replica'
import { decodeEpoch, encodeEpoch, replicaRequestError, type PeerChannel } from '../../src/replicas/protocol'
import { ReplicaClient } from '../../src/replicas/replica-client'
import { ReplicaHost } from '../../src/replicas/replica-host'
import type { OutgoingRequest } from '../../src/replication'

const log = pino({ level: 'silent' })

/** A peer link that records each request and answers with `reply`. */
class FakeChannel implements PeerChannel {
  readonly sent: OutgoingRequest[] = []
  constructor(private readonly reply: (req: OutgoingRequest) => Uint8Array | undefined | Error) {}
  async request(req: OutgoingRequest): Promise<Uint8Array | undefined> {
    this.sent.push(req)
    const r = this.reply(req)
    if (r instanceof Error) throw r
    return r
  }
}

test('the epoch codec round-trips and reads a missing epoch as -1', (t) => {
  for (const epoch of [0, 1, 7, 2 ** 40, Number.MAX_SAFE_INTEGER]) t.is(decodeEpoch(encodeEpoch(epoch)), epoch)
  t.is(decodeEpoch(undefined), -1)
  t.is(decodeEpoch(new Uint8Array(3)), -1)
})

test('a client builds each request with the volume, its epoch and the sequence, and reads the epoch back', async (t) => {
  const link = new FakeChannel((req) => (req.t === 'open' ? encodeEpoch(4) : req.t === 'read' ? Buffer.alloc(req.length, 7) : undefined))
  const client = new ReplicaClient('b', link, { volumeId: '00000000000000aa', size: 1 << 20, epoch: 5 })
  t.is(await client.open(), 4)
  await client.write(4096, Buffer.alloc(4096, 1), 9)
  const into = Buffer.alloc(8)
  await client.read(0, into)
  t.deepEqual(into, Buffer.alloc(8, 7))
  await client.flush()
  await client.close()
  t.like(link.sent[0], { t: 'open', vol: '00000000000000aa', epoch: 5, size: 1 << 20 })
  t.like(link.sent[1], { t: 'write', vol: '00000000000000aa', epoch: 5, seq: 9, offset: 4096 })
  t.like(link.sent[2], { t: 'read', vol: '00000000000000aa', epoch: 5, offset: 0, length: 8 })
  t.deepEqual(link.sent.slice(3).map((r) => r.t), ['flush', 'close'])
})

test('a short read answer is an IO_ERROR, never a partial buffer', async (t) => {
  const client = new ReplicaClient('b', new FakeChannel(() => Buffer.alloc(2)), { volumeId: '00000000000000aa', size: 1 << 20, epoch: 1 })
  const err = await t.throwsAsync(client.read(0, Buffer.alloc(8)))
  t.true(isPxdError(err, 'IO_ERROR'), String(err))
})

test('a peer refusal keeps its code and block; an unknown code means the replica is unreachable', async (t) => {
  const refused = new PxdError('CHECKSUM_MISMATCH', 'bad block', { block: 12, peer: 'b' })
  const link = new FakeChannel(() => refused)
  const err = await t.throwsAsync(new ReplicaClient('b', link, { volumeId: '00000000000000aa', size: 1 << 20, epoch: 1 }).read(0, Buffer.alloc(8)))
  t.true(isPxdError(err, 'CHECKSUM_MISMATCH'), String(err))
  t.is((err as PxdError).block, 12)
  t.is((err as PxdError).peer, 'b')
  t.is((err as PxdError).cause, refused)
  const stale = replicaRequestError('c', 'write', Object.assign(new Error('old'), { code: 'STALE_EPOCH' }))
  t.is(stale.code, 'STALE_EPOCH')
  t.is(stale.block, undefined)
  t.is(replicaRequestError('c', 'write', Object.assign(new Error('?'), { code: 'ECONNRESET' })).code, 'PEER_UNAVAILABLE')
  t.is(replicaRequestError('c', 'write', 'not even an error').code, 'PEER_UNAVAILABLE')
})

test('create and drop go to the node as their own requests', async (t) => {
  const link = new FakeChannel(() => undefined)
  await ReplicaClient.create('b', link, '00000000000000aa', 1 << 20)
  await ReplicaClient.drop('b', link, '00000000000000aa')
  t.deepEqual(link.sent, [{ t: 'create', vol: '00000000000000aa', size: 1 << 20 }, { t: 'drop', vol: '00000000000000aa' }])
})

test('the directory serves this node from its host and other nodes over their links, at the address the kvdb gives', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-directory-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const kvdb = await EmbeddedKvdb.open(path.join(dir, 'kvdb.json'))
  t.teardown(() => kvdb.close())
  const host = new ReplicaHost(dir, log)
  t.teardown(() => host.close())
  const dialed: Array<[string, string]> = []
  const link = new FakeChannel(() => undefined)
  const peers: PeerDialer = { link: (nodeId, address) => { dialed.push([nodeId, address]); return link } }
  const directory = new ReplicaDirectory({ nodeId: 'a', host, kvdb, peers })
  const volumeId = '00000000000000bb'
  await kvdb.put(keys.member('b'), { nodeId: 'b', peerAddress: '10.0.0.2:9002' })
  await kvdb.put(keys.volume('vol'), { id: volumeId, name: 'vol', spec: { size: 1 << 20 }, replicas: [{ nodeId: 'a' }, { nodeId: 'b' }], inSync: ['a', 'b'] })

  await directory.create('a', volumeId, 1 << 20)
  t.true(await host.exists(volumeId), 'the local replica is made by this node\'s host')
  t.true((await directory.replica('a', volumeId, 1 << 20, 1)) instanceof LocalReplica)
  t.true((await directory.replica('b', volumeId, 1 << 20, 1)) instanceof ReplicaClient)
  await directory.drop('b', volumeId)
  t.deepEqual(dialed.at(-1), ['b', '10.0.0.2:9002'])
  t.like(link.sent.at(-1), { t: 'drop', vol: volumeId })
  t.deepEqual(await directory.volumeById(volumeId), { size: 1 << 20, replicas: ['a', 'b'] })
  t.is(await directory.volumeById('00000000000000cc'), undefined)

  const noAddress = await t.throwsAsync(directory.replica('c', volumeId, 1 << 20, 1))
  t.true(isPxdError(noAddress, 'PEER_UNAVAILABLE'), String(noAddress))
  const single = new ReplicaDirectory({ nodeId: 'a', host, kvdb })
  t.true(isPxdError(await t.throwsAsync(single.replica('b', volumeId, 1 << 20, 1)), 'PEER_UNAVAILABLE'), 'a node without peer links reaches no other node')
})
