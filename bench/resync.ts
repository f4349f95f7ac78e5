/**
 * `npm run bench -- --resync` (`npm run bench:resync`): two pxd nodes and etcd on loopback,
 * repl=2 volumes with a replica on each. 1. Per method (dirty-map, checksum-scan): node-b is
 * stopped while --resync-changed is written on node-a, the volume unmounted (checksum-scan:
 * node-a's dirty map of node-b deleted), node-b started, and node-a resyncs the unmounted
 * volume in the background (figures from its lastResync). 2. The raw disk under the data
 * dirs: fio seq write and read, 1 MiB, direct, 1 GiB. 3. 4 KiB write+fsync p99 while a
 * background resync runs (a mount takes it over), and once in sync. Markdown on stdout,
 * progress on stderr, bench/results/resync-<timestamp>.json. It asserts nothing: 0 when the
 * run completes, 1 when it could not, 2 on bad flags, 130 on a signal.
 */
import { existsSync, mkdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ApiClient } from '../src/api/client'
import { formatSize, parseSize } from '../src/util/size'
import type { ResyncRecord, VolumeInfo } from '../src/volumes/types'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../test/helpers/cluster'
import { leftoversUnder } from '../test/helpers/daemon'
import { MiB, pluginOk } from '../test/helpers/volume-io'
import { dropCaches, FioError, layOut, runWorkload, stopRunningFio, syncAll, WORKLOADS, type FioResult, type SyncLatency } from './fio'
import { UsageError } from './args'
import { cpuBusy, exitOnSignal, fileSystemOf, flagsOrExit, logLevels, machine, machineLine, RESULTS_DIR, saveLogs } from './host'
import { fmt } from './report'

const [A, B] = ['node-a', 'node-b'] as const
const MOUNT_ID = 'pxd-bench-resync'
const DISK_FILE = 1024 * MiB
const DISK_RUNTIME_S = 8
const LATENCY_FILE = 256 * MiB
const LATENCY_RUNTIME_S = 10
const HANG_MARGIN_S = 120
const GOAL = { compare: 0.5, copy: 0.3, latency: 3 }
const METHODS = ['dirty-map', 'checksum-scan'] as const
const progress = (line: string) => process.stderr.write(`[bench:resync] ${line}\n`)
const workload = (id: string) => WORKLOADS.find((w) => w.id === id)!

const USAGE = `usage: npm run bench -- --resync [flags]   (npm run bench:resync -- [flags])

Background resync speed (dirty-map, checksum-scan) against the raw disk, and 4 KiB write+fsync
p99 during a resync against once in sync; two pxd nodes and etcd on loopback.

  --resync-size SIZE      each volume                                      (default 4G)
  --resync-changed SIZE   written while node-b is away, timing runs        (default 1G)
  --latency-changed SIZE  written while node-b is away, latency phase      (default 2 x --resync-changed)
  --resync-rate SIZE      both nodes' --resync-rate in the timing runs     (default 10G)
  --latency-rate SIZE     both nodes' --resync-rate in the latency phase   (default: pxd's, 200M)
  -h, --help              this text
`

interface Options { volumeSize: number; changed: number; latencyChanged: number; timingRate: string; latencyRate: string | null }

const FLAGS: Record<string, (o: Partial<Options>, v: string) => void> = {
  '--resync-size': (o, v) => { o.volumeSize = parseSize(v) },
  '--resync-changed': (o, v) => { o.changed = parseSize(v) },
  '--latency-changed': (o, v) => { o.latencyChanged = parseSize(v) },
  '--resync-rate': (o, v) => { o.timingRate = v },
  '--latency-rate': (o, v) => { o.latencyRate = v },
}

