/**
 * pxd against a secured etcd. One etcd serves https only and asks every client for a
 * certificate its CA signed (--client-cert-auth); another has auth enabled, with a `pxd`
 * user whose role reaches only `pxd/<cluster-id>/`. On each a two-node cluster creates a
 * repl=2 volume, writes it on one node and reads it on the other. Then the wrong
 * credentials: a wrong password, no client certificate, a CA that did not sign etcd's
 * certificate. Each must stop pxd at start, non-zero, with a message that names the
 * problem, within a bounded time.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs, writeFileSync } from 'node:fs'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, type Cluster } from '../helpers/cluster'
import { freePort, makeTempDir, removeDir } from '../helpers/daemon'
import { enableEtcdAuth, type EtcdTls } from '../helpers/etcd'
import { PXD_BIN } from '../helpers/paths'
import { runCommand } from '../helpers/run'
import { issueCert, makeCa } from '../helpers/tls'
import { pluginOk as call, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

/** A wrong credential must be reported well within this (connect + one call, 5 s each). */
const FAIL_WITHIN_MS = 20_000

let certDir = ''
test.before(() => { certDir = makeTempDir('pxd-etcd-sec-') })
test.after.always(() => { if (certDir) removeDir(certDir) })

function etcdTls(): EtcdTls {
  const ca = makeCa(certDir, 'etcd-ca')
  const server = issueCert(ca, 'etcd', { san: ['IP:127.0.0.1', 'DNS:localhost'], eku: 'serverAuth' })
  const client = issueCert(ca, 'pxd-client', { eku: 'clientAuth' })
  return { certFile: server.certFile, keyFile: server.keyFile, caFile: ca.certFile, clientCertFile: client.certFile, clientKeyFile: client.keyFile, clientCertAuth: true }
}

