import { pxdError } from '../errors'

const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024, KB: 1024, KI: 1024, KIB: 1024,
  M: 1024 ** 2, MB: 1024 ** 2, MI: 1024 ** 2, MIB: 1024 ** 2,
  G: 1024 ** 3, GB: 1024 ** 3, GI: 1024 ** 3, GIB: 1024 ** 3,
  T: 1024 ** 4, TB: 1024 ** 4, TI: 1024 ** 4, TIB: 1024 ** 4,
}

/**
 * Parse a size such as "10G", "512M", "1.5T" or "4096B". Units are binary (K = 1024).
 * A bare number means `bareUnit` bytes: GiB for volume sizes, as Portworx users expect.
 */
export function parseSize(text: string, bareUnit = 1): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text)
  if (!m) throw pxdError('INVALID_ARGUMENT', `invalid size "${text}": expected a number with an optional unit K, M, G or T`)
  const unitName = (m[2] ?? '').toUpperCase()
  const unit = unitName === '' ? bareUnit : UNITS[unitName]
  if (unit === undefined) throw pxdError('INVALID_ARGUMENT', `invalid size "${text}": unknown unit "${m[2]}" (use K, M, G or T)`)
  const bytes = Number(m[1]) * unit
  if (!Number.isSafeInteger(Math.round(bytes)) || bytes > Number.MAX_SAFE_INTEGER) {
    throw pxdError('INVALID_ARGUMENT', `invalid size "${text}": too large`)
  }
  return Math.round(bytes)
}

/** 1073741824 -> "1 GiB"; used by tables, never by JSON output. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let value = bytes
  let i = 0
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024
    i++
  }
  const digits = i === 0 || value >= 100 || Number.isInteger(value) ? 0 : 1
  return `${value.toFixed(digits)} ${units[i]}`
}
