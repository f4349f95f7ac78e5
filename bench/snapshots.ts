/**
 * `npm run bench:snapshots`: what snapshots cost a volume's writes, and how long one takes.
 * pxd and etcd on loopback, one volume (ext4, repl 1 unless --repl 2 with a second node).
 * 1. The raw disk under the data dir: fio 4 KiB random write (QD16) and 1 MiB seq write,
 * direct, on a laid-out file. 2. The same two on a laid-out file in the volume with no
 * snapshot, with 1, and with 8 (each of the 8 after a few seconds of random writes, so every
 * layer holds blocks): the ratios with/without are the figures (target >= 0.8). 3. Snapshots
 * taken while fio writes at random, each call timed. Markdown on stdout, progress on stderr,
 * bench/results/snapshots-<timestamp>.json. It asserts nothing: 0 when the run completes, 1
 * when it could not, 2 on bad flags, 130 on a signal.
 */
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ApiClient } from '../src/api/client'
import { formatSize, parseSize } from '../src/util/size'
import { startCluster, type Cluster } from '../test/helpers/cluster'
import { leftoversUnder } from '../test/helpers/daemon'
import { MiB, pluginOk } from '../test/helpers/volume-io'
import { layOut, runWorkload, stopRunningFio, syncAll, WORKLOADS, type FioResult } from './fio'
import { UsageError } from './args'
import { cpuBusy, exitOnSignal, fileSystemOf, flagsOrExit, logLevels, machine, machineLine, RESULTS_DIR, saveLogs } from './host'
import { fmt } from './report'
import { median } from './stats'

const GOAL = 0.8
/** Longer than the block store's intent idle time (native/intent_map.cc). */
const INTENT_IDLE_MS = 6000
const MOUNT_ID = 'pxd-bench-snapshots'
const VOLUME = 'bench-snapshots'
const progress = (line: string) => process.stderr.write(`[bench:snapshots] ${line}\n`)
const workload = (id: string) => WORKLOADS.find((w) => w.id === id)!

const USAGE = `usage: npm run bench:snapshots -- [flags]

Random 4 KiB write IOPS and 1 MiB seq write on a volume with 0, 1 and 8 snapshots (ratios
to 0), beside the raw disk, and the time to take a snapshot while fio writes.

  --size SIZE      the volume                                   (default 4G)
  --file SIZE      the fio file in it (and on the raw disk)     (default 1G)
  --runtime SECS   each fio run                                 (default 10)
  --repl N         1, or 2 (a second node)                      (default 1)
  -h, --help       this text
`

interface Options { size: number; file: number; runtime: number; repl: number }

function parseArgs(argv: string[]): Options | null {
  const o: Options = { size: parseSize('4G'), file: parseSize('1G'), runtime: 10, repl: 1 }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '-h' || arg === '--help') return null
    const v = argv[++i]
    if (v === undefined) throw new UsageError(`${arg} needs a value`)
    if (arg === '--size' || arg === '--file') {
      try { o[arg === '--size' ? 'size' : 'file'] = parseSize(v) } catch (err) { throw new UsageError(`${arg}: ${(err as Error).message}`) }
    } else if (arg === '--runtime' || arg === '--repl') {
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1 || (arg === '--repl' && n > 2) || n > 600) throw new UsageError(`${arg} must be a whole number${arg === '--repl' ? ' (1 or 2)' : ' of seconds up to 600'}`)
      o[arg === '--runtime' ? 'runtime' : 'repl'] = n
    } else throw new UsageError(`unknown flag ${arg}`)
  }
  if (o.file + 512 * MiB > o.size) throw new UsageError(`--file must leave 512M of --size for ext4 (at most ${formatSize(o.size - 512 * MiB)})`)
  return o
}

interface Round { snapshots: number; randWrite: FioResult; seqWrite: FioResult }

let cluster: Cluster | undefined
let mounted = false
let interrupted = () => false
let teardownRun: Promise<string[]> | undefined

