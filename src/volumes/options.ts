/**
 * Volume names and creation options, in every form users send them:
 *   Docker `--opt k=v` (Create's Opts map), Mesos `driver_options`, dvdcli `--volumeopts`,
 *   a dcos-commons pod spec string ("repl=2,shared=true") and the Portworx inline name
 *   ("name=px_vol,size=10G,repl=3").
 * Everything is validated here, before anything is created: an unknown key, a malformed
 * value or a bad name is an INVALID_ARGUMENT error that says what is wrong.
 */
import { BLOCK_SIZE } from '../constants'
import { pxdError } from '../errors'
import { FILESYSTEMS, type Filesystem } from '../frontend/filesystem'
import { parseSize } from '../util/size'

export const MIN_VOLUME_SIZE = 16 * 1024 ** 2
export const DEFAULT_VOLUME_SIZE = 1024 ** 3
export const MAX_REPL = 3
export const MAX_NAME_LENGTH = 128
/** The file system's block size (mkfs -b) when block_size is not given; not the replica store's block. */
export const DEFAULT_FS_BLOCK_SIZE = 4096
const MAX_VALUE_LENGTH = 256


export interface VolumeSpec {
  size: number
  repl: number
  fs: Filesystem
  /** File-system block size handed to mkfs. */
  blockSize: number
  shared: boolean
  /** Portworx keys pxd accepts and records so existing task definitions keep working. */
  extra: Record<string, string>
}

type Parser = (value: string, key: string) => unknown

const bool: Parser = (value, key) => {
  const v = value.toLowerCase()
  if (['true', 'yes', 'on', '1'].includes(v)) return true
  if (['false', 'no', 'off', '0'].includes(v)) return false
  throw invalid(key, value, 'expected true or false')
}

const integer = (min: number, max: number): Parser => (value, key) => {
  if (!/^\d+$/.test(value)) throw invalid(key, value, `expected a whole number from ${min} to ${max}`)
  const n = Number(value)
  if (n < min || n > max) throw invalid(key, value, `expected a whole number from ${min} to ${max}`)
  return n
}

const oneOf = (choices: readonly string[]): Parser => (value, key) => {
  const v = value.toLowerCase()
  if (!choices.includes(v)) throw invalid(key, value, `expected one of ${choices.join(', ')}`)
  return v
}

const text: Parser = (value, key) => {
  if (!/^[A-Za-z0-9_.:;=\-/ ]*$/.test(value)) throw invalid(key, value, 'only letters, digits and _ . : ; = - / are allowed')
  return value
}

/** Keys pxd acts on. */
const ACTIVE_KEYS: Record<string, Parser> = {
  size: (value, key) => {
    let bytes: number
    try {
      bytes = parseSize(value, 1024 ** 3)
    } catch {
      throw invalid(key, value, 'expected a size such as 10G, 512M or 10 (GiB)')
    }
    if (bytes <= 0) throw invalid(key, value, 'the size must be greater than zero')
    if (bytes < MIN_VOLUME_SIZE) throw invalid(key, value, `the smallest volume is ${MIN_VOLUME_SIZE / 1024 ** 2} MiB`)
    return bytes
  },
  repl: integer(1, MAX_REPL),
  fs: oneOf(FILESYSTEMS),
  block_size: (value, key) => {
    let bytes: number
    try {
      bytes = parseSize(value)
    } catch {
      throw invalid(key, value, 'expected 1K, 2K or 4K')
    }
    if (![1024, 2048, 4096].includes(bytes)) throw invalid(key, value, 'expected 1K, 2K or 4K')
    return bytes
  },
  shared: bool,
  /** Portworx's NFS-served shared volume; in pxd the same as shared. */
  sharedv4: bool,
}

