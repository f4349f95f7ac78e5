/**
 * The fio jobs of the benchmark, running one, and reading its JSON output into the one
 * figure (or two) each job is about.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'

export type WorkloadId = 'seqWrite' | 'seqRead' | 'randWrite' | 'randRead' | 'syncWrite'

export interface Workload {
  id: WorkloadId
  label: string
  /** fio arguments beyond the common ones (file, size, time, output). */
  args: string[]
  /** Reads: drop the page cache before the job so that no target reads from memory. */
  dropCaches: boolean
}

/** What one fio run measured. Throughput jobs fill `value`; the fsync job fills the latencies. */
export interface FioResult {
  /** MB/s (10^6 bytes) for seq jobs, IOPS for random jobs; for syncWrite: write+fsync pairs/s. */
  value: number
  /** syncWrite only: latency of one write + its fsync, in microseconds (see latencyOf). */
  latency?: SyncLatency
  /** Seconds fio measured (its runtime, without the ramp). */
  seconds: number
}

export interface SyncLatency {
  /** write completion p50 + fsync p50, us */
  p50: number
  /** write completion p99 + fsync p99, us */
  p99: number
  write: { p50: number; p99: number; mean: number }
  fsync: { p50: number; p99: number; mean: number }
  /** runtime / pairs: exact mean of one write+fsync at iodepth 1, us */
  pairMean: number
}

export const WORKLOADS: Workload[] = [
  {
    id: 'seqWrite',
    label: 'seq write 1 MiB',
    args: ['--rw=write', '--bs=1M', '--ioengine=psync', '--iodepth=1', '--end_fsync=1'],
    dropCaches: false,
  },
  {
    id: 'seqRead',
    label: 'seq read 1 MiB',
    args: ['--rw=read', '--bs=1M', '--ioengine=psync', '--iodepth=1'],
    dropCaches: true,
  },
  {
    id: 'randWrite',
    label: 'rand write 4 KiB QD16',
    args: ['--rw=randwrite', '--bs=4k', '--ioengine=libaio', '--iodepth=16'],
    dropCaches: false,
  },
  {
    id: 'randRead',
    label: 'rand read 4 KiB QD16',
    args: ['--rw=randread', '--bs=4k', '--ioengine=libaio', '--iodepth=16'],
    dropCaches: true,
  },
  {
    id: 'syncWrite',
    label: '4 KiB write+fsync',
    args: ['--rw=randwrite', '--bs=4k', '--ioengine=psync', '--iodepth=1', '--fsync=1'],
    dropCaches: false,
  },
]

export interface FioRunOptions {
  file: string
  fileSize: number
  /** Where the job's region starts in the file (default 0). */
  offset?: number
  /** Through the page cache instead of direct I/O (default false). */
  buffered?: boolean
  runtime: number
  ramp: number
  /** Give up (and call it a hang) after this many seconds. */
  timeoutSeconds: number
}

/** The fio process running now, so that a signal handler can stop it. */
let current: ChildProcess | undefined

/**
 * Stop the fio process running now (SIGTERM, SIGKILL after 10 s) and wait for it, so
 * that its file can be unmounted. Gives up waiting after 15 s: a fio stuck in a hung
 * FUSE request only goes once the daemon is stopped.
 */
export async function stopRunningFio(): Promise<void> {
  const child = current
  if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(child.pid!, sig)
    } catch {
      // gone meanwhile
    }
  }
  signal('SIGTERM')
  const wait = (ms: number) => new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), ms).unref())
  if ((await Promise.race([exited, wait(10_000)])) !== 'timeout') return
  signal('SIGKILL')
  await Promise.race([exited, wait(5_000)])
}

export class FioError extends Error {
  constructor(message: string, readonly output: string) {
    super(message)
  }
}

/** Run fio with these arguments and return its parsed JSON output. */
export function runFio(name: string, args: string[], timeoutSeconds: number): Promise<FioJson> {
  const fullArgs = [`--name=${name}`, '--output-format=json', ...args]
  return new Promise((resolve, reject) => {
    const child = spawn('fio', fullArgs, { stdio: ['ignore', 'pipe', 'pipe'] })
    current = child
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    let hung = false
    const timer = setTimeout(() => {
      hung = true
      try {
        process.kill(child.pid!, 'SIGKILL')
      } catch {
        // gone meanwhile
      }
    }, timeoutSeconds * 1000)
    child.once('error', (err) => {
      clearTimeout(timer)
      reject(new FioError(`cannot run fio (${err.message}); install it with apt-get install fio`, ''))
    })
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      if (current === child) current = undefined
      const command = `fio ${fullArgs.join(' ')}`
      const output = `$ ${command}\n--- stdout\n${stdout}\n--- stderr\n${stderr}`
      if (hung) {
        reject(new FioError(`fio did not finish within ${timeoutSeconds} s (a hung I/O?): ${command}`, output))
        return
      }
      if (code !== 0) {
        reject(new FioError(`fio exited with ${signal ?? `code ${code}`}: ${command}\n${stderr.trim()}`, output))
        return
      }
      // fio may print notes before its JSON on stdout.
      const start = stdout.indexOf('{')
      try {
        const parsed = JSON.parse(stdout.slice(start)) as FioJson
        const job = parsed.jobs?.[0]
        if (!job) throw new Error('no jobs in its output')
        if (job.error !== 0) throw new Error(`the job failed with error ${job.error}`)
        resolve(parsed)
      } catch (err) {
        reject(new FioError(`cannot read fio's JSON output (${(err as Error).message}): ${command}`, output))
      }
    })
  })
}