function teardown(): Promise<string[]> {
  teardownRun ??= (async () => {
    const problems: string[] = []
    const a = cluster?.nodes[0]
    const api = a && new ApiClient(a.apiUrl)
    try {
      if (a && mounted) await pluginOk(a, '/VolumeDriver.Unmount', { Name: VOLUME, ID: MOUNT_ID })
      for (const s of api ? await api.listSnapshots(VOLUME).catch(() => []) : []) await api!.deleteSnapshot(s.name)
      if (api) await api.deleteVolume(VOLUME).catch(() => undefined)
    } catch (err) {
      problems.push((err as Error).message)
    }
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
  const opts = flags
  interrupted = exitOnSignal(progress, 'stopping fio, cleaning up', teardown)
  const startedAt = new Date()
  const stamp = startedAt.toISOString().replace(/:/g, '-')
  const warnings: string[] = []
  const m = machine(startedAt)
  m.busyBefore = await cpuBusy(2000)
  if (m.busyBefore > 0.25) warnings.push(`the machine was ${Math.round(m.busyBefore * 100)}% busy in the 2 s before the run: other work skews the figures`)
  if (process.getuid?.() !== 0 || m.fio === 'not installed') return (progress('cannot run: it needs root (FUSE, loop devices, mounts) and fio'), 1)
  const results = {
    schema: 1, startedAt: startedAt.toISOString(), finishedAt: '', completed: false, error: undefined as string | undefined, machine: m, options: opts!, goal: GOAL,
    disk: undefined as { randWrite: FioResult; seqWrite: FioResult } | undefined, rounds: [] as Round[], snapshotMs: { idle: [] as number[], underLoad: [] as number[] },
    deleteMs: [] as number[], daemonLogs: {} as Record<string, ReturnType<typeof logLevels>>, warnings, logs: [] as string[],
  }
  // Each job starts with the host's dirty pages written back: the one before must not slow it down.
  const run = async (id: string, file: string) => {
    await syncAll()
    return runWorkload(workload(id), { file, fileSize: opts.file, runtime: opts.runtime, ramp: 1, timeoutSeconds: opts.runtime + 180 })
  }
  try {
    const nodes = opts.repl === 2 ? ['node-a', 'node-b'] : ['node-a']
    progress(`starting etcd and pxd ${nodes.join(', ')} on loopback`)
    cluster = await startCluster(nodes)
    const a = cluster.nodes[0]!
    const api = new ApiClient(a.apiUrl)
    m.dataFs = fileSystemOf(a.dataDir)

    const raw = path.join(a.dataDir, 'pxd-bench-disk.fio')
    progress(`raw disk: ${formatSize(opts.file)} file in ${a.dataDir}`)
    await layOut(raw, opts.file, 600)
    await syncAll()
    results.disk = { randWrite: await run('randWrite', raw), seqWrite: await run('seqWrite', raw) }
    rmSync(raw, { force: true })
    progress(`  rand write ${fmt(results.disk.randWrite.value)} IOPS, seq write ${fmt(results.disk.seqWrite.value)} MB/s`)

    await pluginOk(a, '/VolumeDriver.Create', { Name: VOLUME, Opts: { size: `${opts.size}B`, repl: String(opts.repl) } })
    const mp = (await pluginOk(a, '/VolumeDriver.Mount', { Name: VOLUME, ID: MOUNT_ID })).Mountpoint as string
    mounted = true
    const file = path.join(mp, 'bench.fio')
    await layOut(file, opts.file, 600)
    const round = async (snapshots: number) => {
      // Every round starts with the volume's write-intent map cleared, as the new live files
      // of a snapshot start: idle past its 5 s, then a sync (a flush) clears the marks.
      await new Promise((resolve) => setTimeout(resolve, INTENT_IDLE_MS))
      await syncAll()
      const seqWrite = await run('seqWrite', file)
      const r: Round = { snapshots, randWrite: await run('randWrite', file), seqWrite }
      results.rounds.push(r)
      progress(`  ${snapshots} snapshot(s): rand write ${fmt(r.randWrite.value)} IOPS, seq write ${fmt(r.seqWrite.value)} MB/s`)
    }
    const snap = async (name: string, into: number[]) => {
      const t0 = performance.now()
      await api.createSnapshot(VOLUME, name)
      into.push(performance.now() - t0)
    }
    await round(0)
    await snap('bench-snap-1', results.snapshotMs.idle)
    await round(1)
    for (let i = 2; i <= 8; i++) {
      await runWorkload(workload('randWrite'), { file, fileSize: opts.file, runtime: 3, ramp: 0, timeoutSeconds: 180 })
      await snap(`bench-snap-${i}`, results.snapshotMs.idle)
    }
    await round(8)

    progress(`snapshots while fio writes at random for ${3 * 5 + 5} s`)
    const load = runWorkload(workload('randWrite'), { file, fileSize: opts.file, runtime: 20, ramp: 0, timeoutSeconds: 200 })
    for (let i = 1; i <= 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5000))
      await snap(`bench-load-${i}`, results.snapshotMs.underLoad)
    }
    await load
    progress(`  ${results.snapshotMs.underLoad.map((ms) => `${fmt(ms)} ms`).join(', ')}`)
    await pluginOk(a, '/VolumeDriver.Unmount', { Name: VOLUME, ID: MOUNT_ID })
    mounted = false
    for (const s of await api.listSnapshots(VOLUME)) {
      const t0 = performance.now()
      await api.deleteSnapshot(s.name)
      results.deleteMs.push(performance.now() - t0)
    }
    results.completed = true
  } catch (err) {
    if (interrupted()) return new Promise<number>(() => undefined)
    results.error = err instanceof Error ? err.message : String(err)
    progress(`FAILED: ${results.error}`)
    warnings.push(`the run failed: ${results.error.split('\n')[0]!}`)
    results.logs = saveLogs(cluster, `snapshots-${stamp}`)
  }
  for (const n of cluster?.nodes ?? []) {
    const counts = (results.daemonLogs[n.nodeId] = logLevels(n.logs()))
    if (counts.errors > 0) warnings.push(`pxd ${n.nodeId} logged ${counts.errors} error line(s) (first in the JSON's daemonLogs)`)
  }
  for (const p of await teardown()) progress(`cleanup: ${p}`)
  results.finishedAt = new Date().toISOString()
  m.loadAverage.end = os.loadavg()
  mkdirSync(RESULTS_DIR, { recursive: true })
  const out = path.join(RESULTS_DIR, `snapshots-${stamp}.json`)
  writeFileSync(out, JSON.stringify(results, null, 2) + '\n')
  progress(`wrote ${path.relative(process.cwd(), out) || out}`)
  process.stdout.write('\n' + render(machineLine(m), opts!, results) + '\n')
  return results.completed ? 0 : 1
}

