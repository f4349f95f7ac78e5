/**
 * What the benches read about the pxd processes from /proc: the tree under each daemon
 * (the daemon and every process whose parent chain leads to it, such as the share
 * executor or a mkfs it runs), the CPU time of that tree and its resident memory.
 *
 * CPU time of a tree = utime + stime + cutime + cstime of every live process in it. A
 * child that exits is reaped by its parent, whose cutime/cstime then hold all of the
 * child's time, so the sum never drops when a child goes: the difference of two samples is
 * the CPU the tree used in between, children that came and went included.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { tryText } from './host'

export interface ProcStat {
  pid: number
  ppid: number
  /** utime + stime + cutime + cstime, clock ticks. */
  ticks: number
}

/** Clock ticks per second of the times in /proc/<pid>/stat. */
export const CLOCK_TICKS = Number(tryText('getconf', ['CLK_TCK'])) || 100

/**
 * One /proc/<pid>/stat line. The command name (field 2) is in parentheses and may hold
 * spaces and parentheses itself, so the fields are counted from the last ')'.
 */
export function parseStat(text: string): ProcStat {
  const close = text.lastIndexOf(')')
  const pid = Number(text.slice(0, text.indexOf('(')).trim())
  // After the name: state (3), ppid (4), ... utime (14), stime (15), cutime (16), cstime (17).
  const rest = text.slice(close + 1).trim().split(/\s+/)
  const field = (n: number) => Number(rest[n - 3])
  const ticks = field(14) + field(15) + field(16) + field(17)
  if (close < 0 || !Number.isInteger(pid) || !Number.isFinite(ticks)) throw new Error(`not a /proc/<pid>/stat line: ${text.slice(0, 120)}`)
  return { pid, ppid: field(4), ticks }
}

/** Every process now (those that vanish while being read are left out). */
export function processes(): ProcStat[] {
  const out: ProcStat[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      out.push(parseStat(readFileSync(`/proc/${name}/stat`, 'utf8')))
    } catch {
      // exited meanwhile
    }
  }
  return out
}

/** The pids of `roots` and all their descendants among `all`. */
export function treeOf(roots: number[], all: ProcStat[]): number[] {
  const children = new Map<number, number[]>()
  for (const p of all) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid])
  const live = new Set(all.map((p) => p.pid))
  const seen = new Set<number>()
  const stack = roots.filter((pid) => live.has(pid))
  while (stack.length > 0) {
    const pid = stack.pop()!
    if (seen.has(pid)) continue
    seen.add(pid)
    stack.push(...(children.get(pid) ?? []))
  }
  return [...seen]
}

/** Clock ticks of `roots` and their descendants (see the note at the top). */
export function treeTicks(roots: number[], all: ProcStat[]): number {
  const inTree = new Set(treeOf(roots, all))
  return all.reduce((sum, p) => sum + (inTree.has(p.pid) ? p.ticks : 0), 0)
}

/** CPU seconds used so far by `roots` and their descendants. */
export function treeCpuSeconds(roots: number[]): number {
  return treeTicks(roots, processes()) / CLOCK_TICKS
}

/** Pids of the processes (kernel threads included) whose name is `comm`. */
export function pidsNamed(comm: string): number[] {
  const out: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (readFileSync(`/proc/${name}/comm`, 'utf8').trim() === comm) out.push(Number(name))
    } catch {
      // exited meanwhile
    }
  }
  return out
}

/** VmRSS in bytes from a /proc/<pid>/status text (0 for a process without one, e.g. a zombie). */
export function parseVmRss(status: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status)
  return m ? Number(m[1]) * 1024 : 0
}

/** Resident memory of `roots` and their descendants, bytes: per process and the sum. */
export function treeRss(roots: number[]): { bytes: number; processes: Array<{ pid: number; ppid: number; bytes: number }> } {
  const all = processes()
  const ppid = new Map(all.map((p) => [p.pid, p.ppid]))
  const rows: Array<{ pid: number; ppid: number; bytes: number }> = []
  for (const pid of treeOf(roots, all)) {
    try {
      rows.push({ pid, ppid: ppid.get(pid) ?? 0, bytes: parseVmRss(readFileSync(`/proc/${pid}/status`, 'utf8')) })
    } catch {
      // exited meanwhile
    }
  }
  return { bytes: rows.reduce((s, r) => s + r.bytes, 0), processes: rows }
}
