/**
 * pxd's CPU cost of the main bench's write jobs: CPU seconds of every pxd daemon of the
 * cluster and their child processes (bench/proc.ts) while one fio job measures, per GB
 * written (seq write) and per 100k writes (rand write), shown beside the throughput.
 *
 * The window opens when fio's ramp ends (a timer from the job's start, so it opens early
 * by fio's own start-up, a few ms) and closes when fio has exited (its end_fsync
 * included): the span that fio's byte and I/O counts cover. The daemons of every node are
 * counted for every target, so the host column is what pxd spends with nothing to do
 * (its heartbeats, etcd leases), the floor under the volume columns.
 */
import type { FioResult, WorkloadId } from './fio'
import { treeCpuSeconds } from './proc'
import { fmt, type RunRecord } from './report'
import { median } from './stats'
import type { TargetId } from './targets'

export interface CpuFigure {
  /** CPU seconds of the daemons and their children in the window. */
  seconds: number
  /** seconds per unit of work (see CPU_UNITS); absent for jobs without one. */
  perUnit?: number
}

interface CpuUnit {
  /** The table's row: the job and its throughput unit. */
  row: string
  label: string
  /** Units of work fio measured: GB (10^9 bytes) or 100k I/Os. */
  of: (r: FioResult) => number
}

/** The jobs whose CPU cost per unit of work is reported. */
export const CPU_UNITS: Partial<Record<WorkloadId, CpuUnit>> = {
  seqWrite: { row: 'seq write 1 MiB, MB/s', label: 's/GB', of: (r) => (r.value * 1e6 * r.seconds) / 1e9 },
  randWrite: { row: 'rand write 4 KiB QD16, IOPS', label: 's/100k writes', of: (r) => (r.value * r.seconds) / 1e5 },
}

/** CPU seconds per unit of work; NaN when no work was measured. */
export function perUnit(cpuSeconds: number, units: number): number {
  return units > 0 ? cpuSeconds / units : Number.NaN
}

export interface CpuWindow {
  /** Close the window (call once fio has exited) and work out the figure for its result. */
  finish(workload: WorkloadId, result: FioResult): CpuFigure
}

/** Open a window over `pids` and their children that starts `delaySeconds` from now (fio's ramp). */
export function cpuWindow(pids: number[], delaySeconds: number): CpuWindow {
  let start = treeCpuSeconds(pids)
  const timer = setTimeout(() => { start = treeCpuSeconds(pids) }, delaySeconds * 1000).unref()
  return {
    finish(workload, result) {
      clearTimeout(timer)
      const seconds = treeCpuSeconds(pids) - start
      const unit = CPU_UNITS[workload]
      return unit ? { seconds, perUnit: perUnit(seconds, unit.of(result)) } : { seconds }
    },
  }
}

const TARGETS: Array<[TargetId, string]> = [['host', 'host'], ['repl1', 'repl=1'], ['repl2', 'repl=2']]

/**
 * A Markdown table: per write job and target, the median throughput and, beside it, the
 * median CPU per unit of work over the rounds. Empty when no run has a CPU figure.
 */
export function renderCpuTable(runs: RunRecord[]): string[] {
  const rows: string[] = []
  for (const [workload, unit] of Object.entries(CPU_UNITS) as Array<[WorkloadId, CpuUnit]>) {
    const cells = TARGETS.map(([t]) => {
      const mine = runs.filter((r) => r.workload === workload && r.target === t && r.cpu?.perUnit !== undefined)
      return mine.length === 0 ? ['-', '-'] : [fmt(median(mine.map((r) => r.result.value))), fmt(median(mine.map((r) => r.cpu!.perUnit!)))]
    })
    if (cells.every(([v]) => v === '-')) continue
    rows.push(`| ${unit.row} | ${cells.map(([v, c]) => `${v} | ${c} ${unit.label}`).join(' | ')} |`)
  }
  if (rows.length === 0) return []
  return [
    'CPU of all pxd processes (every daemon of the cluster and its children) while each job measured, median of the rounds:',
    '',
    `| workload | ${TARGETS.map(([, l]) => `${l} | pxd CPU`).join(' | ')} |`,
    `| --- | ${TARGETS.map(() => '---: | ---:').join(' | ')} |`,
    ...rows,
    '',
  ]
}
