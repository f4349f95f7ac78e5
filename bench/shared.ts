/**
 * `npm run bench:shared` (also the last part of `npm run bench`): a shared volume's FUSE
 * client measured against the ext4 of the node that serves it, in one run.
 *
 * A 2-node cluster on loopback (etcd + two pxd daemons), one repl=2 volume created with
 * shared=true, mounted on node-a first (it attaches the volume and serves its ext4 at its
 * own mountpoint) and then on node-b (the FUSE client, fuse.pxd-shared, which forwards
 * every file operation to node-a). The same jobs run on each mount, interleaved server
 * then client, for N rounds; each figure is the client's median as a fraction of the
 * server's. Markdown on stdout, every run in bench/results/shared-<timestamp>.json,
 * progress on stderr. It asserts nothing: exit 0 when the run completes, 1 when it could
 * not, 2 on bad flags, 130 on SIGINT/SIGTERM. Whatever it started is stopped on every path.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ApiClient } from '../src/api/client'
import { formatSize, parseSize } from '../src/util/size'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../test/helpers/cluster'
import { leftoversUnder } from '../test/helpers/daemon'
import { REPO_ROOT } from '../test/helpers/paths'
import { pluginCall } from '../test/helpers/plugin-client'
import { pluginOk } from '../test/helpers/volume-io'
import { dropCaches, FioError, layOut, runFio, runWorkload, stopRunningFio, syncAll, WORKLOADS } from './fio'
import { cpuBusy, logLevels, RESULTS_DIR, saveLogs, tryText } from './host'
import { fmt } from './report'
import { median } from './stats'

const VOLUME = 'bench-shared'
const MOUNT_ID = 'pxd-bench-shared'
const NODE_IDS = ['node-a', 'node-b'] as const
const HANG_MARGIN_S = 120
const progress = (line: string) => process.stderr.write(`[bench:shared] ${line}\n`)

const USAGE = `usage: npm run bench:shared -- [flags]   (node dist/bench/shared.js [flags])

A repl=2 shared volume mounted on node-a (it serves the volume: ext4 at its mountpoint) and
on node-b (the FUSE client); the same jobs on both mounts, interleaved, for N rounds; the
client's medians as fractions of the server's. Markdown on stdout, JSON in bench/results/.

  --quick             a smoke run: --rounds 1 --size 256M --files 500 --runtime 3
  --rounds N          interleaved rounds of every job on both mounts   (default 3)
  --size SIZE         file per mount for the seq and random jobs       (default 512M)
  --files N           files of the small-files job                     (default 2000)
  --runtime SECONDS   measured seconds of the random-write job         (default 8)
  --ramp SECONDS      unmeasured warm-up of the random-write job       (default 1)
  --volume-size SIZE  the shared volume                   (default 2G, at least 3 x --size)
  -h, --help          this text
`

interface Options { rounds: number; fileSize: number; files: number; runtime: number; ramp: number; volumeSize: number; quick: boolean }
class UsageError extends Error {}

function parseArgs(argv: string[]): Options | null {
  const o: Partial<Options> = {}
  let quick = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1
    const flag = eq > 0 ? arg.slice(0, eq) : arg
    const value = (): string => {
      const v = eq > 0 ? arg.slice(eq + 1) : argv[++i]
      if (v === undefined) throw new UsageError(`${flag} needs a value`)
      return v
    }
    const num = (integer: boolean, min: number): number => {
      const text = value()
      const n = Number(text)
      if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) throw new UsageError(`${flag} wants ${integer ? 'an integer' : 'a number'} >= ${min}, got "${text}"`)
      return n
    }
    const size = (): number => {
      const text = value()
      try { return parseSize(text) } catch (err) { throw new UsageError(`${flag}: ${(err as Error).message}`) }
    }
    switch (flag) {
      case '-h': case '--help': return null
      case '--quick': quick = true; break
      case '--rounds': o.rounds = num(true, 1); break
      case '--size': o.fileSize = size(); break
      case '--files': o.files = num(true, 1); break
      case '--runtime': o.runtime = num(false, 1); break
      case '--ramp': o.ramp = num(false, 0); break
      case '--volume-size': o.volumeSize = size(); break
      default: throw new UsageError(`unknown flag ${arg}`)
    }
  }
  const m = { rounds: 3, fileSize: parseSize('512M'), files: 2000, runtime: 8, ramp: 1, ...(quick ? { rounds: 1, fileSize: parseSize('256M'), files: 500, runtime: 3 } : {}), ...o }
  if (m.fileSize < parseSize('16M')) throw new UsageError('--size must be at least 16M')
  // Two files of --size, the small files, and ext4's own metadata and journal.
  const volumeSize = m.volumeSize ?? Math.max(parseSize('2G'), 3 * m.fileSize)
  if (volumeSize < 3 * m.fileSize) throw new UsageError(`--volume-size ${formatSize(volumeSize)} is too small for --size ${formatSize(m.fileSize)}: give at least 3 x`)
  return { ...m, volumeSize, quick }
}

type Side = 'server' | 'client'
interface Mount { id: Side; node: ClusterNode; mountpoint: string; fstype: string; file: string }
type JobId = 'seqWrite' | 'seqRead' | 'randWrite' | 'smallFiles'
interface Measured { value: number; seconds: number }
interface Job { id: JobId; label: string; unit: string; goal: number; dropCaches: boolean; how: string; run(m: Mount, round: number): Promise<Measured> }
interface RunRecord extends Measured { round: number; job: JobId; target: Side; startedAt: string }
interface Row { job: JobId; label: string; unit: string; runs: Record<Side, number[]>; median: Record<Side, number>; ratio: number; goal: number; met: boolean }

let opts: Options
let env: SharedEnv | undefined
let signalled = false
/** The small-files child (or rm) running now, so that a signal can stop it. */
let child: ChildProcess | undefined

