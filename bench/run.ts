/**
 * `npm run bench`: pxd measured side by side with the disk under it.
 *
 * 1. crc32c and memcpy throughput in process (before anything else runs).
 * 2. A 2-node cluster on loopback (etcd + two pxd daemons), a repl=1 volume on node-a and
 *    a repl=2 volume on node-a + node-b, both mounted on node-a.
 * 3. The same fio jobs on a file in node-a's data dir (host), on the repl=1 volume and on
 *    the repl=2 volume, interleaved host, repl=1, repl=2 per job, for N rounds; with
 *    --peers, on a one-brick and a replica-2 GlusterFS volume too (gluster.ts).
 * 4. Medians, ratios to host, targets met or missed: Markdown on stdout, everything (raw
 *    per-run numbers too) in bench/results/<timestamp>.json.
 *
 * Progress goes to stderr. It asserts nothing: exit 0 when the run completes, 1 when it
 * could not (a daemon failed to start or died, fio failed), 130 on SIGINT/SIGTERM, 2 on
 * bad flags. Whatever it started is stopped on every one of those paths.
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { formatSize } from '../src/util/size'
import { parseArgs, USAGE, UsageError, type BenchOptions } from './args'
import { cpuWindow, renderCpuTable } from './cpu'
import { measureCrc, type CrcResults } from './crc'
import type { PeerTarget } from './gluster'
import { peerSetupLine, renderPeerMarkdown, summarizePeers, type PeerRow } from './gluster-report'
import { dropCaches, FioError, layOut, runWorkload, stopRunningFio, syncAll, WORKLOADS } from './fio'
import { cpuBusy, fileSystemOf, logLevels, machine, machineLine, RESULTS_DIR, saveLogs, type Machine } from './host'
import { CRC_GOAL_GBPS, renderMarkdown, summarize, type RunRecord, type SummaryRow } from './report'
import { BenchEnvironment, type AnyTargetId, type Target } from './targets'

/** Seconds past runtime + ramp before a fio job counts as hung. */
const HANG_MARGIN_S = 120
/** Seconds the one-off layout write may take. */
const LAYOUT_TIMEOUT_S = 900

/** Share of CPU time busy before the run above which the run is flagged. */
const BUSY_WARNING = 0.25

const progress = (line: string) => process.stderr.write(`[bench] ${line}\n`)

interface BenchResults {
  schema: 1
  startedAt: string
  finishedAt?: string
  completed: boolean
  error?: string
  machine: Machine
  options: BenchOptions
  targets: Array<Target | PeerTarget>
  /** The first, sequential write of each fio file (into fresh space), one run. */
  layout: Partial<Record<AnyTargetId, { mbPerSecond: number; seconds: number }>>
  runs: RunRecord[]
  summary: SummaryRow[]
  /** --peers: pxd beside GlusterFS, row by row (Gluster's raw runs are in `runs`). */
  peers?: PeerRow[]
  crc?: CrcResults & { goalGBps: number; met: boolean | null }
  /** Volume state after the fio jobs: a repl=2 volume that went degraded ran as repl=1. */
  volumesAfter: Record<string, { degraded: boolean; replicas: Array<{ nodeId: string; inSync: boolean; online: boolean }> }>
  /** Per daemon: how many warn / error lines it logged during the run, and the first error lines. */
  daemonLogs: Record<string, { warnings: number; errors: number; firstErrors: string[] }>
  warnings: string[]
  /** Where daemon logs were saved when the run failed. */
  logs?: string[]
}

let signalled = false
let env: BenchEnvironment | undefined