/** Portworx keys accepted and recorded (shown by inspect); of these only nodiscard (see discards) and secure (src/volumes/keys.ts, src/engine/cipher.ts) are acted on. */
const RECORDED_KEYS: Record<string, Parser> = {
  io_priority: oneOf(['high', 'medium', 'low']),
  labels: text,
  snap_interval: integer(0, 1_000_000),
  snap_schedule: text,
  nodes: text,
  zones: text,
  racks: text,
  aggregation_level: (value, key) => (value === 'auto' ? value : integer(1, 3)(value, key)),
  sticky: bool,
  secure: bool,
  journal: bool,
  nodiscard: bool,
  scale: integer(0, 1024),
  group: text,
  io_profile: oneOf(['auto', 'none', 'db', 'db_remote', 'sequential', 'random', 'cms', 'sync_shared']),
  priority_io: oneOf(['high', 'medium', 'low']),
  async_io: bool,
  early_ack: bool,
}

export const KNOWN_KEYS = ['name', ...Object.keys(ACTIVE_KEYS), ...Object.keys(RECORDED_KEYS)].sort()

function invalid(key: string, value: string, why: string) {
  return pxdError('INVALID_ARGUMENT', `invalid value "${value}" for option "${key}": ${why}`)
}

/** Validate a plain volume name; no path separators, no "..", a conservative charset. */
export function validateName(name: string): string {
  if (name.length === 0) throw pxdError('INVALID_ARGUMENT', 'volume name is empty')
  if (name.length > MAX_NAME_LENGTH) throw pxdError('INVALID_ARGUMENT', `volume name is longer than ${MAX_NAME_LENGTH} characters`)
  if (name.includes('/')) throw pxdError('INVALID_ARGUMENT', `invalid volume name "${name}": it must not contain "/"`)
  if (name.includes('..')) throw pxdError('INVALID_ARGUMENT', `invalid volume name "${name}": it must not contain ".."`)
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw pxdError('INVALID_ARGUMENT', `invalid volume name "${name}": only letters, digits, "_", "." and "-" are allowed`)
  }
  if (name === '.') throw pxdError('INVALID_ARGUMENT', 'invalid volume name "."')
  return name
}

/**
 * Split "k=v,k2=v2" into ordered pairs. A value may itself hold "=" (labels=app=db);
 * the key is what stands before the first "=".
 */
export function splitOptionString(input: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = []
  for (const raw of input.split(',')) {
    const part = raw.trim()
    if (part === '') continue
    const eq = part.indexOf('=')
    if (eq <= 0) throw pxdError('INVALID_ARGUMENT', `invalid option "${part}": expected key=value`)
    pairs.push([part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim()])
  }
  return pairs
}

/** The name a request uses and the options inlined in it (`name=px_vol,size=10G`). */
export interface VolumeRef {
  name: string
  inline: Record<string, string>
}

export function parseVolumeRef(requested: string): VolumeRef {
  if (typeof requested !== 'string') throw pxdError('INVALID_ARGUMENT', 'volume name must be a string')
  if (!requested.includes('=')) return { name: validateName(requested), inline: {} }
  const inline: Record<string, string> = {}
  for (const [key, value] of splitOptionString(requested)) addPair(inline, key, value, 'the volume name')
  const name = inline.name
  if (name === undefined) throw pxdError('INVALID_ARGUMENT', `inline volume spec "${requested}" has no name= key`)
  delete inline.name
  return { name: validateName(name), inline }
}

function addPair(into: Record<string, string>, key: string, value: string, source: string): void {
  const previous = into[key]
  if (previous !== undefined && previous !== value) {
    throw pxdError('INVALID_ARGUMENT', `option "${key}" is given twice in ${source} with different values ("${previous}" and "${value}")`)
  }
  into[key] = value
}

/**
 * Flatten an options map as Docker, Mesos or dvdcli send it. A value holding commas is a
 * whole option string passed as one parameter (a dcos-commons pod spec becomes
 * {"repl": "2,shared=true"} once split at its first "="), so it is re-joined and split again.
 */
