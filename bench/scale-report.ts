/**
 * The scale bench's results (bench/scale.ts) and their Markdown: mount times, memory per
 * idle mounted volume, aggregate write MB/s against the host, targets met or missed.
 */
import { formatSize } from '../src/util/size'
import type { CpuFigure } from './cpu'
import type { Machine } from './host'
import { fmt } from './report'
import type { ScaleOptions } from './scale-args'
import { median } from './stats'

/** Targets of the issue: MiB per idle mounted volume at most, pxd / host at 16 jobs at least. */
export const SCALE_GOALS = { mibPerVolume: 8, writeRatio: 0.7, writeRatioJobs: 16 }

export interface MemorySample {
  /** The median read: VmRSS of the daemon and its children, bytes. */
  bytes: number
  samples: number[]
  /** Per process of the median read. */
  processes: Array<{ pid: number; ppid: number; bytes: number }>
}

export interface WriteRun {
  round: number
  jobs: number
  target: 'host' | 'pxd'
  /** Sum of the jobs' MB/s (10^6 bytes). */
  mbPerSecond: number
  perJob: number[]
  /** Mean of the jobs' measured seconds. */
  seconds: number
  /** pxd's CPU while the jobs measured (on host runs: pxd idle). */
  cpu: CpuFigure
}

export interface ScaleResults {
  schema: 1
  startedAt: string
  finishedAt: string
  completed: boolean
  error?: string
  machine: Machine
  options: ScaleOptions
  createMs: number[]
  /** Each volume's first mount (makes its ext4), in order. */
  mountMs: number[]
  /** Seconds from the last mount until the kernel's ext4lazyinit thread was gone. */
  lazyInitSeconds: number
  memory: { none?: MemorySample; mounted?: MemorySample; afterWrites?: MemorySample }
  /** First write of the files, all at once: MB/s. */
  layout: { host?: number; pxd?: number }
  runs: WriteRun[]
  daemonLogs: Record<string, { warnings: number; errors: number; firstErrors: string[] }>
  warnings: string[]
  logs: string[]
}

const MiB = 2 ** 20
const verdict = (met: boolean) => (met ? 'met' : '**missed**')

export function renderScale(head: string, r: ScaleResults): string {
  const o = r.options
  const out = [head, '',
    `One pxd node and etcd on loopback; ${o.volumes} repl=1 volumes of ${formatSize(o.volumeSize)} (ext4) created and mounted one after another through the plugin socket. ` +
    `Memory: VmRSS of pxd and its children, median of ${o.settle} reads 1 s apart. Writes: fio, one job per volume (or per host file in the data dir), ` +
    `1 MiB, psync, direct, end_fsync, ${o.runtime} s after a ${o.ramp} s ramp, on a laid-out ${formatSize(o.fileSize)} file each; host and pxd interleaved, median of ${o.rounds} round(s). ` +
    `First write of the files (all at once): host ${fmt(r.layout.host ?? Number.NaN)} MB/s, pxd ${fmt(r.layout.pxd ?? Number.NaN)} MB/s.`, '']
  out.push('| figure | value | target |', '| --- | ---: | --- |')
  if (r.mountMs.length > 0) {
    out.push(`| mount (first, with mkfs), median of ${r.mountMs.length} | ${fmt(median(r.mountMs))} ms | |`, `| mount, max | ${fmt(Math.max(...r.mountMs))} ms | |`,
      `| background inode table init after the last mount (ext4lazyinit) | ${fmt(r.lazyInitSeconds)} s | |`)
  }
  const { none, mounted, afterWrites } = r.memory
  if (none) out.push(`| pxd RSS, no volume | ${fmt(none.bytes / MiB)} MiB | |`)
  if (mounted) out.push(`| pxd RSS, ${r.mountMs.length} idle mounted volumes | ${fmt(mounted.bytes / MiB)} MiB | |`)
  if (none && mounted && r.mountMs.length > 0) {
    const per = (mounted.bytes - none.bytes) / MiB / r.mountMs.length
    out.push(`| per idle mounted volume | ${fmt(per)} MiB | <= ${SCALE_GOALS.mibPerVolume} MiB ${verdict(per <= SCALE_GOALS.mibPerVolume)} |`)
  }
  if (afterWrites) out.push(`| pxd RSS after the writes, idle again | ${fmt(afterWrites.bytes / MiB)} MiB | |`)
  out.push('')

  const counts = [...new Set(r.runs.map((x) => x.jobs))]
  if (counts.length > 0) {
    out.push('| volumes written at once | host MB/s | pxd MB/s | pxd / host | target | pxd CPU, s/GB |', '| ---: | ---: | ---: | ---: | --- | ---: |')
    for (const jobs of counts) {
      const of = (t: WriteRun['target']) => r.runs.filter((x) => x.jobs === jobs && x.target === t)
      const [host, pxd] = [median(of('host').map((x) => x.mbPerSecond)), median(of('pxd').map((x) => x.mbPerSecond))]
      const ratio = pxd / host
      const goal = jobs === SCALE_GOALS.writeRatioJobs ? `>= ${SCALE_GOALS.writeRatio} ${verdict(ratio >= SCALE_GOALS.writeRatio)}` : ''
      const cpu = median(of('pxd').map((x) => x.cpu.perUnit ?? Number.NaN))
      out.push(`| ${jobs} | ${fmt(host)} | ${fmt(pxd)} | ${ratio.toFixed(2)} | ${goal} | ${fmt(cpu)} |`)
    }
    if (!counts.includes(SCALE_GOALS.writeRatioJobs)) out.push('', `(no run at ${SCALE_GOALS.writeRatioJobs} volumes at once: the write target is not judged)`)
    out.push('')
    if (o.rounds > 1) {
      out.push('Per-round MB/s (round 1 / 2 / ...):', '', '| volumes at once | host | pxd |', '| ---: | --- | --- |')
      for (const jobs of counts) {
        const per = (t: WriteRun['target']) => r.runs.filter((x) => x.jobs === jobs && x.target === t).map((x) => fmt(x.mbPerSecond)).join(' / ')
        out.push(`| ${jobs} | ${per('host')} | ${per('pxd')} |`)
      }
      out.push('')
    }
  }
  for (const w of r.warnings) out.push(`> **warning:** ${w}`, '')
  return out.join('\n')
}