/** One small file: create (O_EXCL), 4 KiB write, fsync, close; files/s over all of them. */
const SMALL_FILES_JS = `const fs=require('fs'),path=require('path');const [dir,n]=[process.argv[1],Number(process.argv[2])];
fs.mkdirSync(dir);const buf=Buffer.alloc(4096,0x5a);const t0=process.hrtime.bigint();
for(let i=0;i<n;i++){const fd=fs.openSync(path.join(dir,'f'+i),'wx',0o644);fs.writeSync(fd,buf,0,4096,0);fs.fsyncSync(fd);fs.closeSync(fd)}
const s=Number(process.hrtime.bigint()-t0)/1e9;process.stdout.write(JSON.stringify({files:n,seconds:s}))`

const seqArgs = (rw: string) => [`--rw=${rw}`, '--bs=1M', '--ioengine=psync', '--iodepth=1', '--direct=0', '--fallocate=none', ...(rw === 'write' ? ['--end_fsync=1'] : [])]
const seqTimeout = () => HANG_MARGIN_S + opts.fileSize / 1e6 // at 1 MB/s
async function seqJob(m: Mount, rw: 'write' | 'read'): Promise<Measured> {
  const job = (await runFio(`shared-seq${rw}`, [`--filename=${m.file}`, `--size=${opts.fileSize}`, ...seqArgs(rw)], seqTimeout())).jobs[0]!
  return { value: job[rw].bw_bytes / 1e6, seconds: job.job_runtime / 1000 }
}
const randWrite = WORKLOADS.find((w) => w.id === 'randWrite')!