function render(head: string, o: Options, r: { disk?: { randWrite: FioResult; seqWrite: FioResult } | undefined; rounds: Round[]; snapshotMs: { idle: number[]; underLoad: number[] }; deleteMs: number[]; warnings: string[] }): string {
  const out = [head, '', `pxd on loopback, a ${formatSize(o.size)} repl=${o.repl} ext4 volume; fio on a ${formatSize(o.file)} laid-out file, direct, ${o.runtime} s per run ` +
    '(rand write: 4 KiB, libaio, QD16; seq write: 1 MiB, psync, end_fsync). Each of the 8 snapshots after 3 s of random writes, so every layer holds blocks.', '']
  const none = r.rounds.find((x) => x.snapshots === 0)
  if (none && r.disk) {
    out.push('| snapshots | rand write IOPS | vs none | target | seq write MB/s | vs none | target |', '| ---: | ---: | ---: | --- | ---: | ---: | --- |')
    const goal = (ratio: number) => `>= ${GOAL} ${ratio >= GOAL ? 'met' : '**missed**'}`
    for (const x of r.rounds) {
      const [rw, sw] = [x.randWrite.value / none.randWrite.value, x.seqWrite.value / none.seqWrite.value]
      out.push(`| ${x.snapshots} | ${fmt(x.randWrite.value)} | ${rw.toFixed(2)} | ${x.snapshots ? goal(rw) : ''} | ${fmt(x.seqWrite.value)} | ${sw.toFixed(2)} | ${x.snapshots ? goal(sw) : ''} |`)
    }
    out.push(`| raw disk | ${fmt(r.disk.randWrite.value)} | | | ${fmt(r.disk.seqWrite.value)} | | |`, '')
  }
  const ms = (xs: number[]) => (xs.length ? `median ${fmt(median(xs))} ms, max ${fmt(Math.max(...xs))} ms (${xs.length})` : '-')
  out.push('| snapshot of the volume | time |', '| --- | --- |', `| idle (1-8 above) | ${ms(r.snapshotMs.idle)} |`, `| while fio writes at random | ${ms(r.snapshotMs.underLoad)} |`, `| delete, unmounted | ${ms(r.deleteMs)} |`, '')
  for (const w of r.warnings) out.push(`> **warning:** ${w}`, '')
  return out.join('\n')
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    progress(`FAILED: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    for (const p of await teardown()) progress(`cleanup: ${p}`)
    process.exit(1)
  },
)
