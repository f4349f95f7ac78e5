/**
 * A flood of unauthenticated connections on a real daemon's peer port: the test process
 * keeps dozens of idle and garbage TCP connections open against node-b from two loopback
 * addresses of its own (127.0.0.9, 127.0.0.10), reopening each one the server closes. While
 * it runs, node-a links to node-b, creates a repl=2 volume and writes it, and node-b reads
 * the data back from its replica. The flood's connections are refused or closed within the
 * pre-handshake deadline, and node-b's log sums refusals up rather than logging each one.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { connect, type Socket } from 'node:net'
import path from 'node:path'
import { ApiClient } from '../../src/api/client'
import { HANDSHAKE_TIMEOUT_MS } from '../../src/replication/auth'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { startCluster, waitFor, type Cluster } from '../helpers/cluster'
import { pluginOk as call, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

let cluster: Cluster

test.before(async () => {
  cluster = await startCluster(['node-a', 'node-b'])
})

test.after.always(async () => {
  await cluster?.stop()
})

interface Flood { opened: number; closed: number; longestMs: number; stop(): void }

/** Keeps `perAddress` connections open from each address; half stay idle, half send garbage. */
function flood(port: number, addresses: string[], perAddress: number): Flood {
  const live = new Set<Socket>()
  let stopped = false
  const f: Flood = {
    opened: 0, closed: 0, longestMs: 0,
    stop() {
      stopped = true
      for (const s of live) s.destroy()
    },
  }
  const open = (localAddress: string, garbage: boolean) => {
    if (stopped) return
    const started = Date.now()
    const s = connect({ port, host: '127.0.0.1', localAddress })
    live.add(s)
    f.opened++
    s.on('connect', () => { if (garbage) s.write(randomBytes(512)) })
    s.on('error', () => {})
    s.on('data', () => {})
    s.on('close', () => {
      live.delete(s)
      f.closed++
      if (!stopped) f.longestMs = Math.max(f.longestMs, Date.now() - started)
      // Reopen after a short pause, as a flooder would.
      setTimeout(() => open(localAddress, garbage), 20)
    })
  }
  for (const a of addresses) for (let i = 0; i < perAddress; i++) open(a, i % 2 === 1)
  return f
}

test('a real peer links up and replicates while the peer port is flooded', async (t) => {
  const a = cluster.node('node-a')
  const b = cluster.node('node-b')
  const f = flood(b.peerPort, ['127.0.0.9', '127.0.0.10'], 40)
  t.teardown(() => f.stop())
  // Let the flood fill its share of node-b's slots first.
  await new Promise((resolve) => setTimeout(resolve, 1000))

  await call(a, '/VolumeDriver.Create', { Name: 'flooded', Opts: { size: '32M', repl: '2' } })
  const info = await new ApiClient(a.apiUrl).inspectVolume('flooded')
  t.deepEqual(info.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'])
  const payload = randomBytes(2 * 1024 * 1024)
  const mp = (await call(a, '/VolumeDriver.Mount', { Name: 'flooded', ID: 'w' })).Mountpoint as string
  await writeSynced(path.join(mp, 'payload.bin'), payload)
  await call(a, '/VolumeDriver.Unmount', { Name: 'flooded', ID: 'w' })

  const mpB = (await call(b, '/VolumeDriver.Mount', { Name: 'flooded', ID: 'r' })).Mountpoint as string
  t.is(sha(await fs.readFile(path.join(mpB, 'payload.bin'))), sha(payload))
  await call(b, '/VolumeDriver.Unmount', { Name: 'flooded', ID: 'r' })
  t.true((await new ApiClient(b.apiUrl).inspectVolume('flooded')).replicas.every((r) => r.inSync))

  // Keep the flood up past one deadline so idle connections meet it, then look at what it got.
  await new Promise((resolve) => setTimeout(resolve, HANDSHAKE_TIMEOUT_MS + 1500))
  f.stop()
  t.true(f.closed > 80, `the server closed ${f.closed} of ${f.opened} flood connections`)
  t.true(f.longestMs < HANDSHAKE_TIMEOUT_MS + 2000, `a flood connection lived ${f.longestMs} ms`)
  t.true(a.logs().split('\n').some((l) => l.includes('"msg":"peer link up"') && l.includes('node-b')), 'node-a linked to node-b')
  const logs = b.logs()
  const refusedLines = logs.split('\n').filter((l) => /"msg":"peer connection refused"/.test(l) && /127\.0\.0\.(9|10)/.test(l)).length
  t.true(refusedLines > 0, 'node-b logs the refusals')
  // A line per kind of refusal (limit, deadline, each TLS error code) and address, not per connection.
  t.true(refusedLines <= 24, `refusals are rate-limited in the log (${refusedLines} lines for ${f.closed} closes)`)
  // The refusals after the first of each interval come as one line with their count.
  await waitFor('node-b to sum up the refusals', async () => /refused \d+ more connections from 127\.0\.0\.(9|10) in the last 10s/.test(b.logs()), 15_000)
  t.pass()
})