function parseArgs(argv: string[]): Options | null {
  const o: Partial<Options> = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '-h' || arg === '--help') return null
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1
    const flag = eq > 0 ? arg.slice(0, eq) : arg
    const set = FLAGS[flag]
    if (!set) throw new UsageError(`unknown flag ${arg}`)
    const v = eq > 0 ? arg.slice(eq + 1) : argv[++i]
    if (v === undefined) throw new UsageError(`${flag} needs a value`)
    try { parseSize(v) } catch (err) { throw new UsageError(`${flag}: ${(err as Error).message}`) }
    set(o, v)
  }
  const volumeSize = o.volumeSize ?? parseSize('4G')
  const changed = o.changed ?? parseSize('1G')
  // What is written must leave room for ext4's own metadata and journal.
  const room = volumeSize - 512 * MiB
  const latencyChanged = o.latencyChanged ?? Math.max(changed, Math.min(2 * changed, room - LATENCY_FILE))
  if (changed < 16 * MiB || changed > room) throw new UsageError(`--resync-changed must be 16M to --resync-size minus 512M (${formatSize(room)})`)
  if (latencyChanged + LATENCY_FILE > room) throw new UsageError(`--latency-changed plus the 256 MiB latency file must fit in --resync-size minus 512M (${formatSize(room)})`)
  return { volumeSize, changed, latencyChanged, timingRate: o.timingRate ?? '10G', latencyRate: o.latencyRate ?? null }
}

type Write = { mbPerSecond: number; seconds: number }
/** seconds: lastResync updatedAt - startedAt; wallSeconds: from node-b's start until inspect showed it in sync. */
interface ResyncRun { method: string; volume: { name: string; id: string }; dirtyMapFound: boolean; write: Write; seconds: number; wallSeconds: number; copiedMBps: number; comparedMBps: number; lastResync: ResyncRecord }
interface LatencyRun { result: FioResult; latency: SyncLatency; start: number; end: number }

let opts: Options
let cluster: Cluster | undefined
let starting: Promise<Cluster> | undefined
let interrupted = () => false
let stoppedB = false
/** Both nodes' --resync-rate (null: pxd's default), read at every start of a node. */
let rate: string | null = null
const mounted = new Set<string>()
const created = new Set<string>()
let teardownRun: Promise<string[]> | undefined

const node = (id: string): ClusterNode => cluster!.node(id)
const inspect = (name: string): Promise<VolumeInfo> => new ApiClient(node(A).apiUrl).inspectVolume(name)
const allInSync = (v: VolumeInfo) => v.replicas.length === 2 && v.replicas.every((r) => r.inSync)
const seqTimeout = (bytes: number) => HANG_MARGIN_S + bytes / 1e6 // at 1 MB/s
const never = () => new Promise<number>(() => undefined)

/** waitFor, but a signal or a daemon that died (other than node-b while stopped) ends it at once. */
async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs: number, everyMs: number): Promise<T> {
  const r = await waitFor(what, async () => {
    const dead = cluster?.nodes.find((n) => (n.child.exitCode !== null || n.child.signalCode !== null) && !(n.nodeId === B && stoppedB))
    if (interrupted() || dead) return { bad: interrupted() ? 'interrupted' : `pxd ${dead!.nodeId} (pid ${dead!.pid}) exited; last log lines:\n${dead!.logs().split('\n').slice(-30).join('\n')}` }
    const v = await fn()
    return v === undefined || v === false ? undefined : { v }
  }, timeoutMs, everyMs)
  if ('bad' in r) throw new Error(r.bad)
  return r.v
}

const bothOnline = () => until('both nodes online with a capacity', async () => {
  const nodes = await new ApiClient(node(A).apiUrl).listNodes()
  return [A, B].every((id) => nodes.some((n) => n.nodeId === id && n.online && n.capacity))
}, 30_000, 200)

/** Poll every 100 ms until both replicas are in sync and node-a published the resync as done. */
const untilInSync = (name: string) => until(`${name} in sync`, async () => {
  const v = await inspect(name)
  return allInSync(v) && v.lastResync?.nodeId === B && v.lastResync.state === 'done' && v
}, (HANG_MARGIN_S + opts.volumeSize / 5e6) * 1000, 100)

async function mount(name: string): Promise<string> {
  const mp = (await pluginOk(node(A), '/VolumeDriver.Mount', { Name: name, ID: MOUNT_ID })).Mountpoint
  mounted.add(name)
  if (typeof mp !== 'string' || mp === '') throw new Error(`mount ${name} on ${A} returned no mountpoint`)
  return mp
}
const unmount = (name: string) => pluginOk(node(A), '/VolumeDriver.Unmount', { Name: name, ID: MOUNT_ID }).then(() => mounted.delete(name))
const startB = () => cluster!.start(B).then(() => { stoppedB = false })

