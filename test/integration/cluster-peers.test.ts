/**
 * What a peer may not do: talk without the cluster secret, forge or oversize frames,
 * write with a stale epoch, name a volume the node does not hold. Each is refused,
 * the daemon keeps serving, and no block of any replica changes.
 */
import test from 'ava'
import { createHash, randomBytes } from 'node:crypto'
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import WebSocket, { type ClientOptions } from 'ws'
import { ApiClient } from '../../src/api/client'
import { PEER_PATH, PeerLinks, decodeFrame, encodeFrame } from '../../src/replication'
import { PEER_PROTOCOLS } from '../../src/replication/protocol'
import { clientPskOptions, peerPsk } from '../../src/replication/psk'
import { REPO_ROOT } from '../helpers/paths'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, type Cluster, type ClusterNode } from '../helpers/cluster'
import { pluginCall } from '../helpers/plugin-client'

assertIntegrationPreconditions()

let cluster: Cluster
let volumeId = ''
let epoch = 0

const log = pino({ level: 'silent' })
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

async function replicaDigest(n: ClusterNode): Promise<string> {
  const dir = path.join(n.dataDir, 'replicas', volumeId)
  return sha(Buffer.concat([await fs.readFile(path.join(dir, 'data')), await fs.readFile(path.join(dir, 'crc'))]))
}

/** Send raw frames to a node's peer port; collect what it answers until it closes. */
function rawExchange(n: ClusterNode, messages: Buffer[]): Promise<{ frames: Array<Record<string, unknown>>; closed: boolean }> {
  return new Promise((resolve, reject) => {
    // Inside the TLS-PSK layer every node runs by default: what the frame protocol refuses.
    const psk = clientPskOptions(peerPsk(cluster.secret, cluster.clusterId), { secured: false }) as unknown as ClientOptions
    const ws = new WebSocket(`wss://127.0.0.1:${n.peerPort}${PEER_PATH}`, psk)
    const frames: Array<Record<string, unknown>> = []
    const timer = setTimeout(() => { ws.terminate(); resolve({ frames, closed: false }) }, 8_000)
    ws.on('open', () => { for (const m of messages) ws.send(m) })
    ws.on('message', (data: Buffer) => {
      try {
        frames.push(decodeFrame(data) as unknown as Record<string, unknown>)
      } catch {
        frames.push({ undecodable: true })
      }
    })
    ws.on('close', () => { clearTimeout(timer); resolve({ frames, closed: true }) })
    ws.on('error', (err) => { clearTimeout(timer); if (frames.length === 0) reject(err) })
  })
}

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
  const a = cluster.node('node-a')
  const created = await pluginCall(a.pluginSocket, '/VolumeDriver.Create', { Name: 'guarded', Opts: { size: '32M', repl: '2' } })
  if (created.body.Err !== '') throw new Error(String(created.body.Err))
  const mp = (await pluginCall(a.pluginSocket, '/VolumeDriver.Mount', { Name: 'guarded', ID: 'x' })).body.Mountpoint as string
  await fs.writeFile(path.join(mp, 'f'), randomBytes(1024 * 1024))
  await pluginCall(a.pluginSocket, '/VolumeDriver.Unmount', { Name: 'guarded', ID: 'x' })
  const info = await new ApiClient(a.apiUrl).inspectVolume('guarded')
  volumeId = info.id
  epoch = info.epoch
})

test.after.always(async () => {
  await cluster?.stop()
})

const write = (e: number, vol = volumeId) =>
  ({ t: 'write' as const, vol, epoch: e, seq: 1, offset: 0, data: Buffer.alloc(4096, 0xab) })

test('a write before the handshake is refused and the link closed', async (t) => {
  const b = cluster.node('node-b')
  const before = await replicaDigest(b)
  const r = await rawExchange(b, [encodeFrame({ ...write(epoch + 5), id: 1 })])
  t.true(r.closed)
  t.is(r.frames[0]?.t, 'error')
  t.is(r.frames[0]?.code, 'AUTH_REQUIRED')
  t.is(await replicaDigest(b), before)
})

