/**
 * From per-run numbers to the summary (medians, ratios to the host, targets met or
 * missed), and from the summary to Markdown.
 */
import type { CpuFigure } from './cpu'
import type { CrcResults } from './crc'
import type { FioResult, WorkloadId } from './fio'
import { median } from './stats'
import type { AnyTargetId, TargetId } from './targets'

export interface RunRecord {
  round: number
  workload: WorkloadId
  target: AnyTargetId
  startedAt: string
  result: FioResult
  /** pxd's CPU while the job measured (bench/cpu.ts). */
  cpu?: CpuFigure
}

export interface Goal {
  /** '>=': the ratio to host must be at least `value`; '<=': the multiple of host at most. */
  op: '>=' | '<='
  value: number
}

export interface GoalOutcome extends Goal {
  met: boolean
}

export type VolumeTargetId = Exclude<TargetId, 'host'>

/** One line of the table: one figure of one workload on every target. */
export interface SummaryRow {
  key: string
  label: string
  unit: string
  better: 'higher' | 'lower'
  /** Per-round values, in round order. */
  runs: Record<TargetId, number[]>
  median: Record<TargetId, number>
  /** median(volume) / median(host): a fraction of host for throughput, a multiple for latency. */
  ratio: Record<VolumeTargetId, number>
  goal: Partial<Record<VolumeTargetId, GoalOutcome>>
}

export interface RowSpec {
  key: string
  workload: WorkloadId
  label: string
  unit: string
  better: 'higher' | 'lower'
  pick: (r: FioResult) => number
  goals: Partial<Record<VolumeTargetId, Goal>>
}

/** The figures of the table and their targets (from the issue). */
export const ROWS: RowSpec[] = [
  { key: 'seqWrite', workload: 'seqWrite', label: 'seq write 1 MiB', unit: 'MB/s', better: 'higher', pick: (r) => r.value, goals: { repl1: { op: '>=', value: 0.4 }, repl2: { op: '>=', value: 0.25 } } },
  { key: 'seqRead', workload: 'seqRead', label: 'seq read 1 MiB', unit: 'MB/s', better: 'higher', pick: (r) => r.value, goals: { repl1: { op: '>=', value: 0.5 }, repl2: { op: '>=', value: 0.5 } } },
  { key: 'randWrite', workload: 'randWrite', label: 'rand write 4 KiB QD16', unit: 'IOPS', better: 'higher', pick: (r) => r.value, goals: { repl1: { op: '>=', value: 0.1 }, repl2: { op: '>=', value: 0.07 } } },
  { key: 'randRead', workload: 'randRead', label: 'rand read 4 KiB QD16', unit: 'IOPS', better: 'higher', pick: (r) => r.value, goals: {} },
  { key: 'syncWriteP50', workload: 'syncWrite', label: '4 KiB write+fsync p50', unit: 'ms', better: 'lower', pick: (r) => latency(r).p50 / 1000, goals: {} },
  { key: 'syncWriteP99', workload: 'syncWrite', label: '4 KiB write+fsync p99', unit: 'ms', better: 'lower', pick: (r) => latency(r).p99 / 1000, goals: { repl1: { op: '<=', value: 2.5 }, repl2: { op: '<=', value: 4 } } },
]

export const CRC_GOAL_GBPS = 8

function latency(r: FioResult) {
  if (!r.latency) throw new Error('a write+fsync run without latencies')
  return r.latency
}

const TARGET_IDS: TargetId[] = ['host', 'repl1', 'repl2']
const VOLUME_IDS: VolumeTargetId[] = ['repl1', 'repl2']

