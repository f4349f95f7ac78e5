/** Aligned text tables for human output. */
export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()
  return [line(headers), ...rows.map(line)].join('\n') + '\n'
}

/** Key/value pairs, keys aligned. */
export function renderFields(fields: Array<[string, string]>): string {
  const width = Math.max(...fields.map(([k]) => k.length))
  return fields.map(([k, v]) => `${(k + ':').padEnd(width + 1)}  ${v}`).join('\n') + '\n'
}

/** 3725 -> "1h 2m", 59 -> "59s", 90061 -> "1d 1h": the two largest units, for uptimes. */
export function formatDuration(totalSeconds: number): string {
  const s = Math.max(0, Math.floor(totalSeconds))
  const parts: Array<[number, string]> = [[Math.floor(s / 86400), 'd'], [Math.floor(s / 3600) % 24, 'h'], [Math.floor(s / 60) % 60, 'm'], [s % 60, 's']]
  const first = parts.findIndex(([n]) => n > 0)
  if (first < 0) return '0s'
  return parts.slice(first, first + 2).filter(([n]) => n > 0).map(([n, unit]) => `${n}${unit}`).join(' ')
}

/** A share of a whole as a whole percentage ("25%"); "-" when the whole is zero. Never rounds a non-zero share to 0% or a partial one to 100%. */
export function formatPercent(part: number, whole: number): string {
  if (!(whole > 0)) return '-'
  const exact = (part / whole) * 100
  const pct = Math.round(exact)
  if (pct === 0 && part > 0) return '<1%'
  if (pct === 100 && part < whole) return '>99%'
  return `${pct}%`
}

/** "1 volume", "3 volumes". */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`
}
