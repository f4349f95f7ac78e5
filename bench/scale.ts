/**
 * `npm run bench -- --scale` (`node dist/bench/scale.js`): one pxd node with many mounted
 * volumes. etcd and one daemon on loopback; --volumes repl=1 volumes created and mounted
 * one after another through the plugin socket (each first mount makes the ext4). Figures:
 * the time of each mount; the daemon's resident memory (VmRSS of pxd and its children,
 * bench/proc.ts) with no volume and with all of them mounted and idle (once the kernel's
 * background inode table init of the new ext4s is done), so MiB per idle
 * mounted volume (target <= 8); aggregate 1 MiB seq write MB/s with one fio job per
 * volume on 1, 4 and 16 volumes at once against as many jobs on files in the data dir,
 * interleaved per round (target >= 0.7 of the host at 16), with pxd's CPU per GB.
 * Markdown on stdout, progress on stderr, bench/results/scale-<timestamp>.json. It asserts
 * nothing: 0 when the run completes, 1 when it could not, 2 on bad flags, 130 on a signal;
 * the files, mounts, volumes, daemon and etcd go on every path.
 */
import { existsSync, mkdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ApiClient } from '../src/api/client'
import { formatSize } from '../src/util/size'
import { startCluster, waitFor, type Cluster } from '../test/helpers/cluster'
import { leftoversUnder } from '../test/helpers/daemon'
import { pluginOk } from '../test/helpers/volume-io'
import { cpuWindow } from './cpu'
import { FioError, runFio, stopRunningFio, syncAll, WORKLOADS } from './fio'
import { cpuBusy, exitOnSignal, fileSystemOf, flagsOrExit, logLevels, machine, machineLine, RESULTS_DIR, saveLogs } from './host'
import { pidsNamed, treeRss } from './proc'
import { parseScaleArgs, SCALE_USAGE, type ScaleOptions } from './scale-args'
import { renderScale, type MemorySample, type ScaleResults, type WriteRun } from './scale-report'

const MOUNT_ID = 'pxd-bench-scale'
const NODE = 'node-a'
const HANG_MARGIN_S = 180
/** Longest wait for the new file systems' background inode table init before going on. */
const LAZY_INIT_TIMEOUT_S = 300
const progress = (line: string) => process.stderr.write(`[bench:scale] ${line}\n`)
const SEQ_WRITE = WORKLOADS.find((w) => w.id === 'seqWrite')!

let cluster: Cluster | undefined
const created: string[] = []
const mounted: string[] = []
const hostFiles: string[] = []
let interrupted = () => false
let teardownRun: Promise<string[]> | undefined

function teardown(): Promise<string[]> {
  teardownRun ??= (async () => {
    const problems: string[] = []
    for (const f of hostFiles) rmSync(f, { force: true })
    const a = cluster?.nodes[0]
    // A daemon that got the same Ctrl-C unmounts everything itself; its socket is gone then.
    const note = (what: string) => (err: Error) => {
      if (!/ENOENT|ECONNREFUSED|ECONNRESET|socket hang up/.test(err.message)) problems.push(`${what}: ${err.message}`)
    }
    if (a && a.child.exitCode === null && a.child.signalCode === null) {
      for (const name of mounted) await pluginOk(a, '/VolumeDriver.Unmount', { Name: name, ID: MOUNT_ID }).catch(note(`unmount ${name}`))
      for (const name of created) await pluginOk(a, '/VolumeDriver.Remove', { Name: name }).catch(note(`remove ${name}`))
    }
    if (cluster) {
      await cluster.stop().catch((err: Error) => problems.push(`stop cluster: ${err.message}`))
      if (existsSync(cluster.dir)) problems.push(`${cluster.dir} is left behind: ${leftoversUnder(cluster.dir).join(', ')}`)
    }
    return problems
  })()
  return teardownRun
}

/** RSS of the daemon and its children: `samples` reads 1 s apart, the median kept. */
async function memory(pid: number, samples: number): Promise<MemorySample> {
  const reads: Array<ReturnType<typeof treeRss>> = []
  for (let i = 0; i < samples; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, 1000))
    reads.push(treeRss([pid]))
  }
  const sorted = [...reads].sort((x, y) => x.bytes - y.bytes)
  const mid = sorted[Math.floor(sorted.length / 2)]!
  return { bytes: mid.bytes, samples: reads.map((r) => r.bytes), processes: mid.processes }
}

/** One fio process, one job per file (they run at once): 1 MiB writes, direct, as the main bench's seq write. */
function seqWriteArgs(files: string[], o: ScaleOptions, timed: boolean): string[] {
  return files.flatMap((file, i) => [
    ...(i > 0 ? [`--name=scale-${i}`] : []),
    `--filename=${file}`, `--size=${o.fileSize}`, '--direct=1', '--fallocate=none',
    ...(timed ? ['--time_based', `--runtime=${o.runtime}`, `--ramp_time=${o.ramp}`, ...SEQ_WRITE.args] : ['--rw=write', '--bs=1M', '--ioengine=psync', '--end_fsync=1']),
  ])
}