async function main(): Promise<number> {
  let opts: BenchOptions | null
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`${err.message}\n\n${USAGE}`)
    return 2
  }
  if (opts === null) {
    process.stdout.write(USAGE)
    return 0
  }

  const startedAt = new Date()
  const stamp = startedAt.toISOString().replace(/:/g, '-')
  const results: BenchResults = {
    schema: 1,
    startedAt: startedAt.toISOString(),
    completed: false,
    machine: machine(startedAt),
    options: opts,
    targets: [],
    layout: {},
    runs: [],
    summary: [],
    volumesAfter: {},
    daemonLogs: {},
    warnings: [],
  }

  installSignalHandlers()
  // The load average would still count the build that `npm run bench` just did; what
  // the CPUs do right now says whether something else is running.
  const busy = await cpuBusy(2000)
  results.machine.busyBefore = busy
  if (busy > BUSY_WARNING) {
    results.warnings.push(`the machine was ${Math.round(busy * 100)}% busy in the 2 s before the run: other work skews the figures`)
    progress(`warning: ${results.warnings.at(-1)!}`)
  }

  if (!opts.crcOnly) {
    const missing = preconditions()
    if (missing.length > 0) {
      progress(`cannot run: ${missing.join('; ')}`)
      return 1
    }
  }

  progress(machineLine(results.machine))
  progress(`crc32c / memcpy: median of ${opts.crcRuns} runs of 200 ms each`)
  const crc = measureCrc(opts.crcRuns)
  const crcMain = crc.kernels.find((k) => k.id === 'crc32c')?.median ?? null
  results.crc = { ...crc, goalGBps: CRC_GOAL_GBPS, met: crcMain === null ? null : crcMain >= CRC_GOAL_GBPS }
  for (const k of crc.kernels) progress(`  ${k.label}: ${k.median === null ? 'n/a' : `${k.median.toFixed(2)} GB/s`}`)

  if (!opts.crcOnly) {
    env = new BenchEnvironment(progress)
    try {
      await runFioJobs(opts, env, results)
      results.completed = true
    } catch (err) {
      if (signalled) return await never()
      results.error = err instanceof Error ? err.message : String(err)
      progress(`FAILED: ${results.error}`)
      if (err instanceof FioError && err.output) progress(`fio's output:\n${err.output}`)
      results.logs = saveLogs(env.cluster, stamp, err instanceof FioError ? err.output : undefined)
      for (const f of results.logs) progress(`saved ${f}`)
    }
    const problems = await env.teardown()
    if (signalled) return await never()
    for (const p of problems) progress(`cleanup: ${p}`)
  } else {
    results.completed = true
  }

  results.finishedAt = new Date().toISOString()
  results.machine.loadAverage.end = os.loadavg()
  results.summary = summarize(results.runs)
  if (opts.peers) results.peers = summarizePeers(results.runs, results.summary)
  const file = path.join(RESULTS_DIR, `${stamp}.json`)
  mkdirSync(RESULTS_DIR, { recursive: true })
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  progress(`wrote ${path.relative(process.cwd(), file) || file}`)

  process.stdout.write('\n' + renderMarkdown({
    machineLine: machineLine(results.machine),
    setupLine: setupLine(opts, results),
    rows: results.summary,
    crc: results.crc,
    cpu: renderCpuTable(results.runs),
    warnings: results.warnings,
  }) + '\n' + (results.peers ? renderPeerMarkdown(results.peers, peerSetupLine(results.targets, results.layout)) + '\n' : ''))
  return results.completed ? 0 : 1
}

async function runFioJobs(opts: BenchOptions, env: BenchEnvironment, results: BenchResults): Promise<void> {
  const perJob = opts.runtime + opts.ramp + 1.5
  const targetCount = opts.peers ? 5 : 3
  const estimate = opts.repeat * WORKLOADS.length * targetCount * perJob
  progress(`fio: ${opts.repeat} round(s) x ${WORKLOADS.length} jobs x ${targetCount} targets, ${opts.runtime} s + ${opts.ramp} s ramp each: about ${Math.ceil(estimate / 60)} min, plus setup`)

  await env.setUp(opts.volumeSize, opts.fuseServer, opts.peerPlaintext, opts.peers)
  results.targets = env.fioTargets
  const dataDir = env.local.dataDir
  results.machine.dataFs = fileSystemOf(dataDir)
  checkFreeSpace(dataDir, opts)
  bail()

  // Lay out each file once so reads hit real data and writes overwrite allocated blocks
  // on every target alike (pxd's replicas are sparse until written).
  for (const t of env.fioTargets) {
    progress(`laying out ${formatSize(opts.fileSize)} on ${t.label}: ${t.file}`)
    const r = await layOut(t.file, opts.fileSize, LAYOUT_TIMEOUT_S)
    results.layout[t.id] = r
    progress(`  ${r.mbPerSecond.toFixed(0)} MB/s (first write)`)
    checkDaemons(env)
    bail()
  }

  for (let round = 1; round <= opts.repeat; round++) {
    for (const w of WORKLOADS) {
      for (const t of env.fioTargets) {
        await (w.dropCaches ? dropCaches() : syncAll())
        bail()
        const startedAt = new Date().toISOString()
        const cpu = cpuWindow(env.cluster?.nodes.map((n) => n.pid) ?? [], opts.ramp)
        const result = await runWorkload(w, {
          file: t.file,
          fileSize: opts.fileSize,
          runtime: opts.runtime,
          ramp: opts.ramp,
          timeoutSeconds: opts.runtime + opts.ramp + HANG_MARGIN_S,
        })
        bail()
        checkDaemons(env)
        results.runs.push({ round, workload: w.id, target: t.id, startedAt, result, cpu: cpu.finish(w.id, result) })
        const figure = result.latency
          ? `p50 ${(result.latency.p50 / 1000).toFixed(2)} ms, p99 ${(result.latency.p99 / 1000).toFixed(2)} ms (write p99 ${(result.latency.write.p99 / 1000).toFixed(2)} + fsync p99 ${(result.latency.fsync.p99 / 1000).toFixed(2)})`
          : w.id.startsWith('seq') ? `${result.value.toFixed(0)} MB/s` : `${result.value.toFixed(0)} IOPS`
        progress(`round ${round}/${opts.repeat} ${w.label} ${t.label}: ${figure}`)
      }
    }
  }

  for (const t of env.targets) {
    if (!t.volume) continue
    const info = await env.inspect(t.volume.name)
    results.volumesAfter[t.volume.name] = { degraded: info.degraded, replicas: info.replicas }
    if (info.degraded || info.replicas.length !== (t.id === 'repl2' ? 2 : 1)) {
      results.warnings.push(`${t.label} volume ${t.volume.name} ended degraded (replicas: ${info.replicas.map((r) => `${r.nodeId}${r.inSync ? '' : ' out of sync'}${r.online ? '' : ' offline'}`).join(', ')}): its figures may not be those of ${t.label}`)
    }
  }
  for (const t of env.targets) {
    if (t.id !== 'host' && t.nodeId !== env.local.nodeId) results.warnings.push(`${t.label} was mounted on ${t.nodeId}, not ${env.local.nodeId}`)
  }
  for (const n of env.cluster?.nodes ?? []) {
    const counts = logLevels(n.logs())
    results.daemonLogs[n.nodeId] = counts
    if (counts.errors > 0) results.warnings.push(`pxd ${n.nodeId} logged ${counts.errors} error line(s) during the run (first in the JSON's daemonLogs)`)
  }
  for (const w of results.warnings) progress(`warning: ${w}`)
}