/** A fresh volume mounted on node-a (`before` runs then), node-b stopped, `changed` bytes written, unmounted; node-b stays stopped. */
async function degradedVolume(name: string, changed: number, before?: (mp: string) => Promise<unknown>): Promise<{ id: string; write: Write }> {
  await pluginOk(node(A), '/VolumeDriver.Create', { Name: name, Opts: { size: `${opts.volumeSize}B`, repl: '2' } })
  created.add(name)
  const info = await inspect(name)
  if (info.replicas.map((r) => r.nodeId).sort().join() !== `${A},${B}`) throw new Error(`${name} has replicas on ${info.replicas.map((r) => r.nodeId).join(', ')}, not ${A} + ${B}`)
  const mp = await mount(name)
  await before?.(mp)
  progress(`${name} (${info.id}): stopping ${B}, then writing ${formatSize(changed)} on ${A}`)
  stoppedB = true
  await node(B).stop()
  const write = await layOut(path.join(mp, 'changed.fio'), changed, seqTimeout(changed))
  progress(`  ${write.mbPerSecond.toFixed(0)} MB/s while ${B} was away`)
  await until(`${B} out of ${name}'s in-sync set`, async () => (await inspect(name)).replicas.every((r) => r.inSync === (r.nodeId === A)), 30_000, 250)
  await unmount(name)
  return { id: info.id, write }
}

/** Once the healer has let the volume go, remove it (its replicas free their space). */
async function removeVolume(name: string): Promise<void> {
  await until(`${name} let go by its healer`, async () => (await inspect(name)).state === 'detached', 60_000, 250)
  await pluginOk(node(A), '/VolumeDriver.Remove', { Name: name })
  created.delete(name)
}

async function resyncRun(method: string): Promise<ResyncRun> {
  const name = `bench-resync-${method}`
  const { id, write } = await degradedVolume(name, opts.changed)
  const map = path.join(node(A).dataDir, 'dirty', `${id}.${B}.json`)
  const dirtyMapFound = existsSync(map)
  if (method === 'checksum-scan') rmSync(map, { force: true })
  progress(`starting ${B} (${A}'s dirty map of it ${!dirtyMapFound ? 'not found' : method === 'checksum-scan' ? 'deleted' : 'kept'}); ${A} resyncs ${name} in the background`)
  const t0 = Date.now()
  await startB()
  const r = (await untilInSync(name)).lastResync!
  const wallSeconds = (Date.now() - t0) / 1000
  const seconds = (Date.parse(r.updatedAt) - Date.parse(r.startedAt)) / 1000
  const run = { method, volume: { name, id }, dirtyMapFound, write, seconds, wallSeconds, copiedMBps: r.copiedBytes / 1e6 / seconds, comparedMBps: r.scannedBytes / 1e6 / seconds, lastResync: r }
  progress(`  ${r.method}: ${fmt(seconds)} s (${fmt(wallSeconds)} s from ${B}'s start), copied ${formatSize(r.copiedBytes)} (${fmt(run.copiedMBps)} MB/s), compared ${formatSize(r.scannedBytes)} (${fmt(run.comparedMBps)} MB/s)`)
  await removeVolume(name)
  return run
}

async function disk(): Promise<{ firstWrite: Write; seqWrite: FioResult; seqRead: FioResult }> {
  const file = path.join(node(A).dataDir, 'pxd-bench-disk.fio')
  progress(`raw disk: ${file}, 1 GiB, seq write then seq read, 1 MiB, direct, ${DISK_RUNTIME_S} s each`)
  const o = { file, fileSize: DISK_FILE, runtime: DISK_RUNTIME_S, ramp: 1, timeoutSeconds: DISK_RUNTIME_S + 1 + HANG_MARGIN_S }
  const firstWrite = await layOut(file, DISK_FILE, seqTimeout(DISK_FILE))
  await syncAll()
  const seqWrite = await runWorkload(workload('seqWrite'), o)
  await dropCaches()
  const seqRead = await runWorkload(workload('seqRead'), o)
  rmSync(file, { force: true })
  progress(`  seq write ${fmt(seqWrite.value)} MB/s, seq read ${fmt(seqRead.value)} MB/s (first write ${fmt(firstWrite.mbPerSecond)} MB/s)`)
  return { firstWrite, seqWrite, seqRead }
}

