/**
 * A strict reader of the Prometheus text exposition format (0.0.4), for tests: every line
 * must be a HELP or TYPE comment or a sample, every sample's family must have been typed
 * first, and values must be numbers. Throws on the first line that is not.
 */
export interface Family {
  name: string
  help: string
  type: string
  samples: Array<{ name: string; labels: Record<string, string>; value: number }>
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*'
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)$`)
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/y
const SUFFIXES = ['_bucket', '_sum', '_count']

export function parseExposition(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('exposition does not end with a newline')
  const families = new Map<string, Family>()
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '') continue
    const fail = (why: string) => new Error(`line ${i + 1}: ${why}: ${line}`)
    const comment = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line)
    if (comment) {
      const [, kind, name, rest] = comment as unknown as [string, string, string, string]
      const f = families.get(name) ?? { name, help: '', type: '', samples: [] }
      families.set(name, f)
      if (kind === 'HELP') f.help = rest
      else if (['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) f.type = rest
      else throw fail(`unknown type "${rest}"`)
      continue
    }
    if (line.startsWith('#')) throw fail('unknown comment')
    const m = SAMPLE.exec(line)
    if (!m) throw fail('not a sample')
    const name = m[1]!
    const labels: Record<string, string> = {}
    if (m[2] !== undefined && m[2] !== '') {
      LABEL.lastIndex = 0
      while (LABEL.lastIndex < m[2].length) {
        const l = LABEL.exec(m[2])
        if (!l) throw fail('bad labels')
        labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
      }
    }
    const raw = m[3]!
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : raw === 'NaN' || raw === 'Nan' ? NaN : Number(raw)
    if (Number.isNaN(value) && raw !== 'NaN' && raw !== 'Nan') throw fail('value is not a number')
    const base = families.has(name) ? name : SUFFIXES.map((s) => (name.endsWith(s) ? name.slice(0, -s.length) : '')).find((b) => b && families.has(b))
    const f = base ? families.get(base) : undefined
    if (!f || !f.type) throw fail('sample before its TYPE line')
    f.samples.push({ name, labels, value })
  }
  return families
}

/** The value of one sample; undefined when absent. Labels must match exactly. */
export function sampleValue(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name !== name) continue
      const keys = Object.keys(s.labels)
      if (keys.length === Object.keys(labels).length && keys.every((k) => s.labels[k] === labels[k])) return s.value
    }
  }
  return undefined
}
