/**
 * What operators scrape from /metrics: the Metrics class and its exposition, without a
 * daemon. (It sits with the CLI tests because both are the operator-facing output and the
 * unit test globs run this folder.)
 */
import test from 'ava'
import os from 'node:os'
import { register as globalRegistry } from 'prom-client'
import { METRIC, MeteredDevice, Metrics, LATENCY_BUCKETS, nodeReadiness, peerStates, readinessOf, type VolumeState } from '../../src/metrics'
import type { NodeInfo } from '../../src/cluster/membership'
import type { Kvdb } from '../../src/kvdb/kvdb'
import { parseExposition, sampleValue } from './exposition'

const scrape = async (m: Metrics) => parseExposition(await m.text())

const volume = (name: string, replicas: Array<[string, boolean, boolean]>, extra: Partial<VolumeState> = {}): VolumeState => ({
  name, state: 'detached', degraded: replicas.some(([, inSync]) => !inSync),
  replicas: replicas.map(([nodeId, inSync, online]) => ({ nodeId, inSync, online })), ...extra,
})

test('a registry of its own, with process metrics, valid text and every family typed and described', async (t) => {
  const m = new Metrics()
  const text = await m.text()
  t.true(m.contentType.startsWith('text/plain; version=0.0.4'))
  const families = parseExposition(text)
  t.true(families.has('process_cpu_user_seconds_total'))
  t.true(families.has('nodejs_eventloop_lag_seconds'))
  for (const name of [METRIC.readBytes, METRIC.writeSeconds, METRIC.fuseInFlight, METRIC.replicaInSync, METRIC.peerUp, METRIC.capacity]) {
    const f = families.get(name)
    t.truthy(f, name)
    t.not(f!.help, '', name)
  }
  t.is(families.get(METRIC.readBytes)!.type, 'counter')
  t.is(families.get(METRIC.writeSeconds)!.type, 'histogram')
  t.is(families.get(METRIC.fuseInFlight)!.type, 'gauge')
  t.false((await globalRegistry.metrics()).includes('pxd_'), 'nothing lands in prom-client\'s global registry')
})

test('I/O counters and histograms per volume', async (t) => {
  const m = new Metrics({ defaultMetrics: false })
  const io = m.volume('vol1')
  t.is(m.volume('vol1'), io, 'the handle is cached')
  io.write(131072, 0.0004)
  io.write(4096, 0.003)
  m.recordRead('vol1', 65536, 0.00002)
  m.recordFlush('vol1', 20)
  m.recordIoError('vol1', 'write')
  m.recordChecksumFailure('vol1')
  m.recordRepair('vol1')
  m.recordWrite('other', 1, 0.1)

  const f = await scrape(m)
  const v = { volume: 'vol1' }
  t.is(sampleValue(f, METRIC.writeBytes, v), 135168)
  t.is(sampleValue(f, METRIC.writes, v), 2)
  t.is(sampleValue(f, METRIC.readBytes, v), 65536)
  t.is(sampleValue(f, METRIC.reads, v), 1)
  t.is(sampleValue(f, METRIC.flushes, v), 1)
  t.is(sampleValue(f, METRIC.ioErrors, { volume: 'vol1', op: 'write' }), 1)
  t.is(sampleValue(f, METRIC.ioErrors, { volume: 'vol1', op: 'read' }), 0)
  t.is(sampleValue(f, METRIC.checksumFailures, v), 1)
  t.is(sampleValue(f, METRIC.repairs, v), 1)
  t.is(sampleValue(f, METRIC.writeBytes, { volume: 'other' }), 1)

  // Buckets are cumulative; +Inf is the count; sum adds up.
  const bucket = (op: string, le: string) => sampleValue(f, `pxd_volume_${op}_duration_seconds_bucket`, { volume: 'vol1', le })
  t.is(bucket('write', '0.00025'), 0)
  t.is(bucket('write', '0.0005'), 1)
  t.is(bucket('write', '0.0025'), 1)
  t.is(bucket('write', '0.005'), 2)
  t.is(bucket('write', '10'), 2)
  t.is(bucket('write', '+Inf'), 2)
  t.is(sampleValue(f, `${METRIC.writeSeconds}_count`, v), 2)
  t.true(Math.abs(sampleValue(f, `${METRIC.writeSeconds}_sum`, v)! - 0.0034) < 1e-12)
  t.is(bucket('read', String(LATENCY_BUCKETS[0])), 1)
  t.is(bucket('flush', '10'), 0, 'a flush of 20 s is above the last bound')
  t.is(bucket('flush', '+Inf'), 1)
  const buckets = f.get(METRIC.readSeconds)!.samples.filter((s) => s.name.endsWith('_bucket') && s.labels.volume === 'vol1')
  t.is(buckets.length, LATENCY_BUCKETS.length + 1)
})