test('random bytes and an oversized frame are refused', async (t) => {
  const b = cluster.node('node-b')
  const before = await replicaDigest(b)
  const forged = await rawExchange(b, [randomBytes(300)])
  t.true(forged.closed)
  t.is(forged.frames[0]?.t, 'error')
  const huge = await rawExchange(b, [randomBytes(4 * 1024 * 1024)])
  t.true(huge.closed)
  t.regex(String(huge.frames[0]?.code ?? 'closed'), /FRAME_TOO_LARGE|AUTH_REQUIRED|closed/)
  t.is(await replicaDigest(b), before)
})

test('a wrong secret fails the handshake; nothing is written', async (t) => {
  const b = cluster.node('node-b')
  const before = await replicaDigest(b)
  const impostor = new PeerLinks({ nodeId: 'intruder', clusterId: cluster.clusterId, secret: randomBytes(32), log, psk: true })
  try {
    const err = await t.throwsAsync(impostor.link('node-b', `127.0.0.1:${b.peerPort}`).request(write(epoch + 5)))
    t.is((err as { code?: string }).code, 'AUTH_FAILED')
  } finally {
    await impostor.close()
  }
  t.is(await replicaDigest(b), before)
})

test('an authenticated peer is still refused stale epochs, unknown volumes and writes past the end', async (t) => {
  const b = cluster.node('node-b')
  const before = await replicaDigest(b)
  const peer = new PeerLinks({ nodeId: 'node-x', clusterId: cluster.clusterId, secret: cluster.secret, log, psk: true })
  try {
    const link = peer.link('node-b', `127.0.0.1:${b.peerPort}`)
    const stale = await t.throwsAsync(link.request(write(epoch - 1)))
    t.is((stale as { code?: string }).code, 'STALE_EPOCH')
    const unknown = await t.throwsAsync(link.request(write(epoch, '00000000deadbeef')))
    t.is((unknown as { code?: string }).code, 'UNKNOWN_VOLUME')
    const open = await t.throwsAsync(link.request({ t: 'open', vol: '00000000deadbeef', epoch: 99, size: 4096 }))
    t.is((open as { code?: string }).code, 'UNKNOWN_VOLUME')
    const current = await t.throwsAsync(link.request({ t: 'write', vol: volumeId, epoch, seq: 1, offset: 64 * 1024 * 1024, data: Buffer.alloc(4096) }))
    t.is((current as { code?: string }).code, 'INVALID_ARGUMENT', 'a write past the end of the volume')
  } finally {
    await peer.close()
  }
  t.is(await replicaDigest(b), before, 'no block changed')
})

test('the daemons settle the peer protocol and learn each other\'s release in the handshake', (t) => {
  const version = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version
  for (const [n, other] of [[cluster.node('node-a'), 'node-b'], [cluster.node('node-b'), 'node-a']] as const) {
    // The other node's links, not this file's hand-made clients (which send the older hello).
    const ups = n.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r.msg === 'peer link up' && r.peer === other)
    t.true(ups.length > 0, `${n.nodeId} logged a peer link up with ${other}`)
    for (const up of ups) t.like(up, { protocol: PEER_PROTOCOLS.max, peerVersion: version }, JSON.stringify(up))
  }
})

test('the daemon keeps serving after all of the above', async (t) => {
  const b = cluster.node('node-b')
  const list = await pluginCall(b.pluginSocket, '/VolumeDriver.List', {})
  t.deepEqual((list.body.Volumes as Array<{ Name: string }>).map((v) => v.Name), ['guarded'])
  const m = await pluginCall(b.pluginSocket, '/VolumeDriver.Mount', { Name: 'guarded', ID: 'y' })
  t.is(m.body.Err, '', m.raw)
  t.is((await fs.readFile(path.join(m.body.Mountpoint as string, 'f'))).length, 1024 * 1024)
  await pluginCall(b.pluginSocket, '/VolumeDriver.Unmount', { Name: 'guarded', ID: 'y' })
})