async function roundTrip(t: import('ava').ExecutionContext, cluster: Cluster): Promise<void> {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const payload = randomBytes(2 * 1024 * 1024)
  await call(a, '/VolumeDriver.Create', { Name: 'v', Opts: { size: '32M', repl: '2' } })
  const mp = (await call(a, '/VolumeDriver.Mount', { Name: 'v', ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await call(a, '/VolumeDriver.Unmount', { Name: 'v', ID: 'w' })
  const mpB = (await call(b, '/VolumeDriver.Mount', { Name: 'v', ID: 'r' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mpB, 'payload.bin'))), sha(payload))
  await call(b, '/VolumeDriver.Unmount', { Name: 'v', ID: 'r' })
}

/** Start one pxd with these flags against `kvdb`; it must exit non-zero in bounded time. */
async function failedStart(cluster: Cluster, kvdbArgs: string[]) {
  const dir = makeTempDir('pxd-etcd-sec-node-')
  try {
    const started = Date.now()
    const r = await runCommand(PXD_BIN, [
      '--data-dir', path.join(dir, 'data'), '--run-dir', path.join(dir, 'run'),
      '--plugin-socket', path.join(dir, 'pxd.sock'), '--api-listen', `127.0.0.1:${await freePort()}`,
      '--node-id', 'node-x', '--cluster-id', cluster.clusterId, '--peer-listen', `127.0.0.1:${await freePort()}`,
      '--cluster-secret-file', cluster.secretFile, ...kvdbArgs,
    ], FAIL_WITHIN_MS + 10_000)
    return { ...r, ms: Date.now() - started }
  } finally {
    removeDir(dir)
  }
}

test.serial('etcd with client-certificate TLS: a cluster runs; no client certificate or a wrong CA fails at start', async (t) => {
  const tls = etcdTls()
  const cluster = await startCluster(['node-a', 'node-b'], {
    etcdTls: tls,
    etcdSetup: async () => ['--kvdb-ca', tls.caFile, '--kvdb-cert', tls.clientCertFile, '--kvdb-key', tls.clientKeyFile],
  })
  try {
    t.regex(cluster.node('node-a').logs(), /"kvdb":"https:\/\/127\.0\.0\.1:\d+"[^\n]*"msg":"metadata store connected"/)
    await roundTrip(t, cluster)

    const kvdb = `https://${cluster.etcd.endpoint}`
    const noCert = await failedStart(cluster, ['--kvdb', kvdb, '--kvdb-ca', tls.caFile])
    t.not(noCert.code, 0, noCert.out)
    t.true(noCert.ms < FAIL_WITHIN_MS, `took ${noCert.ms} ms`)
    t.regex(noCert.stderr, /pxd: metadata store https:\/\/127\.0\.0\.1:\d+ unavailable: .+etcd refused pxd's client certificate, or got none: check --kvdb-cert and --kvdb-key/, noCert.out)
    t.notRegex(noCert.stderr, /\n\s+at /, 'a message, not a stack trace')

    const other = makeCa(certDir, 'other-ca')
    const wrongCa = await failedStart(cluster, ['--kvdb', kvdb, '--kvdb-ca', other.certFile, '--kvdb-cert', tls.clientCertFile, '--kvdb-key', tls.clientKeyFile])
    t.not(wrongCa.code, 0, wrongCa.out)
    t.true(wrongCa.ms < FAIL_WITHIN_MS, `took ${wrongCa.ms} ms`)
    t.regex(wrongCa.stderr, /pxd: metadata store https:\/\/127\.0\.0\.1:\d+ unavailable: .+pxd could not verify etcd's certificate: check --kvdb-ca/, wrongCa.out)

    const certWithoutKey = await failedStart(cluster, ['--kvdb', kvdb, '--kvdb-ca', tls.caFile, '--kvdb-cert', tls.clientCertFile])
    t.not(certWithoutKey.code, 0)
    t.regex(certWithoutKey.stderr, /--kvdb-cert and --kvdb-key go together/)
  } finally {
    await cluster.stop()
  }
})

test.serial('etcd with auth, a role limited to pxd/<cluster-id>/: a cluster runs; a wrong password fails at start', async (t) => {
  const password = randomBytes(12).toString('hex')
  const passwordFile = path.join(certDir, 'kvdb-password')
  writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 })
  const cluster = await startCluster(['node-a', 'node-b'], {
    etcdSetup: async (etcd, clusterId) => {
      await enableEtcdAuth(etcd, 'pxd', password, `pxd/${clusterId}/`)
      return ['--kvdb-username', 'pxd', '--kvdb-password-file', passwordFile]
    },
  })
  try {
    await roundTrip(t, cluster)

    const wrongFile = path.join(certDir, 'wrong-password')
    writeFileSync(wrongFile, 'not-the-password\n', { mode: 0o600 })
    const kvdb = `etcd://${cluster.etcd.endpoint}`
    const wrong = await failedStart(cluster, ['--kvdb', kvdb, '--kvdb-username', 'pxd', '--kvdb-password-file', wrongFile])
    t.not(wrong.code, 0, wrong.out)
    t.true(wrong.ms < FAIL_WITHIN_MS, `took ${wrong.ms} ms`)
    t.regex(wrong.stderr, /pxd: metadata store etcd:\/\/127\.0\.0\.1:\d+ refused pxd: .*authentication failed/, wrong.out)
    t.notRegex(wrong.stderr, /\n\s+at /, 'a message, not a stack trace')

    const none = await failedStart(cluster, ['--kvdb', kvdb])
    t.not(none.code, 0, none.out)
    t.true(none.ms < FAIL_WITHIN_MS, `took ${none.ms} ms`)
    t.regex(none.stderr, /pxd: metadata store etcd:\/\/127\.0\.0\.1:\d+ requires authentication: give --kvdb-username and --kvdb-password-file/, none.out)

    // The pxd user reaches nothing outside its cluster's prefix.
    const otherCluster = await failedStart({ ...cluster, clusterId: 'another-cluster' } as Cluster, ['--kvdb', kvdb, '--kvdb-username', 'pxd', '--kvdb-password-file', passwordFile])
    t.not(otherCluster.code, 0, otherCluster.out)
    t.regex(otherCluster.stderr, /refused pxd: .*permission denied/, otherCluster.out)
  } finally {
    await cluster.stop()
  }
})