test('state gauges come from providers, each asked once per scrape', async (t) => {
  let volumeCalls = 0
  let peerCalls = 0
  const m = new Metrics({
    defaultMetrics: false,
    providers: {
      volumes: async () => {
        volumeCalls++
        return [
          volume('good', [['a', true, true], ['b', true, true]], { state: 'attached', replicas: [{ nodeId: 'a', inSync: true, online: true, allocatedBytes: 8192 }, { nodeId: 'b', inSync: true, online: true, allocatedBytes: null }] }),
          volume('bad', [['a', true, true], ['c', false, false]]),
        ]
      },
      peers: async () => {
        peerCalls++
        return [{ peer: 'b', online: true, link: 'ready', rttMs: 0.5 }, { peer: 'c', online: false, link: 'none' }]
      },
      capacity: async () => ({ total: 1000, free: 250 }),
    },
  })
  const f = await scrape(m)
  t.is(volumeCalls, 1)
  t.is(peerCalls, 1)
  t.is(sampleValue(f, METRIC.replicaInSync, { volume: 'bad', replica: 'c' }), 0)
  t.is(sampleValue(f, METRIC.replicaInSync, { volume: 'bad', replica: 'a' }), 1)
  t.is(sampleValue(f, METRIC.replicaOnline, { volume: 'bad', replica: 'c' }), 0)
  t.is(sampleValue(f, METRIC.replicaOnline, { volume: 'good', replica: 'b' }), 1)
  t.is(sampleValue(f, METRIC.replicaAllocated, { volume: 'good', replica: 'a' }), 8192, 'the host bytes a replica\'s node reported')
  t.is(sampleValue(f, METRIC.replicaAllocated, { volume: 'good', replica: 'b' }), undefined, 'none where the node reported nothing')
  t.is(sampleValue(f, METRIC.volumeDegraded, { volume: 'bad' }), 1)
  t.is(sampleValue(f, METRIC.volumeDegraded, { volume: 'good' }), 0)
  t.is(sampleValue(f, METRIC.volumesDegraded), 1)
  t.is(sampleValue(f, METRIC.volumes, { state: 'attached' }), 1)
  t.is(sampleValue(f, METRIC.volumes, { state: 'detached' }), 1)
  t.is(sampleValue(f, METRIC.peerUp, { peer: 'b' }), 1)
  t.is(sampleValue(f, METRIC.peerUp, { peer: 'c' }), 0)
  t.is(sampleValue(f, METRIC.peerLinkState, { peer: 'b', state: 'ready' }), 1)
  t.is(sampleValue(f, METRIC.peerLinkState, { peer: 'b', state: 'down' }), 0)
  t.is(sampleValue(f, METRIC.peerLinkState, { peer: 'c', state: 'none' }), 1)
  t.is(sampleValue(f, METRIC.peerRtt, { peer: 'b' }), 0.0005)
  t.is(sampleValue(f, METRIC.peerRtt, { peer: 'c' }), undefined, 'no round trip measured, no sample')
  t.is(sampleValue(f, METRIC.capacity), 1000)
  t.is(sampleValue(f, METRIC.capacityFree), 250)
  await scrape(m)
  t.is(volumeCalls, 2, 'the next scrape asks again')
})

