/** The benches' /proc arithmetic: a process tree's CPU ticks and memory, CPU per unit of work. */
import test from 'ava'
import { CPU_UNITS, perUnit, renderCpuTable } from '../../bench/cpu'
import { parseStat, parseVmRss, treeOf, treeTicks, type ProcStat } from '../../bench/proc'
import type { RunRecord } from '../../bench/report'

// pid 7 "(node (pxd) x)": state S, ppid 1, then fields 5-13, utime 120, stime 30, cutime 5, cstime 2.
const STAT = '7 (node (pxd) x) S 1 7 7 0 -1 4194304 100 0 0 0 120 30 5 2 20 0 11 0 500 1000 200 18446744073709551615'

test('parseStat counts fields from the last parenthesis and sums utime, stime, cutime, cstime', (t) => {
  t.deepEqual(parseStat(STAT), { pid: 7, ppid: 1, ticks: 157 })
})

test('parseStat refuses what is not a stat line', (t) => {
  t.throws(() => parseStat('no such thing'))
})

const all: ProcStat[] = [
  { pid: 1, ppid: 0, ticks: 1000 },
  { pid: 10, ppid: 1, ticks: 50 }, // daemon a
  { pid: 11, ppid: 10, ticks: 7 }, // its share executor
  { pid: 12, ppid: 11, ticks: 3 }, // a grandchild
  { pid: 20, ppid: 1, ticks: 40 }, // daemon b
  { pid: 30, ppid: 1, ticks: 99 }, // fio, not pxd's
]

test('treeOf takes the roots and every descendant, nothing else', (t) => {
  t.deepEqual(treeOf([10, 20], all).sort((a, b) => a - b), [10, 11, 12, 20])
  t.deepEqual(treeOf([99], all), [], 'a root that is gone has no tree')
})

test('treeTicks sums the tree once, even when a root is also a descendant', (t) => {
  t.is(treeTicks([10, 20], all), 100)
  t.is(treeTicks([10, 11], all), 60)
})

test('parseVmRss reads kB as bytes; a zombie without VmRSS counts 0', (t) => {
  t.is(parseVmRss('Name:\tnode\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\nThreads:\t11\n'), 81234 * 1024)
  t.is(parseVmRss('Name:\tnode\nState:\tZ (zombie)\n'), 0)
})

test('CPU per GB and per 100k writes from fio figures', (t) => {
  // 500 MB/s for 8 s = 4 GB; 2 CPU seconds -> 0.5 s/GB.
  t.is(perUnit(2, CPU_UNITS.seqWrite!.of({ value: 500, seconds: 8 })), 0.5)
  // 25k IOPS for 8 s = 200k writes; 3 CPU seconds -> 1.5 s per 100k.
  t.is(perUnit(3, CPU_UNITS.randWrite!.of({ value: 25_000, seconds: 8 })), 1.5)
  t.true(Number.isNaN(perUnit(1, 0)))
})

test('renderCpuTable puts the median CPU beside the median throughput, per target', (t) => {
  const run = (round: number, target: RunRecord['target'], value: number, cpu: number): RunRecord => ({
    round, workload: 'seqWrite', target, startedAt: '', result: { value, seconds: 8 }, cpu: { seconds: 0, perUnit: cpu },
  })
  const lines = renderCpuTable([
    run(1, 'host', 1000, 0.01), run(2, 'host', 900, 0.03), run(3, 'host', 1100, 0.02),
    run(1, 'repl1', 400, 1.5), run(1, 'repl2', 200, 3),
  ])
  t.true(lines.includes('| seq write 1 MiB, MB/s | 1000 | 0.020 s/GB | 400 | 1.50 s/GB | 200 | 3.00 s/GB |'), lines.join('\n'))
  t.false(lines.some((l) => l.startsWith('| rand write')), 'no row for a job without CPU figures')
  t.deepEqual(renderCpuTable([]), [])
})