const JOBS: Job[] = [
  { id: 'seqWrite', label: 'seq write 1 MiB', unit: 'MB/s', goal: 0.5, dropCaches: false, how: `fio, one pass over the file: ${seqArgs('write').join(' ')}`, run: (m) => seqJob(m, 'write') },
  { id: 'seqRead', label: 'seq read 1 MiB (cold)', unit: 'MB/s', goal: 0.5, dropCaches: true, how: `fio, one pass over the file after drop_caches: ${seqArgs('read').join(' ')}`, run: (m) => seqJob(m, 'read') },
  {
    id: 'randWrite', label: 'rand write 4 KiB QD16', unit: 'IOPS', goal: 0.3, dropCaches: false,
    how: `fio, the main bench's job: --direct=1 --time_based ${randWrite.args.join(' ')}`,
    run: async (m) => runWorkload(randWrite, { file: m.file, fileSize: opts.fileSize, runtime: opts.runtime, ramp: opts.ramp, timeoutSeconds: opts.runtime + opts.ramp + HANG_MARGIN_S }),
  },
  {
    id: 'smallFiles', label: 'small files (create + 4 KiB + fsync + close)', unit: 'files/s', goal: 0.25, dropCaches: false,
    how: 'node: N files in a new directory, each open(O_CREAT|O_EXCL), one 4 KiB write, fsync, close, one after another',
    run: async (m, round) => {
      const name = `small-${m.id}-${round}`
      const out = await runChild(process.execPath, ['-e', SMALL_FILES_JS, path.join(m.mountpoint, name), String(opts.files)], HANG_MARGIN_S + opts.files / 10)
      const r = JSON.parse(out) as { files: number; seconds: number }
      // Removed through the server's own mount (not timed).
      await runChild('rm', ['-rf', path.join(env!.server.mountpoint, name)], HANG_MARGIN_S)
      return { value: r.files / r.seconds, seconds: r.seconds }
    },
  },
]

class SharedEnv {
  cluster: Cluster | undefined
  server!: Mount
  client!: Mount
  volumeId = ''
  #starting: Promise<Cluster> | undefined
  #created = false
  readonly #mounted: ClusterNode[] = []
  #teardown: Promise<string[]> | undefined

  async setUp(): Promise<void> {
    progress(`starting etcd and pxd ${NODE_IDS.join(', ')} on loopback`)
    this.#starting = startCluster([...NODE_IDS])
    this.cluster = await this.#starting
    if (this.#teardown) throw new Error('interrupted while the cluster started')
    const [a, b] = NODE_IDS.map((id) => this.cluster!.node(id)) as [ClusterNode, ClusterNode]
    const api = new ApiClient(a.apiUrl)
    await waitFor('both nodes online with a capacity', async () => {
      const nodes = await api.listNodes()
      return NODE_IDS.every((id) => nodes.some((n) => n.nodeId === id && n.online && n.capacity)) || undefined
    }, 30_000)
    await pluginOk(a, '/VolumeDriver.Create', { Name: VOLUME, Opts: { size: `${opts.volumeSize}B`, repl: '2', shared: 'true' } })
    this.#created = true
    this.server = await this.#mount(a, 'server', 'ext4')
    this.client = await this.#mount(b, 'client', 'fuse.pxd-shared')
    const info = await api.inspectVolume(VOLUME)
    this.volumeId = info.id
    if (info.replicas.length !== 2) throw new Error(`${VOLUME} has ${info.replicas.length} replica(s), not 2`)
    if (info.sharing?.server !== a.nodeId) throw new Error(`${VOLUME} is served by ${info.sharing?.server ?? 'nobody'}, not ${a.nodeId}`)
    progress(`${VOLUME} (${info.id}, repl=2 on ${info.replicas.map((r) => r.nodeId).join(' + ')}, ${formatSize(opts.volumeSize)}) served by ${a.nodeId} at ${this.server.mountpoint}, client ${b.nodeId} at ${this.client.mountpoint}`)
  }

  async #mount(node: ClusterNode, id: Side, want: string): Promise<Mount> {
    const reply = await pluginOk(node, '/VolumeDriver.Mount', { Name: VOLUME, ID: MOUNT_ID })
    this.#mounted.push(node)
    const mountpoint = reply['Mountpoint']
    if (typeof mountpoint !== 'string' || mountpoint === '') throw new Error(`mount on ${node.nodeId} returned no mountpoint`)
    const fstype = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[1] === mountpoint)?.[2] ?? 'not mounted'
    if (fstype !== want) throw new Error(`${VOLUME} on ${node.nodeId} is ${fstype} at ${mountpoint}, not ${want}`)
    return { id, node, mountpoint, fstype, file: path.join(mountpoint, `pxd-bench-${id}.fio`) }
  }

  /** Unmount (client first), remove the volume, stop the daemons and etcd. Never throws. */
  teardown(): Promise<string[]> {
    this.#teardown ??= (async () => {
      const problems: string[] = []
      if (!this.cluster && this.#starting) this.cluster = await this.#starting.catch(() => undefined)
      const alive = (n: ClusterNode) => n.child.exitCode === null && n.child.signalCode === null
      // A daemon that got the same Ctrl-C unmounts by itself: its socket is gone then.
      const call = async (n: ClusterNode, endpoint: string, body: unknown) => {
        if (!alive(n)) return
        const r = await pluginCall(n.pluginSocket, endpoint, body).catch((err: Error) => ({ body: { Err: /ENOENT|ECONNREFUSED|ECONNRESET|socket hang up/.test(err.message) ? '' : err.message } }))
        if (typeof r.body['Err'] === 'string' && r.body['Err'] !== '') problems.push(`${endpoint} on ${n.nodeId}: ${r.body['Err']}`)
      }
      for (const n of [...this.#mounted].reverse()) await call(n, '/VolumeDriver.Unmount', { Name: VOLUME, ID: MOUNT_ID })
      if (this.#created && this.cluster) await call(this.cluster.node(NODE_IDS[0]), '/VolumeDriver.Remove', { Name: VOLUME })
      if (this.cluster) {
        await this.cluster.stop().catch((err: Error) => problems.push(`stop cluster: ${err.message}`))
        const left = leftoversUnder(this.cluster.dir)
        if (left.length > 0) problems.push(`${this.cluster.dir} is left behind: ${left.join(', ')}`)
      }
      return problems
    })()
    return this.#teardown
  }
}

/** Run a command, its stdout; SIGKILL and fail after `timeoutSeconds`. */
function runChild(cmd: string, args: string[], timeoutSeconds: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = c
    let out = ''
    let err = ''
    c.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    c.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutSeconds * 1000)
    c.once('error', (e) => { clearTimeout(timer); reject(e) })
    c.once('close', (code, signal) => {
      clearTimeout(timer)
      if (child === c) child = undefined
      if (code === 0) resolve(out)
      else reject(new Error(`${path.basename(cmd)} ${args[0] === '-e' ? '(small files)' : args.join(' ')} ended with ${signal ?? `code ${code}`}${signal === 'SIGKILL' ? ` (no end within ${timeoutSeconds} s: a hung FUSE request?)` : ''}: ${err.trim()}`))
    })
  })
}

