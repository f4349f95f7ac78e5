/** What the benches read about the machine they run on and the daemons they ran. */
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Cluster } from '../test/helpers/cluster'
import { REPO_ROOT } from '../test/helpers/paths'
import { UsageError } from './args'
import { stopRunningFio } from './fio'

/** Where every bench writes its results (and the logs of a failed run). */
export const RESULTS_DIR = path.join(REPO_ROOT, 'bench', 'results')

/**
 * For a failed run: each daemon's and etcd's log (and fio's output) next to the results, as
 * `<prefix>-<name>.log`, best effort. Returns the files written, relative to the working dir.
 */
export function saveLogs(cluster: Pick<Cluster, 'nodes' | 'etcd'> | undefined, prefix: string, fioOutput?: string): string[] {
  const saved: string[] = []
  mkdirSync(RESULTS_DIR, { recursive: true })
  const write = (name: string, text: string) => {
    const file = path.join(RESULTS_DIR, `${prefix}-${name}.log`)
    try {
      writeFileSync(file, text)
      saved.push(path.relative(process.cwd(), file) || file)
    } catch {
      // best effort
    }
  }
  for (const n of cluster?.nodes ?? []) write(n.nodeId, n.logs())
  if (cluster) write('etcd', cluster.etcd.logs())
  if (fioOutput) write('fio', fioOutput)
  return saved
}

/** A command's trimmed stdout, or undefined when it cannot run or fails. */
export function tryText(cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return undefined
  }
}

/** The file system a directory is on (findmnt). */
export function fileSystemOf(dir: string): { source: string; fstype: string; dir: string } {
  const [source = '?', fstype = '?'] = (tryText('findmnt', ['-n', '-o', 'SOURCE,FSTYPE', '--target', dir]) ?? '').split(/\s+/)
  return { source, fstype, dir }
}

/** Share (0-1) of all CPUs' time spent not idle (nor waiting for I/O) over `ms`, from /proc/stat. */
export async function cpuBusy(ms: number): Promise<number> {
  const sample = () => {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number)
    const total = fields.reduce((a, b) => a + b, 0)
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0)
    return { total, idle }
  }
  const a = sample()
  await new Promise((resolve) => setTimeout(resolve, ms))
  const b = sample()
  const total = b.total - a.total
  return total > 0 ? 1 - (b.idle - a.idle) / total : 0
}

/** Count pino's warn (40) and error/fatal (50+) lines in a daemon's output, with the first error lines. */
export function logLevels(text: string): { warnings: number; errors: number; firstErrors: string[] } {
  let warnings = 0
  let errors = 0
  const firstErrors: string[] = []
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue
    let level: unknown
    try {
      level = (JSON.parse(line) as { level?: unknown }).level
    } catch {
      continue
    }
    if (typeof level !== 'number') continue
    if (level >= 50) {
      errors++
      if (firstErrors.length < 5) firstErrors.push(line.slice(0, 2000))
    } else if (level >= 40) warnings++
  }
  return { warnings, errors, firstErrors }
}

export interface Machine {
  cores: number
  cpuModel: string
  kernel: string
  node: string
  date: string
  hostname: string
  /** 1/5/15-minute load averages when the run started and when it ended. */
  loadAverage: { start: number[]; end?: number[] }
  /** Share of all cores busy during 2 s before the run (0-1): other work on the machine. */
  busyBefore?: number
  fio: string
  pxdCommit: string
  /** The file system under the nodes' data dirs (where every replica is). */
  dataFs?: { source: string; fstype: string; dir: string }
}

export function machine(now: Date): Machine {
  const cpus = os.cpus()
  return {
    cores: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    date: now.toISOString(),
    hostname: os.hostname(),
    loadAverage: { start: os.loadavg() },
    fio: tryText('fio', ['--version']) ?? 'not installed',
    pxdCommit: tryText('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty']) ?? 'unknown',
  }
}

export function machineLine(m: Machine): string {
  const fsText = m.dataFs ? `, data dir on ${m.dataFs.source} (${m.dataFs.fstype})` : ''
  return `Machine: ${m.cores} cores, ${m.cpuModel}, ${m.kernel}, Node ${m.node}, ${m.fio}, pxd ${m.pxdCommit}${fsText}, ${m.date}`
}

/** The flags by `parse`, or the exit code: 0 once `usage` is printed for --help, 2 (usage on stderr) for a bad flag. */
export function flagsOrExit<T extends object>(parse: (argv: string[]) => T | null, usage: string): T | number {
  try {
    const parsed = parse(process.argv.slice(2))
    if (parsed === null) return (process.stdout.write(usage), 0)
    return parsed
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`${err.message}\n\n${usage}`)
    return 2
  }
}

/**
 * On SIGINT or SIGTERM: fio stops, `teardown` runs, what it could not undo is printed, and
 * the process exits 130; a second signal only says to wait. The bench's loops ask the
 * returned function whether to stop.
 */
export function exitOnSignal(progress: (line: string) => void, stopping: string, teardown: () => Promise<string[]>): () => boolean {
  let signalled = false
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => {
    if (signalled) return progress(`${signal}: still cleaning up, please wait`)
    signalled = true
    progress(`${signal}: ${stopping}`)
    void stopRunningFio().then(teardown).then((problems) => {
      for (const p of problems) progress(`cleanup: ${p}`)
      process.exit(130)
    })
  })
  return () => signalled
}