export function summarize(runs: RunRecord[]): SummaryRow[] {
  const rows: SummaryRow[] = []
  for (const spec of ROWS) {
    const values = {} as Record<TargetId, number[]>
    for (const t of TARGET_IDS) {
      values[t] = runs.filter((r) => r.workload === spec.workload && r.target === t).sort((a, b) => a.round - b.round).map((r) => spec.pick(r.result))
    }
    if (TARGET_IDS.some((t) => values[t].length === 0)) continue
    const med = {} as Record<TargetId, number>
    for (const t of TARGET_IDS) med[t] = median(values[t])
    const ratio = { repl1: med.repl1 / med.host, repl2: med.repl2 / med.host }
    const goal: Partial<Record<VolumeTargetId, GoalOutcome>> = {}
    for (const v of VOLUME_IDS) {
      const g = spec.goals[v]
      if (g) goal[v] = { ...g, met: g.op === '>=' ? ratio[v] >= g.value : ratio[v] <= g.value }
    }
    rows.push({ key: spec.key, label: spec.label, unit: spec.unit, better: spec.better, runs: values, median: med, ratio, goal })
  }
  return rows
}

export interface MarkdownInput {
  machineLine: string
  setupLine: string
  rows: SummaryRow[]
  crc: CrcResults | undefined
  /** The CPU table's lines (bench/cpu.ts), after the main table. */
  cpu: string[]
  warnings: string[]
}

export function renderMarkdown(input: MarkdownInput): string {
  const out: string[] = []
  out.push(input.machineLine, '', input.setupLine, '')
  if (input.rows.length > 0) {
    out.push(
      '| workload | host | repl=1 | repl=2 | repl=1 vs host | target | repl=2 vs host | target |',
      '| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |',
    )
    for (const row of input.rows) {
      const cells = [
        `${row.label}, ${row.unit}`,
        fmt(row.median.host), fmt(row.median.repl1), fmt(row.median.repl2),
        fmtRatio(row, 'repl1'), fmtGoal(row.goal.repl1),
        fmtRatio(row, 'repl2'), fmtGoal(row.goal.repl2),
      ]
      out.push(`| ${cells.join(' | ')} |`)
    }
    out.push('', ...input.cpu)
  }
  if (input.crc) {
    out.push(`| in process, ${input.crc.bufferBytes / 1024 / 1024} MiB buffer | GB/s | target |`, '| --- | ---: | --- |')
    for (const k of input.crc.kernels) {
      const goal = k.id === 'crc32c' && k.median !== null
        ? `>= ${CRC_GOAL_GBPS} GB/s ${k.median >= CRC_GOAL_GBPS ? 'met' : '**missed**'}`
        : ''
      out.push(`| ${k.label} | ${k.median === null ? `n/a (${k.note ?? 'not run'})` : fmt(k.median)} | ${goal} |`)
    }
    out.push('')
  }
  if (input.rows.length > 0) {
    const rounds = input.rows[0]!.runs.host.length
    if (rounds > 1) {
      out.push(`Per-round figures (round 1 / 2 / ...), the spread behind the medians:`, '')
      out.push('| workload | host | repl=1 | repl=2 |', '| --- | --- | --- | --- |')
      for (const row of input.rows) {
        out.push(`| ${row.label}, ${row.unit} | ${TARGET_IDS.map((t) => row.runs[t].map(fmt).join(' / ')).join(' | ')} |`)
      }
      out.push('')
    }
  }
  for (const w of input.warnings) out.push(`> **warning:** ${w}`, '')
  return out.join('\n')
}

/** Three significant figures at most, no exponent; integers from 100 up. */
export function fmt(n: number): string {
  if (!Number.isFinite(n)) return 'n/a'
  const a = Math.abs(n)
  if (a >= 100) return Math.round(n).toString()
  if (a >= 10) return n.toFixed(1)
  if (a >= 1) return n.toFixed(2)
  return n.toPrecision(2)
}

function fmtRatio(row: SummaryRow, t: VolumeTargetId): string {
  const r = row.ratio[t]
  if (!Number.isFinite(r)) return 'n/a'
  return row.better === 'lower' ? `${r.toFixed(2)}x` : r.toFixed(2)
}

function fmtGoal(g: GoalOutcome | undefined): string {
  if (!g) return ''
  const text = g.op === '<=' ? `<= ${g.value}x host` : `>= ${g.value.toFixed(2)}`
  return `${text} ${g.met ? 'met' : '**missed**'}`
}