/** Aggregate MB/s (10^6 bytes) of all jobs, and each job's. */
async function seqWrite(files: string[], o: ScaleOptions, timed: boolean): Promise<{ mbPerSecond: number; perJob: number[]; seconds: number }> {
  const timeout = (timed ? o.runtime + o.ramp : 600) + HANG_MARGIN_S
  const json = await runFio('scale-0', seqWriteArgs(files, o, timed), timeout)
  if (json.jobs.length !== files.length) throw new Error(`fio reported ${json.jobs.length} jobs for ${files.length} files`)
  const failed = json.jobs.find((j) => j.error !== 0)
  if (failed) throw new Error(`fio job ${failed.jobname} failed with error ${failed.error}`)
  const perJob = json.jobs.map((j) => j.write.bw_bytes / 1e6)
  const seconds = json.jobs.reduce((s, j) => s + j.job_runtime, 0) / json.jobs.length / 1000
  return { mbPerSecond: perJob.reduce((s, v) => s + v, 0), perJob, seconds }
}

function checkDaemon(): void {
  const a = cluster?.nodes[0]
  if (a && (a.child.exitCode !== null || a.child.signalCode !== null)) {
    throw new Error(`pxd ${a.nodeId} (pid ${a.pid}) exited (${a.child.exitCode ?? a.child.signalCode}); last log lines:\n${a.logs().split('\n').slice(-30).join('\n')}`)
  }
  if (interrupted()) throw new Error('interrupted')
}

async function measure(o: ScaleOptions, r: ScaleResults): Promise<void> {
  progress(`starting etcd and pxd ${NODE} on loopback`)
  cluster = await startCluster([NODE])
  const a = cluster.nodes[0]!
  r.machine.dataFs = fileSystemOf(a.dataDir)
  const api = new ApiClient(a.apiUrl)
  await waitFor('the node online with a capacity', async () => (await api.listNodes()).some((n) => n.nodeId === NODE && n.online && n.capacity) || undefined, 30_000)
  const maxJobs = Math.max(...o.jobs)
  const s = statfsSync(a.dataDir)
  const need = 2 * maxJobs * o.fileSize + 512 * 1024 * 1024
  if (s.bavail * s.bsize < need) throw new Error(`the file system under ${a.dataDir} has ${formatSize(s.bavail * s.bsize)} free; this run needs about ${formatSize(need)} (lower --file)`)

  progress(`pxd's memory with no volume (${o.settle} reads, 1 s apart)`)
  r.memory.none = await memory(a.pid, o.settle)
  progress(`  ${(r.memory.none.bytes / 2 ** 20).toFixed(1)} MiB`)

  const names = Array.from({ length: o.volumes }, (_, i) => `bench-scale-${String(i + 1).padStart(2, '0')}`)
  const mountpoints: string[] = []
  progress(`creating ${o.volumes} repl=1 volumes of ${formatSize(o.volumeSize)}`)
  for (const name of names) {
    const t0 = performance.now()
    await pluginOk(a, '/VolumeDriver.Create', { Name: name, Opts: { size: `${o.volumeSize}B`, repl: '1' } })
    r.createMs.push(performance.now() - t0)
    created.push(name)
    checkDaemon()
  }
  progress(`mounting them one after another (the first mount of each makes its ext4)`)
  for (const name of names) {
    const t0 = performance.now()
    const reply = await pluginOk(a, '/VolumeDriver.Mount', { Name: name, ID: MOUNT_ID })
    r.mountMs.push(performance.now() - t0)
    mounted.push(name)
    const mp = reply['Mountpoint']
    if (typeof mp !== 'string' || mp === '') throw new Error(`mount ${name} returned no mountpoint`)
    mountpoints.push(mp)
    progress(`  ${name}: ${r.mountMs.at(-1)!.toFixed(0)} ms`)
    checkDaemon()
  }

  // Each new ext4 writes its inode tables in the background (lazy_itable_init) through pxd:
  // until the kernel's ext4lazyinit thread is done (it exits then), the volumes are not idle.
  progress('waiting for the new file systems to initialise their inode tables (ext4lazyinit)')
  const t0 = performance.now()
  while (pidsNamed('ext4lazyinit').length > 0 && performance.now() - t0 < LAZY_INIT_TIMEOUT_S * 1000) {
    await new Promise((resolve) => setTimeout(resolve, 1000))
    checkDaemon()
  }
  r.lazyInitSeconds = (performance.now() - t0) / 1000
  if (pidsNamed('ext4lazyinit').length > 0) r.warnings.push(`ext4lazyinit still ran after ${LAZY_INIT_TIMEOUT_S} s: the idle memory and the writes overlap its inode table writes`)
  progress(`  ${r.lazyInitSeconds.toFixed(0)} s`)

  progress(`pxd's memory with ${o.volumes} idle mounted volumes (${o.settle} reads, 1 s apart)`)
  r.memory.mounted = await memory(a.pid, o.settle)
  progress(`  ${(r.memory.mounted.bytes / 2 ** 20).toFixed(1)} MiB`)

  const volumeFiles = mountpoints.slice(0, maxJobs).map((mp) => path.join(mp, 'scale.fio'))
  const hosts = Array.from({ length: maxJobs }, (_, i) => path.join(a.dataDir, `scale-host-${i + 1}.fio`))
  hostFiles.push(...hosts)
  for (const [label, files] of [['host', hosts], ['pxd', volumeFiles]] as const) {
    progress(`laying out ${files.length} x ${formatSize(o.fileSize)} on ${label === 'host' ? 'the data dir' : `${files.length} volumes`}, at once`)
    const lay = await seqWrite(files, o, false)
    r.layout[label] = lay.mbPerSecond
    progress(`  ${lay.mbPerSecond.toFixed(0)} MB/s (first write)`)
    checkDaemon()
  }

  for (let round = 1; round <= o.rounds; round++) {
    for (const jobs of o.jobs) {
      for (const target of ['host', 'pxd'] as const) {
        await syncAll()
        checkDaemon()
        const files = (target === 'host' ? hosts : volumeFiles).slice(0, jobs)
        const cpu = cpuWindow([a.pid], o.ramp)
        const w = await seqWrite(files, o, true)
        const run: WriteRun = { round, jobs, target, ...w, cpu: cpu.finish('seqWrite', { value: w.mbPerSecond, seconds: w.seconds }) }
        r.runs.push(run)
        progress(`round ${round}/${o.rounds} ${jobs} job(s) ${target}: ${w.mbPerSecond.toFixed(0)} MB/s, pxd CPU ${(run.cpu.perUnit ?? Number.NaN).toFixed(2)} s/GB`)
        checkDaemon()
      }
    }
  }
  progress(`pxd's memory after the writes, volumes idle again`)
  r.memory.afterWrites = await memory(a.pid, o.settle)
}