export function flattenOptions(opts: unknown): Record<string, string> {
  if (opts === undefined || opts === null) return {}
  if (typeof opts === 'string') return flattenOptions(Object.fromEntries(splitOptionString(opts)))
  if (typeof opts !== 'object' || Array.isArray(opts)) throw pxdError('INVALID_ARGUMENT', 'options must be an object of key/value strings')
  const out: Record<string, string> = {}
  for (const [rawKey, rawValue] of Object.entries(opts as Record<string, unknown>)) {
    if (typeof rawValue !== 'string' && typeof rawValue !== 'number' && typeof rawValue !== 'boolean') {
      throw pxdError('INVALID_ARGUMENT', `option "${rawKey}" must be a string, number or boolean`)
    }
    const value = String(rawValue)
    if (value.includes(',')) {
      for (const [key, v] of splitOptionString(`${rawKey}=${value}`)) addPair(out, key, v, 'the options')
    } else {
      addPair(out, rawKey.trim().toLowerCase(), value.trim(), 'the options')
    }
  }
  return out
}

/** Whether fstrim and discard in the volume free its blocks on the replicas (all but nodiscard=true). */
export function discards(spec: VolumeSpec): boolean {
  return spec.extra.nodiscard !== 'true'
}

/** Merge inline-name options with request options; a contradiction is an error, not a guess. */
export function mergeOptions(...sources: Array<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const source of sources) for (const [key, value] of Object.entries(source)) addPair(out, key, value, 'the name and the options')
  return out
}

/** Validate options and fill defaults into a full spec. */
export function buildSpec(options: Record<string, string>): VolumeSpec {
  const spec: VolumeSpec = { size: DEFAULT_VOLUME_SIZE, repl: 1, fs: 'ext4', blockSize: DEFAULT_FS_BLOCK_SIZE, shared: false, extra: {} }
  for (const [key, value] of Object.entries(options)) {
    if (value.length > MAX_VALUE_LENGTH) throw invalid(key, value.slice(0, 32) + '...', `values are at most ${MAX_VALUE_LENGTH} characters`)
    const active = ACTIVE_KEYS[key]
    if (active) {
      const parsed = active(value, key)
      if (key === 'size') spec.size = parsed as number
      else if (key === 'repl') spec.repl = parsed as number
      else if (key === 'fs') spec.fs = parsed as Filesystem
      else if (key === 'block_size') spec.blockSize = parsed as number
      else if (key === 'shared' || key === 'sharedv4') spec.shared = spec.shared || (parsed as boolean)
      continue
    }
    const recorded = RECORDED_KEYS[key]
    if (recorded) {
      spec.extra[key] = String(recorded(value, key))
      continue
    }
    if (key === 'name') throw pxdError('INVALID_ARGUMENT', 'option "name" belongs in the volume name (name=NAME,...), not in the options')
    throw pxdError('INVALID_ARGUMENT', `unknown option "${key}"; known options: ${KNOWN_KEYS.join(', ')}`)
  }
  // The replica store works in BLOCK_SIZE blocks: round the size up to a whole block.
  spec.size = Math.ceil(spec.size / BLOCK_SIZE) * BLOCK_SIZE
  return spec
}

/**
 * Which explicitly requested options differ from an existing volume's spec. Creating a
 * volume that exists is fine when nothing asked for contradicts what it has.
 */
export function specConflicts(existing: VolumeSpec, requested: Record<string, string>): string[] {
  const wanted = buildSpec(requested)
  const conflicts: string[] = []
  for (const key of Object.keys(requested)) {
    const have = specValue(existing, key)
    const want = specValue(wanted, key)
    if (have !== want) conflicts.push(`${key}: has ${have}, requested ${want}`)
  }
  return conflicts
}

function specValue(spec: VolumeSpec, key: string): string {
  switch (key) {
    case 'size': return String(spec.size)
    case 'repl': return String(spec.repl)
    case 'fs': return spec.fs
    case 'block_size': return String(spec.blockSize)
    case 'shared': return String(spec.shared)
    case 'sharedv4': return String(spec.shared)
    default: return spec.extra[key] ?? ''
  }
}