async function main(): Promise<number> {
  try {
    const parsed = parseArgs(process.argv.slice(2))
    if (!parsed) { process.stdout.write(USAGE); return 0 }
    opts = parsed
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`${err.message}\n\n${USAGE}`)
    return 2
  }
  installSignalHandlers()
  const startedAt = new Date()
  const stamp = startedAt.toISOString().replace(/:/g, '-')
  const warnings: string[] = []
  const busy = await cpuBusy(2000)
  if (busy > 0.25) warnings.push(`the machine was ${Math.round(busy * 100)}% busy in the 2 s before the run: other work skews the figures`)
  const machine = {
    cores: os.cpus().length, cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown', kernel: `${os.type()} ${os.release()}`, node: process.version,
    fio: tryText('fio', ['--version']) ?? 'not installed', pxdCommit: tryText('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty']) ?? 'unknown',
    hostname: os.hostname(), loadAverage: { start: os.loadavg(), end: [] as number[] }, busyBefore: busy,
  }
  const results = {
    schema: 1, startedAt: startedAt.toISOString(), finishedAt: '', completed: false, error: undefined as string | undefined, machine, options: opts,
    jobs: JOBS.map(({ id, label, unit, goal, how }) => ({ id, label, unit, goal, how })),
    volume: undefined as unknown, layout: {} as Record<string, { mbPerSecond: number; seconds: number }>, runs: [] as RunRecord[], summary: [] as Row[],
    volumeAfter: undefined as unknown, daemonLogs: {} as Record<string, { warnings: number; errors: number; firstErrors: string[] }>, warnings, logs: [] as string[],
  }
  const missing = [...(process.getuid?.() !== 0 ? ['run as root (FUSE, loop devices, mounts, drop_caches)'] : []), ...(machine.fio === 'not installed' ? ['fio is not installed'] : [])]
  if (missing.length > 0) { progress(`cannot run: ${missing.join('; ')}`); return 1 }
  if (busy > 0.25) progress(`warning: ${warnings[0]!}`)
  progress(`${opts.rounds} round(s) x ${JOBS.length} jobs x 2 mounts; --size ${formatSize(opts.fileSize)}, --files ${opts.files}, rand write ${opts.runtime} s + ${opts.ramp} s ramp`)

  env = new SharedEnv()
  try {
    // Both replicas of the two files (and the small files) land on the disk under the temp dir.
    const st = statfsSync(os.tmpdir())
    const free = st.bavail * st.bsize
    const need = 4 * opts.fileSize + parseSize('1G')
    if (free < need) throw new Error(`${os.tmpdir()} has ${formatSize(free)} free; this run needs about ${formatSize(need)} (lower --size)`)
    await env.setUp()
    const { server, client } = env
    results.volume = { name: VOLUME, id: env.volumeId, size: opts.volumeSize, repl: 2, server: { node: server.node.nodeId, mountpoint: server.mountpoint, fstype: server.fstype }, client: { node: client.node.nodeId, mountpoint: client.mountpoint, fstype: client.fstype } }
    for (const m of [server, client]) {
      progress(`laying out ${formatSize(opts.fileSize)} through the ${m.id}: ${m.file}`)
      const r = await layOut(m.file, opts.fileSize, seqTimeout())
      results.layout[m.id] = r
      progress(`  ${r.mbPerSecond.toFixed(0)} MB/s (first write, direct)`)
      checkDaemons()
    }
    for (let round = 1; round <= opts.rounds; round++) {
      for (const job of JOBS) {
        for (const m of [server, client]) {
          await (job.dropCaches ? dropCaches() : syncAll())
          bail()
          const at = new Date().toISOString()
          const r = await job.run(m, round)
          bail()
          checkDaemons()
          results.runs.push({ round, job: job.id, target: m.id, startedAt: at, ...r })
          progress(`round ${round}/${opts.rounds} ${job.label} ${m.id}: ${fmt(r.value)} ${job.unit} (${r.seconds.toFixed(1)} s)`)
        }
      }
    }
    const info = await new ApiClient(server.node.apiUrl).inspectVolume(VOLUME)
    results.volumeAfter = { degraded: info.degraded, replicas: info.replicas, sharing: info.sharing }
    if (info.degraded) warnings.push(`${VOLUME} ended degraded: the figures may be those of one replica`)
    if (info.sharing?.server !== server.node.nodeId) warnings.push(`${VOLUME} ended served by ${info.sharing?.server ?? 'nobody'}: the server changed during the run`)
    results.completed = true
  } catch (err) {
    if (signalled) return never()
    results.error = err instanceof Error ? err.message : String(err)
    progress(`FAILED: ${results.error}`)
    warnings.push(`the run failed: ${results.error.split('\n')[0]!}`)
    if (err instanceof FioError && err.output) progress(`fio's output:\n${err.output}`)
    results.logs = saveLogs(env?.cluster, `shared-${stamp}`, err instanceof FioError ? err.output : undefined)
    for (const f of results.logs) progress(`saved ${f}`)
  }
  for (const n of env.cluster?.nodes ?? []) {
    const counts = logLevels(n.logs())
    results.daemonLogs[n.nodeId] = counts
    if (counts.errors > 0) warnings.push(`pxd ${n.nodeId} logged ${counts.errors} error line(s) (first in the JSON's daemonLogs)`)
    if (counts.warnings > 0) warnings.push(`pxd ${n.nodeId} logged ${counts.warnings} warning line(s)`)
  }
  for (const w of warnings) progress(`warning: ${w}`)
  const problems = await env.teardown()
  if (signalled) return never()
  for (const p of problems) progress(`cleanup: ${p}`)

  results.summary = summarize(results.runs)
  results.finishedAt = new Date().toISOString()
  machine.loadAverage.end = os.loadavg()
  mkdirSync(RESULTS_DIR, { recursive: true })
  const file = path.join(RESULTS_DIR, `shared-${stamp}.json`)
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  progress(`wrote ${path.relative(process.cwd(), file) || file}`)
  const head = `Machine: ${machine.cores} cores, ${machine.cpuModel}, ${machine.kernel}, Node ${machine.node}, ${machine.fio}, pxd ${machine.pxdCommit}, ${results.startedAt}`
  process.stdout.write('\n' + renderMarkdown(head, results.summary, warnings) + '\n')
  return results.completed ? 0 : 1
}