test('series of volumes that are gone vanish from the state gauges', async (t) => {
  let vols = [volume('a', [['n1', true, true]]), volume('b', [['n1', true, true]])]
  const m = new Metrics({ defaultMetrics: false, providers: { volumes: async () => vols } })
  t.is(sampleValue(await scrape(m), METRIC.volumeDegraded, { volume: 'b' }), 0)
  vols = [volume('a', [['n1', true, true]])]
  t.is(sampleValue(await scrape(m), METRIC.volumeDegraded, { volume: 'b' }), undefined)
})

test('a failing provider empties its gauges, counts an error, and the scrape still answers', async (t) => {
  const warnings: unknown[] = []
  const log = { warn: (o: unknown) => warnings.push(o) } as unknown as import('pino').Logger
  const m = new Metrics({
    defaultMetrics: false,
    log,
    providers: { volumes: async () => { throw new Error('etcd is away') }, capacity: async () => ({ total: 10, free: 5 }) },
  })
  const f = await scrape(m)
  t.is(sampleValue(f, METRIC.volumesDegraded), undefined)
  t.is(sampleValue(f, METRIC.collectErrors, { source: 'volumes' }), 1)
  t.is(sampleValue(f, METRIC.capacity), 10)
  t.is(warnings.length, 1)
  const g = await scrape(m)
  t.is(sampleValue(g, METRIC.collectErrors, { source: 'volumes' }), 2)
})

test('a synchronous throw in a provider is a failed collect, not a stuck one', async (t) => {
  let fail = true
  const m = new Metrics({ defaultMetrics: false, providers: { capacity: () => { if (fail) throw new Error('boom'); return Promise.resolve({ total: 7, free: 1 }) } } })
  t.is(sampleValue(await scrape(m), METRIC.capacity), undefined)
  fail = false
  t.is(sampleValue(await scrape(m), METRIC.capacity), 7)
})

test('I/O numbers of a deleted volume are dropped, unless it is attached here', async (t) => {
  let vols = [volume('keep', [['n', true, true]]), volume('gone', [['n', true, true]]), volume('busy', [['n', true, true]])]
  const m = new Metrics({ defaultMetrics: false, providers: { volumes: async () => vols } })
  m.recordWrite('keep', 1, 0.001)
  m.recordWrite('gone', 1, 0.001)
  m.volume('busy').users++
  m.recordWrite('busy', 1, 0.001)
  vols = [volume('keep', [['n', true, true]])]
  await scrape(m)
  const f = await scrape(m)
  t.is(sampleValue(f, METRIC.writeBytes, { volume: 'keep' }), 1)
  t.is(sampleValue(f, METRIC.writeBytes, { volume: 'gone' }), undefined)
  t.is(sampleValue(f, METRIC.writeBytes, { volume: 'busy' }), 1)
})

test('setInfo labels the node', async (t) => {
  const m = new Metrics({ defaultMetrics: false })
  m.setInfo({ node: 'node-a', version: '1.2.3', kvdb: 'embedded' })
  t.is(sampleValue(await scrape(m), METRIC.info, { node: 'node-a', version: '1.2.3', kvdb: 'embedded' }), 1)
})

test('MeteredDevice times each request, counts errors and the FUSE requests in flight', async (t) => {
  const m = new Metrics({ defaultMetrics: false })
  const io = m.volume('v')
  let release: () => void = () => undefined
  const inner = {
    size: 1 << 20,
    read: async (_offset: number, into: Uint8Array) => { into.fill(7) },
    write: (_offset: number, _data: Uint8Array) => new Promise<void>((resolve) => { release = resolve }),
    flush: async () => { throw Object.assign(new Error('disk gone'), { code: 'IO_ERROR' }) },
  }
  const dev = new MeteredDevice(inner, io, m)
  t.is(dev.size, 1 << 20)

  const buf = new Uint8Array(4096)
  await dev.read(0, buf)
  t.is(buf[0], 7)
  t.is(io.readBytes, 4096)
  t.is(io.readLatency.count, 1)

  const pending = dev.write(0, new Uint8Array(8192))
  t.is(m.fuseRequestsInFlight, 1)
  t.is(sampleValue(await scrape(m), METRIC.fuseInFlight), 1)
  release()
  await pending
  t.is(m.fuseRequestsInFlight, 0)
  t.is(io.writeBytes, 8192)

  await t.throwsAsync(dev.flush(), { message: 'disk gone' })
  t.is(io.flushErrors, 1)
  t.is(io.flushLatency.count, 0)
  t.is(m.fuseRequestsInFlight, 0)

  const throwing = new MeteredDevice({ ...inner, read: () => { throw new Error('sync') } }, io, m)
  await t.throwsAsync(throwing.read(0, buf), { message: 'sync' })
  t.is(io.readErrors, 1)
  t.is(m.fuseRequestsInFlight, 0)
})