/** Write the whole file once, sequentially, so that later jobs overwrite and read real data. */
export async function layOut(file: string, fileSize: number, timeoutSeconds: number): Promise<{ mbPerSecond: number; seconds: number }> {
  const json = await runFio('layout', [
    `--filename=${file}`, `--size=${fileSize}`, '--rw=write', '--bs=1M', '--ioengine=psync',
    '--direct=1', '--end_fsync=1', '--fallocate=none',
  ], timeoutSeconds)
  const job = json.jobs[0]!
  return { mbPerSecond: job.write.bw_bytes / 1e6, seconds: job.job_runtime / 1000 }
}

export async function runWorkload(w: Workload, opts: FioRunOptions): Promise<FioResult> {
  const json = await runFio(w.id, [
    `--filename=${opts.file}`, `--size=${opts.fileSize}`, `--offset=${opts.offset ?? 0}`, `--direct=${opts.buffered ? 0 : 1}`, '--fallocate=none',
    '--time_based', `--runtime=${opts.runtime}`, `--ramp_time=${opts.ramp}`,
    ...w.args,
  ], opts.timeoutSeconds)
  const job = json.jobs[0]!
  const seconds = job.job_runtime / 1000
  switch (w.id) {
    case 'seqWrite':
      return { value: job.write.bw_bytes / 1e6, seconds }
    case 'seqRead':
      return { value: job.read.bw_bytes / 1e6, seconds }
    case 'randWrite':
      return { value: job.write.iops, seconds }
    case 'randRead':
      return { value: job.read.iops, seconds }
    case 'syncWrite':
      return { value: job.write.iops, seconds, latency: latencyOf(job) }
  }
}

/**
 * fio reports the latency of the writes (clat) and of the fsyncs (sync.lat) as two
 * distributions; it has no per-pair figure, and its per-I/O logs carry only the writes.
 * One write+fsync pair is therefore reported as the sum of the two at the same
 * percentile. At iodepth 1 the pairs run back to back, so runtime / pairs is their exact
 * mean, kept alongside as a check.
 */
export function latencyOf(job: FioJob): SyncLatency {
  const w = job.write.clat_ns
  const s = job.sync?.lat_ns
  if (!s) throw new Error('fio reported no fsync latencies (is --fsync=1 set?)')
  const us = (ns: number) => ns / 1000
  const write = { p50: us(percentile(w, 50)), p99: us(percentile(w, 99)), mean: us(w.mean) }
  const fsync = { p50: us(percentile(s, 50)), p99: us(percentile(s, 99)), mean: us(s.mean) }
  const pairs = job.write.total_ios
  return {
    p50: write.p50 + fsync.p50,
    p99: write.p99 + fsync.p99,
    write,
    fsync,
    pairMean: pairs > 0 ? (job.write.runtime * 1000) / pairs : Number.NaN,
  }
}

function percentile(stat: FioLatency, p: number): number {
  const key = Object.keys(stat.percentile ?? {}).find((k) => Number(k) === p)
  const v = key === undefined ? undefined : stat.percentile?.[key]
  if (v === undefined) throw new Error(`fio reported no p${p}`)
  return v
}

/** Drop the page cache (after a sync), as root. Affects every target alike. */
export async function dropCaches(): Promise<void> {
  await syncAll()
  writeFileSync('/proc/sys/vm/drop_caches', '3')
}

/**
 * Writes out every dirty page of the machine. Run before each job: pxd's replica files are
 * written through the page cache and made durable by the flushes the volume's file system
 * asks for, so a job would otherwise start with the writeback a previous job left behind
 * (a rand-write job leaves hundreds of MB dirty), paid for by whichever job runs next.
 */
export async function syncAll(): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn('sync', [], { stdio: 'ignore' })
    child.once('error', reject)
    child.once('close', () => resolve())
  })
}

/** The parts of fio's JSON output (fio 3.x) that this benchmark reads. */
export interface FioJson {
  'fio version': string
  jobs: FioJob[]
}

export interface FioJob {
  jobname: string
  error: number
  /** ms */
  job_runtime: number
  read: FioDirection
  write: FioDirection
  sync?: { total_ios: number; lat_ns: FioLatency }
}

export interface FioDirection {
  io_bytes: number
  bw_bytes: number
  iops: number
  /** ms */
  runtime: number
  total_ios: number
  clat_ns: FioLatency
  lat_ns: FioLatency
}

export interface FioLatency {
  min: number
  max: number
  mean: number
  percentile?: Record<string, number>
}
