/**
 * pxd beside GlusterFS (`--peers`): for each row of the main table, Gluster's median at
 * each replication level next to pxd's, their ratio, and whether pxd is ahead. The
 * target (issue 16): pxd ahead of Gluster on every row, at both levels: repl=1 against
 * the one-brick volume, repl=2 against the replica-2 one. The medians come from the same
 * interleaved rounds as the main table's.
 */
import type { PeerTargetId } from './gluster'
import { fmt, ROWS, type RunRecord, type SummaryRow } from './report'
import { median } from './stats'

type Level = 'repl1' | 'repl2'

export interface PeerFigure {
  pxd: number
  gluster: number
  /** Gluster's per-round values, in round order. */
  glusterRuns: number[]
  /** pxd / Gluster: above 1 is pxd ahead for throughput, below 1 for latency. */
  ratio: number
  ahead: boolean
}

export interface PeerRow {
  key: string
  label: string
  unit: string
  better: 'higher' | 'lower'
  levels: Record<Level, PeerFigure>
}

const LEVELS: Array<{ level: Level; peer: PeerTargetId; pxdLabel: string; peerLabel: string }> = [
  { level: 'repl1', peer: 'gluster1', pxdLabel: 'repl=1', peerLabel: 'Gluster 1 brick' },
  { level: 'repl2', peer: 'gluster2', pxdLabel: 'repl=2', peerLabel: 'Gluster replica 2' },
]

/** One PeerRow per main-table row that has Gluster runs at both levels. */
export function summarizePeers(runs: RunRecord[], rows: SummaryRow[]): PeerRow[] {
  const out: PeerRow[] = []
  for (const row of rows) {
    const spec = ROWS.find((s) => s.key === row.key)
    if (!spec) continue
    const levels = {} as Record<Level, PeerFigure>
    for (const { level, peer } of LEVELS) {
      const glusterRuns = runs.filter((r) => r.workload === spec.workload && r.target === peer).sort((a, b) => a.round - b.round).map((r) => spec.pick(r.result))
      if (glusterRuns.length === 0) break
      const pxd = row.median[level]
      const gluster = median(glusterRuns)
      levels[level] = { pxd, gluster, glusterRuns, ratio: pxd / gluster, ahead: row.better === 'higher' ? pxd > gluster : pxd < gluster }
    }
    if (LEVELS.every(({ level }) => levels[level])) out.push({ key: row.key, label: row.label, unit: row.unit, better: row.better, levels })
  }
  return out
}

/** The sentence above the table: what Gluster ran as, and its layout writes. */
export function peerSetupLine(targets: Array<{ id: string; label: string; version?: string }>, layout: Partial<Record<string, { mbPerSecond: number }>>): string {
  const peers = targets.filter((t) => LEVELS.some((l) => l.peer === t.id))
  const version = peers[0]?.version ?? 'GlusterFS'
  return `pxd beside GlusterFS (${version}) in the same rounds: a one-brick volume beside repl=1 and a replica-2 volume beside repl=2, ` +
    `bricks in a temp dir on the same disk as pxd's replicas, one glusterd, mounted with Gluster's FUSE client, Gluster's default volume options. ` +
    `"/ Gluster": pxd median / Gluster median. First sequential write (MB/s, one run): ${peers.map((t) => `${t.label} ${layout[t.id]?.mbPerSecond.toFixed(0) ?? 'n/a'}`).join(', ')}.`
}

export function renderPeerMarkdown(rows: PeerRow[], setupLine: string): string {
  if (rows.length === 0) return ''
  const out: string[] = [setupLine, '']
  const header = ['workload', ...LEVELS.flatMap(({ pxdLabel, peerLabel }) => [pxdLabel, peerLabel, `${pxdLabel} / Gluster`, 'pxd ahead'])]
  out.push(`| ${header.join(' | ')} |`, `| --- |${' ---: | ---: | ---: | --- |'.repeat(LEVELS.length)}`)
  for (const row of rows) {
    const cells = [`${row.label}, ${row.unit}`]
    for (const { level } of LEVELS) {
      const f = row.levels[level]
      cells.push(fmt(f.pxd), fmt(f.gluster), Number.isFinite(f.ratio) ? `${f.ratio.toFixed(2)}${row.better === 'lower' ? 'x' : ''}` : 'n/a', f.ahead ? 'met' : '**missed**')
    }
    out.push(`| ${cells.join(' | ')} |`)
  }
  out.push('')
  const verdicts = LEVELS.map(({ level, pxdLabel }) => {
    const ahead = rows.filter((r) => r.levels[level].ahead).length
    return `${pxdLabel} ${ahead}/${rows.length} rows`
  })
  const all = rows.every((r) => LEVELS.every(({ level }) => r.levels[level].ahead))
  out.push(`pxd ahead of Gluster on every row at both levels: ${all ? 'met' : '**missed**'} (${verdicts.join(', ')}).`, '')
  if (rows[0]!.levels.repl1.glusterRuns.length > 1) {
    out.push('Gluster per round (round 1 / 2 / ...):', '', `| workload | ${LEVELS.map((l) => l.peerLabel).join(' | ')} |`, `| --- |${' --- |'.repeat(LEVELS.length)}`)
    for (const row of rows) out.push(`| ${row.label}, ${row.unit} | ${LEVELS.map(({ level }) => row.levels[level].glusterRuns.map(fmt).join(' / ')).join(' | ')} |`)
    out.push('')
  }
  return out.join('\n')
}
