/**
 * Peer links over mutual TLS: a CA and per-node certificates made with openssl in a temp
 * dir, a two-node cluster started with --peer-tls-*, a replicated volume written on one
 * node and read on the other. Then what TLS keeps out: a plain ws:// client, a client
 * certificate from another CA, a TLS node dialling a node without TLS. None of them
 * gets a frame in, and no replica changes. A node with a valid certificate and the secret
 * but no grant cannot drop or create a replica.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { ApiClient } from '../../src/api/client'
import { PeerLinks, type PeerTls } from '../../src/replication'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { makeTempDir, removeDir } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { issueCert, makeCa, plainDialError, tlsArgs, type NodeCert, type TestCa } from '../helpers/tls'
import { pluginOk as call, replicaDigest, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster
let certDir = ''
const certs = new Map<string, NodeCert>()
let foreign: NodeCert
let clusterCa: TestCa
let volumeId = ''
let before = ''
const payload = randomBytes(3 * 1024 * 1024)

const log = pino({ level: 'silent' })
const material = (c: NodeCert, nodeId: string, ca = c.caFile): PeerTls =>
  ({ cert: readFileSync(c.certFile), key: readFileSync(c.keyFile), ca: readFileSync(ca), nodeId })

/** sha256 of both replicas' data and checksum files. */
async function replicaDigests(): Promise<string> {
  return `node-a=${await replicaDigest(cluster.node('node-a'), volumeId)} node-b=${await replicaDigest(cluster.node('node-b'), volumeId)}`
}

test.before(async () => {
  certDir = makeTempDir('pxd-peer-tls-')
  const ca = clusterCa = makeCa(certDir)
  for (const id of ['node-a', 'node-b']) certs.set(id, issueCert(ca, id))
  // An impostor: a certificate for node-a, from a CA the cluster does not trust.
  foreign = issueCert(makeCa(certDir, 'other-ca'), 'node-a', {}, 'foreign-')
  // Nodes without a certificate here (node-c) start without TLS (not even the default TLS-PSK).
  cluster = await startCluster(['node-a', 'node-b'], { env: { PXD_PEER_PLAINTEXT: '1' }, extraArgs: (id) => (certs.has(id) ? tlsArgs(certs.get(id)!) : []) })
})

test.after.always(async () => {
  await cluster?.stop()
  if (certDir) removeDir(certDir)
})