async function syncWrite(file: string): Promise<LatencyRun> {
  await syncAll()
  const start = Date.now()
  const result = await runWorkload(workload('syncWrite'), { file, fileSize: LATENCY_FILE, runtime: LATENCY_RUNTIME_S, ramp: 0, timeoutSeconds: LATENCY_RUNTIME_S + HANG_MARGIN_S })
  return { result, latency: result.latency!, start, end: Date.now() }
}

async function latencyPhase() {
  progress(`restarting ${B} and ${A} with ${opts.latencyRate === null ? "pxd's default --resync-rate (200M)" : `--resync-rate ${opts.latencyRate}`}`)
  await node(B).stop()
  await node(A).stop()
  rate = opts.latencyRate
  await cluster!.start(A)
  await cluster!.start(B)
  await bothOnline()
  const name = 'bench-resync-latency'
  const { id } = await degradedVolume(name, opts.latencyChanged, (mp) => layOut(path.join(mp, 'latency.fio'), LATENCY_FILE, seqTimeout(LATENCY_FILE)))
  await startB()
  const seen = await until('the background resync to start', async () => {
    const v = await inspect(name)
    return v.lastResync?.nodeId === B && v.lastResync.state === 'running' ? 'running' : allInSync(v) && 'already done'
  }, 60_000, 100)
  progress(`resync ${seen}; mounting ${name} on ${A} (the mount takes the resync over), 4 KiB write+fsync for ${LATENCY_RUNTIME_S} s`)
  const file = path.join(await mount(name), 'latency.fio')
  const during = await syncWrite(file)
  const lastResync = (await untilInSync(name)).lastResync!
  const resyncShare = Math.max(0, Math.min(1, (Date.parse(lastResync.updatedAt) - during.start) / (during.end - during.start)))
  progress(`  p99 ${fmt(during.latency.p99 / 1000)} ms; the resync ran for ${(resyncShare * 100).toFixed(0)}% of it (${lastResync.method}, ${formatSize(lastResync.copiedBytes)} copied)`)
  const without = await syncWrite(file)
  progress(`  in sync: p99 ${fmt(without.latency.p99 / 1000)} ms`)
  await unmount(name)
  await removeVolume(name)
  return { volume: { name, id }, rate: opts.latencyRate ?? '200M (default)', changed: opts.latencyChanged, resyncSeen: seen, resyncShare, lastResync, during, without, multiple: during.latency.p99 / without.latency.p99 }
}

type Disk = Awaited<ReturnType<typeof disk>>
type Latency = Awaited<ReturnType<typeof latencyPhase>>