test('peerStates: every other node, with its lease and this node\'s link', async (t) => {
  const node = (nodeId: string, online: boolean): NodeInfo => ({ nodeId, online, peerAddress: null, apiUrl: '', version: '1', joinedAt: '', capacity: null, allocated: null })
  const links = new Map([['b', { state: 'ready' as const, rttMs: 1.5 }], ['c', { state: 'down' as const, rttMs: undefined }]])
  const provider = peerStates({ nodeId: 'a', nodes: async () => [node('a', true), node('b', true), node('c', false), node('d', true)], link: (p) => links.get(p) })
  t.deepEqual(await provider(), [
    { peer: 'b', online: true, link: 'ready', rttMs: 1.5 },
    { peer: 'c', online: false, link: 'down', rttMs: undefined },
    { peer: 'd', online: true, link: 'none', rttMs: undefined },
  ])
})

test('readinessOf: every check reported, failures named, hung checks time out', async (t) => {
  const ready = readinessOf({ a: async () => undefined, b: async () => 'anything' })
  t.deepEqual(await ready(), { ready: true, notReady: [], checks: { a: { ok: true }, b: { ok: true } } })

  const started = Date.now()
  const notReady = readinessOf({
    store: async () => undefined,
    kvdb: () => new Promise(() => undefined),
    fuse: async () => { throw new Error('not mounted') },
  }, 100)
  const report = await notReady()
  t.true(Date.now() - started < 2000)
  t.false(report.ready)
  t.deepEqual(report.notReady, ['kvdb', 'fuse'])
  t.deepEqual(report.checks.store, { ok: true })
  t.is(report.checks.fuse!.error, 'not mounted')
  t.regex(report.checks.kvdb!.error!, /no answer within 100 ms/)

  const sync = readinessOf({ x: () => { throw new Error('sync throw') } })
  t.deepEqual((await sync()).checks.x, { ok: false, error: 'sync throw' })
})

test('nodeReadinessChecks: a data dir that is not there, a store that fails, a dir that is not a FUSE mount', async (t) => {
  const kvdb = { get: async () => { throw Object.assign(new Error('etcd unreachable'), { code: 'KVDB_UNAVAILABLE' }) } } as unknown as Kvdb
  const report = await nodeReadiness({ nodeId: 'n', kvdb, dataDir: '/nonexistent/pxd-data', fuseMountpoint: '/' })()
  t.false(report.ready)
  t.deepEqual(report.notReady, ['store', 'kvdb', 'fuse'])
  t.regex(report.checks.store!.error!, /data dir \/nonexistent\/pxd-data is not writable/)
  t.is(report.checks.kvdb!.error, 'etcd unreachable')
  t.regex(report.checks.fuse!.error!, /FUSE device directory \/ is not mounted/)

  const ok = { get: async () => undefined } as unknown as Kvdb
  const partly = await nodeReadiness({ nodeId: 'n', kvdb: ok, dataDir: os.tmpdir(), fuseMountpoint: '/nonexistent/dev' })()
  t.deepEqual(partly.notReady, ['fuse'])
  t.deepEqual(partly.checks.store, { ok: true })
  t.deepEqual(partly.checks.kvdb, { ok: true })
})
