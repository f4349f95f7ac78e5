/** The CLI's human formatting: aligned tables and fields, durations, percentages, sizes. */
import test from 'ava'
import { formatDuration, formatPercent, plural, renderFields, renderTable } from '../../src/cli/table'
import { formatSize } from '../../src/util/size'

test('renderTable aligns columns to the widest cell and trims trailing blanks', (t) => {
  const text = renderTable(['NAME', 'SIZE', 'STATE'], [['a', '10 GiB', 'attached'], ['longer-name', '1 MiB', '']])
  t.is(text, [
    'NAME         SIZE    STATE',
    'a            10 GiB  attached',
    'longer-name  1 MiB',
    '',
  ].join('\n'))
})

test('renderTable with no rows prints the header only', (t) => {
  t.is(renderTable(['NAME', 'ID'], []), 'NAME  ID\n')
})

test('renderTable tolerates rows shorter than the header', (t) => {
  t.is(renderTable(['A', 'B', 'C'], [['x']]), 'A  B  C\nx\n')
})

test('renderFields aligns values after the longest key', (t) => {
  t.is(renderFields([['Node', 'node-a'], ['Capacity', '1 GiB']]), 'Node:      node-a\nCapacity:  1 GiB\n')
})

test('formatDuration shows the two largest units', (t) => {
  t.is(formatDuration(0), '0s')
  t.is(formatDuration(59), '59s')
  t.is(formatDuration(60), '1m')
  t.is(formatDuration(61), '1m 1s')
  t.is(formatDuration(3600), '1h')
  t.is(formatDuration(3725), '1h 2m')
  t.is(formatDuration(86400 + 3600 + 59), '1d 1h')
  t.is(formatDuration(86400 + 59), '1d')
  t.is(formatDuration(12.9), '12s')
  t.is(formatDuration(-5), '0s')
})

test('formatPercent rounds, but never to 0% or 100% when not exact', (t) => {
  t.is(formatPercent(1, 4), '25%')
  t.is(formatPercent(0, 10), '0%')
  t.is(formatPercent(10, 10), '100%')
  t.is(formatPercent(1, 1000), '<1%')
  t.is(formatPercent(999, 1000), '>99%')
  t.is(formatPercent(5, 0), '-')
  t.is(formatPercent(5, Number.NaN), '-')
})

test('plural', (t) => {
  t.is(plural(1, 'node'), '1 node')
  t.is(plural(0, 'node'), '0 nodes')
  t.is(plural(3, 'replica'), '3 replicas')
})

test('formatSize uses binary units with one decimal below 100', (t) => {
  t.is(formatSize(0), '0 B')
  t.is(formatSize(1023), '1023 B')
  t.is(formatSize(1024), '1 KiB')
  t.is(formatSize(1536), '1.5 KiB')
  t.is(formatSize(48 * 1024 ** 2), '48 MiB')
  t.is(formatSize(150.4 * 1024 ** 3), '150 GiB')
  t.is(formatSize(2 * 1024 ** 4), '2 TiB')
})