async function main(): Promise<number> {
  const flags = flagsOrExit(parseScaleArgs, SCALE_USAGE)
  if (typeof flags === 'number') return flags
  const opts = flags
  interrupted = exitOnSignal(progress, 'stopping fio, unmounting, stopping the node', teardown)
  const startedAt = new Date()
  const stamp = startedAt.toISOString().replace(/:/g, '-')
  const m = machine(startedAt)
  const r: ScaleResults = {
    schema: 1, startedAt: startedAt.toISOString(), finishedAt: '', completed: false, machine: m, options: opts,
    createMs: [], mountMs: [], lazyInitSeconds: 0, memory: {}, layout: {}, runs: [], daemonLogs: {}, warnings: [], logs: [],
  }
  m.busyBefore = await cpuBusy(2000)
  if (m.busyBefore > 0.25) r.warnings.push(`the machine was ${Math.round(m.busyBefore * 100)}% busy in the 2 s before the run: other work skews the figures`)
  if (process.getuid?.() !== 0 || m.fio === 'not installed') return (progress('cannot run: it needs root (FUSE, loop devices, mounts) and fio'), 1)
  progress(machineLine(m))
  try {
    await measure(opts, r)
    r.completed = true
  } catch (err) {
    if (interrupted()) return new Promise<number>(() => undefined)
    r.error = err instanceof Error ? err.message : String(err)
    progress(`FAILED: ${r.error}`)
    r.warnings.push(`the run failed: ${r.error.split('\n')[0]!}`)
    r.logs = saveLogs(cluster, `scale-${stamp}`, err instanceof FioError ? err.output : undefined)
  }
  for (const n of cluster?.nodes ?? []) {
    const counts = (r.daemonLogs[n.nodeId] = logLevels(n.logs()))
    if (counts.errors > 0) r.warnings.push(`pxd ${n.nodeId} logged ${counts.errors} error line(s) (first in the JSON's daemonLogs)`)
  }
  const problems = await teardown()
  if (interrupted()) return new Promise<number>(() => undefined)
  for (const p of problems) progress(`cleanup: ${p}`)
  r.finishedAt = new Date().toISOString()
  m.loadAverage.end = os.loadavg()
  mkdirSync(RESULTS_DIR, { recursive: true })
  const out = path.join(RESULTS_DIR, `scale-${stamp}.json`)
  writeFileSync(out, JSON.stringify(r, null, 2) + '\n')
  progress(`wrote ${path.relative(process.cwd(), out) || out}`)
  process.stdout.write('\n' + renderScale(machineLine(m), r) + '\n')
  return r.completed ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    progress(`FAILED: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    for (const p of await teardown()) progress(`cleanup: ${p}`)
    process.exit(1)
  },
)