function summarize(runs: RunRecord[]): Row[] {
  const rows: Row[] = []
  for (const j of JOBS) {
    const of = (t: Side) => runs.filter((r) => r.job === j.id && r.target === t).sort((a, b) => a.round - b.round).map((r) => r.value)
    const v = { server: of('server'), client: of('client') }
    if (v.server.length === 0 || v.client.length === 0) continue
    const med = { server: median(v.server), client: median(v.client) }
    const ratio = med.client / med.server
    rows.push({ job: j.id, label: j.label, unit: j.unit, runs: v, median: med, ratio, goal: j.goal, met: ratio >= j.goal })
  }
  return rows
}

function renderMarkdown(head: string, rows: Row[], warnings: string[]): string {
  const out = [head, '', `Shared volume: repl=2 (both replicas on this machine's disk), ${formatSize(opts.volumeSize)}, ext4; node-a mounted it first and serves it ` +
    `(ext4 at its mountpoint), node-b mounts the FUSE client (fuse.pxd-shared), which forwards every file operation to node-a over the loopback peer link. ` +
    `Medians of ${opts.rounds} interleaved round(s) (server, client per job). Seq jobs: one buffered pass over a ${formatSize(opts.fileSize)} file (write with end_fsync, read after drop_caches); ` +
    `rand write: the main bench's job (direct, libaio, ${opts.runtime} s after ${opts.ramp} s); small files: ${opts.files} files. "client / server" = client median / server median.`, '']
  if (rows.length > 0) {
    out.push('| shared volume | server (node-a, ext4) | client (node-b, FUSE) | client / server | target | |', '| --- | ---: | ---: | ---: | --- | --- |')
    for (const r of rows) out.push(`| ${r.label}, ${r.unit} | ${fmt(r.median.server)} | ${fmt(r.median.client)} | ${r.ratio.toFixed(2)} | >= ${r.goal.toFixed(2)} | ${r.met ? 'met' : '**missed**'} |`)
    out.push('')
    if (opts.rounds > 1) {
      out.push('Per-round figures (round 1 / 2 / ...):', '', '| shared volume | server | client |', '| --- | --- | --- |')
      for (const r of rows) out.push(`| ${r.label}, ${r.unit} | ${r.runs.server.map(fmt).join(' / ')} | ${r.runs.client.map(fmt).join(' / ')} |`)
      out.push('')
    }
  }
  for (const w of warnings) out.push(`> **warning:** ${w}`, '')
  return out.join('\n')
}

function checkDaemons(): void {
  const dead = env?.cluster?.nodes.find((n) => n.child.exitCode !== null || n.child.signalCode !== null)
  if (dead) throw new Error(`pxd ${dead.nodeId} (pid ${dead.pid}) exited (${dead.child.exitCode ?? dead.child.signalCode}); last log lines:\n${dead.logs().split('\n').slice(-30).join('\n')}`)
}

function bail(): void {
  if (signalled) throw new Error('interrupted')
}

/** Daemon, etcd and fio output next to the results, for a failed run. */
function installSignalHandlers(): void {
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) return progress(`${signal}: still cleaning up, please wait`)
    signalled = true
    progress(`${signal}: stopping the job, unmounting, stopping the cluster`)
    if (child?.pid !== undefined && child.exitCode === null) child.kill('SIGKILL')
    void stopRunningFio().then(() => env?.teardown() ?? []).then((problems) => {
      for (const p of problems) progress(`cleanup: ${p}`)
      progress('cleaned up; no results written')
      process.exit(130)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}

/** The signal handler exits once cleanup is done; the main flow waits for that. */
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