function render(head: string, d: Disk | undefined, runs: ResyncRun[], lat: Latency | undefined, warnings: string[]): string {
  const goal = (ratio: number, min: number) => `>= ${min.toFixed(2)} ${ratio >= min ? 'met' : '**missed**'}`
  const out = [head, '', `2 pxd nodes + etcd on loopback, both replicas on this machine's disk; ${formatSize(opts.volumeSize)} repl=2 volumes (ext4), a replica on each node. ` +
    `Per method: node-b stopped, ${formatSize(opts.changed)} written on node-a (fio, 1 MiB, direct, end_fsync), the volume unmounted (checksum-scan: node-a's dirty map of node-b deleted), node-b started; ` +
    `node-a resyncs the unmounted volume in the background, both nodes at --resync-rate ${opts.timingRate}. Seconds: lastResync updatedAt - startedAt (in brackets: from node-b's start until inspect showed it in sync); MB/s = 10^6 bytes/s.`, '']
  if (d && runs.length > 0) {
    out.push('| resync | seconds | copied | MB/s copied | vs disk seq write | target | compared | MB/s compared | vs disk seq read | target |', '| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |')
    for (const r of runs) {
      const [copy, compare] = [r.copiedMBps / d.seqWrite.value, r.comparedMBps / d.seqRead.value]
      out.push(`| ${r.method} | ${fmt(r.seconds)} (${fmt(r.wallSeconds)}) | ${formatSize(r.lastResync.copiedBytes)} | ${fmt(r.copiedMBps)} | ${copy.toFixed(2)} | ${goal(copy, GOAL.copy)} | ${formatSize(r.lastResync.scannedBytes)} | ${fmt(r.comparedMBps)} | ${compare.toFixed(2)} | ${goal(compare, GOAL.compare)} |`)
      if (r.lastResync.method !== r.method) out.push(`| **warning** | the ${r.method} run was resynced by ${r.lastResync.method}: these are not ${r.method} figures | | | | | | | | |`)
    }
    out.push('')
  }
  if (d) {
    out.push('| raw disk under the data dirs (fio, 1 GiB file, 1 MiB, direct) | MB/s |', '| --- | ---: |', `| seq write (${DISK_RUNTIME_S} s over the laid-out file, end_fsync) | ${fmt(d.seqWrite.value)} |`,
      `| seq read (${DISK_RUNTIME_S} s, after drop_caches) | ${fmt(d.seqRead.value)} |`, `| first write of the file (layout, no target) | ${fmt(d.firstWrite.mbPerSecond)} |`, '')
  }
  if (lat) {
    const row = (label: string, pick: (l: SyncLatency) => number, target = '') => `| ${label} | ${fmt(pick(lat.during.latency) / 1000)} | ${fmt(pick(lat.without.latency) / 1000)} | ${(pick(lat.during.latency) / pick(lat.without.latency)).toFixed(2)}x | ${target} |`
    out.push(`Write latency: both nodes restarted at --resync-rate ${lat.rate}; node-b missed ${formatSize(lat.changed)} of a fresh volume; while its background resync ran (${lat.lastResync.method}, ${formatSize(lat.lastResync.copiedBytes)} copied) ` +
      `the volume was mounted on node-a (the mount takes the resync over) and fio ran ${LATENCY_RUNTIME_S} s of 4 KiB randwrite, psync, iodepth 1, direct, fsync=1 on a ${formatSize(LATENCY_FILE)} file; then again once in sync. ` +
      `The resync ran for ${(lat.resyncShare * 100).toFixed(0)}% of the first run. p99 = write clat p99 + fsync lat p99, as in the main bench.`, '',
      '| 4 KiB write+fsync | during resync, ms | in sync, ms | during / in sync | target |', '| --- | ---: | ---: | ---: | --- |',
      row('p99', (l) => l.p99, `<= ${GOAL.latency}x ${lat.multiple <= GOAL.latency ? 'met' : '**missed**'}`), row('p50', (l) => l.p50), row('write clat p99', (l) => l.write.p99), row('fsync lat p99', (l) => l.fsync.p99), '')
    if (lat.resyncShare < 1) {
      const when = lat.resyncSeen === 'already done' ? 'was done before the volume was mounted' : `finished ${((lat.resyncShare * (lat.during.end - lat.during.start)) / 1000).toFixed(1)} s into the ${LATENCY_RUNTIME_S} s fio run`
      out.push(`> **note:** the resync ${when}: the "during resync" figure is ${lat.resyncShare === 0 ? 'entirely' : 'partly'} without one; a bigger --latency-changed (or a lower --latency-rate) makes it last longer.`, '')
    }
  }
  for (const w of warnings) out.push(`> **warning:** ${w}`, '')
  return out.join('\n')
}

/** Unmount and remove what is left, stop the daemons and etcd. Never throws; once only. */
function teardown(): Promise<string[]> {
  teardownRun ??= (async () => {
    const problems: string[] = []
    if (!cluster && starting) cluster = await starting.catch(() => undefined)
    const a = cluster?.nodes.find((n) => n.nodeId === A && n.child.exitCode === null && n.child.signalCode === null)
    // A daemon that got the same Ctrl-C is unmounting by itself: its socket is gone then.
    const call = (endpoint: string, body: unknown) => pluginOk(a!, endpoint, body).then(() => undefined, (err: Error) => {
      if (!/ENOENT|ECONNREFUSED|ECONNRESET|socket hang up/.test(err.message)) problems.push(`${endpoint}: ${err.message}`)
    })
    for (const name of a ? mounted : []) await call('/VolumeDriver.Unmount', { Name: name, ID: MOUNT_ID })
    for (const name of a ? created : []) await call('/VolumeDriver.Remove', { Name: name })
    if (cluster) {
      await cluster.stop().catch((err: Error) => problems.push(`stop cluster: ${err.message}`))
      if (existsSync(cluster.dir)) problems.push(`${cluster.dir} is left behind: ${leftoversUnder(cluster.dir).join(', ')}`)
    }
    return problems
  })()
  return teardownRun
}

