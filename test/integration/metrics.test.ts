/**
 * GET /metrics on a real daemon: Prometheus text that parses, the node's own families
 * (process metrics, volume and replica state), and per-volume I/O counters that move when
 * a container writes through the mounted volume.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { packageVersion } from '../../src/cli/version'
import { METRIC } from '../../src/metrics'
import { parseExposition, sampleValue, type Family } from '../cli/exposition'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { ADDON_MAX_REQUEST_BYTES } from '../../src/frontend/addon-fuse-devices'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon

test.before(async () => {
  daemon = await startDaemon({ dir })
})

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

async function scrape(): Promise<Map<string, Family>> {
  const res = await fetch(`${daemon.apiUrl}/metrics`)
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${await res.text()}`)
  if (!res.headers.get('content-type')?.startsWith('text/plain; version=0.0.4')) throw new Error(`content type ${res.headers.get('content-type')}`)
  return parseExposition(await res.text())
}

test('the exposition parses, with process metrics and this node\'s info', async (t) => {
  const f = await scrape()
  t.is(f.get('process_cpu_user_seconds_total')?.type, 'counter')
  t.is(f.get('nodejs_heap_size_used_bytes')?.type, 'gauge')
  t.is(sampleValue(f, METRIC.info, { node: 'node-a', version: packageVersion(), kvdb: 'embedded' }), 1)
  t.true(sampleValue(f, METRIC.capacity)! > 0)
  t.true(sampleValue(f, METRIC.capacityFree)! > 0)
  t.is(f.get(METRIC.fuseInFlight)?.type, 'gauge')
  for (const family of f.values()) t.not(family.type, '', `${family.name} has a TYPE line`)
})

test('volume and replica state follow the volumes', async (t) => {
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'mstate', Opts: { size: '32M' } })).body.Err, '')
  const f = await scrape()
  t.is(sampleValue(f, METRIC.replicaInSync, { volume: 'mstate', replica: 'node-a' }), 1)
  t.is(sampleValue(f, METRIC.replicaOnline, { volume: 'mstate', replica: 'node-a' }), 1)
  t.is(sampleValue(f, METRIC.volumeDegraded, { volume: 'mstate' }), 0)
  t.is(sampleValue(f, METRIC.volumesDegraded), 0)
  t.true(sampleValue(f, METRIC.volumes, { state: 'detached' })! >= 1)
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Remove', { Name: 'mstate' })).body.Err, '')
  t.is(sampleValue(await scrape(), METRIC.replicaInSync, { volume: 'mstate', replica: 'node-a' }), undefined, 'a removed volume leaves no series')
})

test('concurrent scrapes both answer', async (t) => {
  const [a, b] = await Promise.all([scrape(), scrape()])
  t.true(a.size > 10)
  t.is(a.size, b.size)
})

// The daemon builds its Frontend with meteredDevices(metrics) and serves that Metrics at /metrics.
test('I/O counters move after a write through the mounted volume', async (t) => {
  const volume = 'mio'
  const v = { volume }
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: volume, Opts: { size: '64M' } })).body.Err, '')
  const m = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: volume, ID: 'x1' })
  t.is(m.body.Err, '', m.raw)
  try {
    const before = await scrape()
    // Making and mounting the file system already read and wrote through FUSE.
    t.true((sampleValue(before, METRIC.writeBytes, v) ?? 0) > 0, `${METRIC.writeBytes}{volume="${volume}"} is absent or 0 after mkfs: the data path is not metered (daemon.ts wiring)`)
    t.true((sampleValue(before, METRIC.readBytes, v) ?? 0) > 0)

    const payload = randomBytes(4 * 1024 * 1024)
    const h = await fs.open(path.join(m.body.Mountpoint as string, 'data.bin'), 'w')
    await h.writeFile(payload)
    await h.sync()
    await h.close()

    const after = await scrape()
    const delta = (name: string, labels: Record<string, string> = v) => (sampleValue(after, name, labels) ?? 0) - (sampleValue(before, name, labels) ?? 0)
    t.true(delta(METRIC.writeBytes) >= payload.length, `write bytes grew by ${delta(METRIC.writeBytes)}`)
    t.true(delta(METRIC.writes) >= payload.length / ADDON_MAX_REQUEST_BYTES, `writes grew by ${delta(METRIC.writes)}`)
    t.true(delta(METRIC.flushes) >= 1, 'fsync reached the volume as a flush')
    t.is(delta(`${METRIC.writeSeconds}_count`), delta(METRIC.writes), 'one latency sample per write')
    t.true(delta(`${METRIC.writeSeconds}_sum`) > 0)
    t.is(sampleValue(after, `${METRIC.writeSeconds}_bucket`, { volume, le: '+Inf' }), sampleValue(after, `${METRIC.writeSeconds}_count`, v))
    t.is(sampleValue(after, METRIC.ioErrors, { volume, op: 'write' }), 0)
    t.is(sampleValue(after, METRIC.checksumFailures, v), 0)
    t.is(sampleValue(after, METRIC.fuseInFlight), 0, 'nothing in flight at rest')
  } finally {
    await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: volume, ID: 'x1' })
    await pluginCall(daemon.pluginSocket, '/VolumeDriver.Remove', { Name: volume })
  }
})