test('a repl=2 volume written on node-a is read back on node-b, over TLS links', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  await call(a, '/VolumeDriver.Create', { Name: 'secure', Opts: { size: '32M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('secure')
  volumeId = info.id
  t.deepEqual(info.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
  const mp = (await call(a, '/VolumeDriver.Mount', { Name: 'secure', ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await call(a, '/VolumeDriver.Unmount', { Name: 'secure', ID: 'w' })

  const mpB = (await call(b, '/VolumeDriver.Mount', { Name: 'secure', ID: 'r' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mpB, 'payload.bin'))), sha(payload))
  await call(b, '/VolumeDriver.Unmount', { Name: 'secure', ID: 'r' })
  t.true((await new ApiClient(b.apiUrl).inspectVolume('secure')).replicas.every((r) => r.inSync))

  // Both servers listen with TLS, and the links between them came up with it.
  for (const n of [a, b]) {
    t.regex(n.logs(), /"tls":true[^\n]*"msg":"listening for peers"/)
    t.regex(n.logs(), /"tls":true[^\n]*"msg":"peer link up"/)
  }
  before = await replicaDigests()
})

test('a plain ws:// connection to a TLS peer port fails; the node logs it', async (t) => {
  const b = cluster.node('node-b')
  const err = await plainDialError(b.peerPort)
  t.not(err.message, 'opened')
  // A plain node with the real secret gets no further.
  const plain = new PeerLinks({ nodeId: 'node-a', clusterId: cluster.clusterId, secret: cluster.secret, log })
  try {
    const e = await t.throwsAsync(plain.link('node-b', `127.0.0.1:${b.peerPort}`).request({ t: 'flush', vol: volumeId, epoch: 1 }))
    t.is((e as { code?: string }).code, 'PEER_UNAVAILABLE')
    t.regex(e!.message, /--peer-tls/)
  } finally {
    await plain.close()
  }
  await waitFor('node-b to log the plain connection', async () => /plain \(non-TLS\) connection reached the TLS peer port/.test(b.logs()), 5000)
  t.pass()
})

test('a client certificate from another CA is refused, even with the cluster secret', async (t) => {
  const b = cluster.node('node-b')
  const impostor = new PeerLinks({
    nodeId: 'node-a', clusterId: cluster.clusterId, secret: cluster.secret, log,
    // Its own certificate is foreign; it trusts the cluster CA, so it accepts node-b.
    tls: material(foreign, 'node-a', certs.get('node-b')!.caFile),
  })
  try {
    const e = await t.throwsAsync(impostor.link('node-b', `127.0.0.1:${b.peerPort}`)
      .request({ t: 'write', vol: volumeId, epoch: 1_000_000, seq: 1, offset: 0, data: Buffer.alloc(4096, 0xee) }))
    t.is((e as { code?: string }).code, 'AUTH_FAILED')
    t.regex(e!.message, /does not accept this node's certificate|refused this node's certificate/)
  } finally {
    await impostor.close()
  }
  await waitFor('node-b to log the refused certificate', async () => /client certificate is not valid for this cluster/.test(b.logs()), 5000)
  t.pass()
})

test('a valid certificate without the cluster secret is refused: the secret handshake runs inside TLS', async (t) => {
  const b = cluster.node('node-b')
  const wrong = new PeerLinks({ nodeId: 'node-a', clusterId: cluster.clusterId, secret: randomBytes(32), log, tls: material(certs.get('node-a')!, 'node-a') })
  try {
    const e = await t.throwsAsync(wrong.link('node-b', `127.0.0.1:${b.peerPort}`).request({ t: 'flush', vol: volumeId, epoch: 1 }))
    t.is((e as { code?: string }).code, 'AUTH_FAILED')
    t.regex(e!.message, /cluster secret/)
  } finally {
    await wrong.close()
  }
})

test('a peer with a valid certificate and the cluster secret but no grant cannot drop or create a replica', async (t) => {
  const b = cluster.node('node-b')
  // node-a's own identity (it created the volume, and coordinates nothing now), and a node the CA signed that holds nothing.
  const stranger = issueCert(clusterCa, 'node-x')
  for (const [id, cert] of [['node-a', certs.get('node-a')!], ['node-x', stranger]] as const) {
    const links = new PeerLinks({ nodeId: id, clusterId: cluster.clusterId, secret: cluster.secret, log, tls: material(cert, id) })
    try {
      for (const req of [{ t: 'drop', vol: volumeId }, { t: 'create', vol: volumeId, size: 32 * 1024 * 1024 }] as const) {
        const e = await t.throwsAsync(links.link('node-b', `127.0.0.1:${b.peerPort}`).request(req))
        t.is((e as { code?: string }).code, 'NOT_COORDINATOR', `${id}: ${req.t}: ${e?.message ?? ''}`)
      }
    } finally {
      await links.close()
    }
  }
  t.regex(b.logs(), /"msg":"replica request refused"/)
})

test('a TLS node cannot link to a node without TLS, and says why', async (t) => {
  const a = cluster.node('node-a')
  const c = await cluster.start('node-c')
  await waitFor('node-c online', async () => (await new ApiClient(a.apiUrl).listNodes()).find((n) => n.nodeId === 'node-c')?.online, 20_000)
  const created = await pluginCall(a.pluginSocket, '/VolumeDriver.Create', { Name: 'mixed', Opts: { size: '16M', repl: '3' } })
  t.not(created.body.Err, '', 'a volume that needs node-c cannot be created over a link that fails')
  await waitFor('node-a to log the failed link', async () => /node-c at [^ ]+ does not speak TLS/.test(a.logs()), 5000)
  t.regex(c.logs(), /a TLS client reached this plain peer port/)
  await c.stop()
})

test('the refused connections changed no replica, and the cluster still serves', async (t) => {
  t.is(await replicaDigests(), before)
  const b = cluster.node('node-b')
  const list = await call(b, '/VolumeDriver.List', {})
  t.true((list.Volumes as Array<{ Name: string }>).some((v) => v.Name === 'secure'))
  const mp = (await call(b, '/VolumeDriver.Mount', { Name: 'secure', ID: 'again' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mp, 'payload.bin'))), sha(payload))
  await call(b, '/VolumeDriver.Unmount', { Name: 'secure', ID: 'again' })
})