/** A daemon that died mid-run makes every later figure meaningless: stop with its log. */
function checkDaemons(env: BenchEnvironment): void {
  const dead = env.deadDaemon()
  if (dead) {
    throw new Error(`pxd ${dead.nodeId} (pid ${dead.pid}) exited (${dead.child.exitCode ?? dead.child.signalCode}) during the benchmark; last log lines:\n${dead.logs().split('\n').slice(-30).join('\n')}`)
  }
  const glusterd = env.peers?.exited()
  if (glusterd) throw new Error(glusterd)
}

function bail(): void {
  if (signalled) throw new Error('interrupted')
}

function preconditions(): string[] {
  const missing: string[] = []
  if (process.getuid?.() !== 0) missing.push('run as root (FUSE, loop devices, mounts, drop_caches)')
  try {
    execFileSync('fio', ['--version'], { stdio: 'ignore' })
  } catch {
    missing.push('fio is not installed (apt-get install fio, or scripts/setup.sh test)')
  }
  return missing
}

function checkFreeSpace(dir: string, opts: BenchOptions): void {
  const s = statfsSync(dir)
  const free = s.bavail * s.bsize
  // host file + repl=1 replica + two repl=2 replicas of the file, plus ext4 metadata;
  // with --peers, Gluster's one brick and two replica bricks.
  const need = (opts.peers ? 7 : 4) * opts.fileSize + 512 * 1024 * 1024
  if (free < need) throw new Error(`the file system under ${dir} has ${formatSize(free)} free; this run needs about ${formatSize(need)} (lower --size)`)
}

function setupLine(opts: BenchOptions, r: BenchResults): string {
  if (opts.crcOnly) return 'crc32c / memcpy only (--crc-only).'
  const layout = (['host', 'repl1', 'repl2'] as const).map((t) => `${t === 'host' ? 'host' : t === 'repl1' ? 'repl=1' : 'repl=2'} ${r.layout[t]?.mbPerSecond.toFixed(0) ?? 'n/a'}`).join(', ')
  return `Medians of ${opts.repeat} interleaved round(s); each fio job ${opts.runtime} s after a ${opts.ramp} s ramp, on a ${formatSize(opts.fileSize)} file ` +
    `(volumes ${formatSize(opts.volumeSize)}, ext4; 2 pxd nodes + etcd on loopback, both replicas on this machine's disk; FUSE server: ${opts.fuseServer}; peer links ${opts.peerPlaintext ? 'plaintext' : 'TLS-PSK'}). ` +
    `"vs host": volume median / host median (throughput: fraction of host; latency: multiple of host). ` +
    `write+fsync latency = fio write completion latency + fsync latency at the same percentile. ` +
    `First sequential write of each file (layout, MB/s, one run): ${layout}.`
}

function installSignalHandlers(): void {
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      progress(`${signal}: still cleaning up, please wait`)
      return
    }
    signalled = true
    progress(`${signal}: stopping fio, unmounting, stopping the cluster`)
    const current = env
    const done = stopRunningFio().then(() => (current ? current.teardown() : []))
    void done.then((problems) => {
      for (const p of problems) progress(`cleanup: ${p}`)
      progress('cleaned up; no results written')
      process.exit(130)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}

/** The signal handler exits the process once cleanup is done; the main flow waits for that. */
function never(): Promise<number> {
  return new Promise(() => undefined)
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    progress(`FAILED: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    if (env) for (const p of await env.teardown()) progress(`cleanup: ${p}`)
    process.exit(1)
  },
)