async function main(): Promise<number> {
  const flags = flagsOrExit(parseArgs, USAGE)
  if (typeof flags === 'number') return flags
  opts = flags
  interrupted = exitOnSignal(progress, 'stopping fio, unmounting, stopping the cluster', teardown)
  const startedAt = new Date()
  const stamp = startedAt.toISOString().replace(/:/g, '-')
  const warnings: string[] = []
  const m = machine(startedAt)
  m.busyBefore = await cpuBusy(2000)
  if (m.busyBefore > 0.25) warnings.push(`the machine was ${Math.round(m.busyBefore * 100)}% busy in the 2 s before the run: other work skews the figures`)
  if (process.getuid?.() !== 0 || m.fio === 'not installed') return (progress('cannot run: it needs root (FUSE, loop devices, mounts, drop_caches) and fio'), 1)
  const results = {
    schema: 1, startedAt: startedAt.toISOString(), finishedAt: '', completed: false, error: undefined as string | undefined, machine: m, options: opts, goals: GOAL,
    disk: undefined as Disk | undefined, runs: [] as ResyncRun[], latency: undefined as Latency | undefined, daemonLogs: {} as Record<string, ReturnType<typeof logLevels>>, warnings, logs: [] as string[],
  }
  try {
    const free = statfsSync(os.tmpdir()).bavail * statfsSync(os.tmpdir()).bsize
    const need = DISK_FILE + 2 * (Math.max(opts.changed, opts.latencyChanged + LATENCY_FILE) + 512 * MiB)
    if (free < need) throw new Error(`${os.tmpdir()} has ${formatSize(free)} free; this run needs about ${formatSize(need)}`)
    rate = opts.timingRate
    progress(`starting etcd and pxd ${A}, ${B} on loopback (--resync-rate ${rate})`)
    starting = startCluster([A, B], { extraArgs: () => (rate === null ? [] : ['--resync-rate', rate]) })
    cluster = await starting
    await bothOnline()
    m.dataFs = fileSystemOf(node(A).dataDir)
    results.disk = await disk()
    for (const method of METHODS) results.runs.push(await resyncRun(method))
    results.latency = await latencyPhase()
    for (const r of [...results.runs, { method: 'latency phase', lastResync: results.latency.lastResync }]) {
      if (r.method !== 'latency phase' && r.lastResync.method !== r.method) warnings.push(`the ${r.method} run was resynced by ${r.lastResync.method}`)
      if ((r.lastResync.attempt ?? 1) > 1) warnings.push(`the ${r.method} resync took ${r.lastResync.attempt} attempts (${formatSize(r.lastResync.copiedBefore ?? 0)} copied before the last one)`)
    }
    results.completed = true
  } catch (err) {
    if (interrupted()) return never()
    results.error = err instanceof Error ? err.message : String(err)
    progress(`FAILED: ${results.error}`)
    warnings.push(`the run failed: ${results.error.split('\n')[0]!}`)
    results.logs = saveLogs(cluster, `resync-${stamp}`, err instanceof FioError ? err.output : undefined)
  }
  for (const n of cluster?.nodes ?? []) {
    const counts = (results.daemonLogs[n.nodeId] = logLevels(n.logs()))
    if (counts.errors > 0) warnings.push(`pxd ${n.nodeId} logged ${counts.errors} error line(s) (first in the JSON's daemonLogs)`)
  }
  for (const p of await teardown()) progress(`cleanup: ${p}`)
  if (interrupted()) return never()
  results.finishedAt = new Date().toISOString()
  m.loadAverage.end = os.loadavg()
  mkdirSync(RESULTS_DIR, { recursive: true })
  const file = path.join(RESULTS_DIR, `resync-${stamp}.json`)
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  progress(`wrote ${path.relative(process.cwd(), file) || file}`)
  process.stdout.write('\n' + render(machineLine(m), results.disk, results.runs, results.latency, warnings) + '\n')
  return results.completed ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    progress(`FAILED: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    for (const p of await teardown()) progress(`cleanup: ${p}`)
    process.exit(1)
  },
)
