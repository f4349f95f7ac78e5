/**
 * pxd's config file (default /etc/pxd/pxd.conf): one `key = value` per line, the keys being
 * the long flag names (`data-dir = /var/lib/pxd`) or their PXD_* variable names; `#` starts
 * a comment line; a value may be quoted. A flag wins over its variable, which wins over the
 * file, which wins over the default. An unknown or repeated key is an error, naming the line.
 */
import { readFileSync } from 'node:fs'
import { pxdError } from '../errors'

export const DEFAULT_CONFIG_FILE = '/etc/pxd/pxd.conf'

/** `keys`: flag name -> its variable name. Returns flag name -> value. */
export function parseConfig(text: string, keys: Record<string, string>, source: string): Map<string, string> {
  const byEnv = new Map(Object.entries(keys).map(([flag, env]) => [env, flag]))
  const values = new Map<string, string>()
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) return
    const where = `${source} line ${i + 1}`
    const m = /^([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(.*)$/.exec(line)
    if (!m) throw pxdError('INVALID_ARGUMENT', `${where}: expected "key = value", got "${line}"`)
    const key = m[1]!
    const flag = key in keys ? key : byEnv.get(key)
    if (!flag) throw pxdError('INVALID_ARGUMENT', `${where}: unknown key "${key}" (keys are pxd's long flag names, e.g. data-dir)`)
    if (values.has(flag)) throw pxdError('INVALID_ARGUMENT', `${where}: "${flag}" is set twice`)
    values.set(flag, unquote(m[2]!.trim(), where))
  })
  return values
}

function unquote(value: string, where: string): string {
  const q = value[0]
  if (q !== '"' && q !== "'") return value
  if (value.length < 2 || value[value.length - 1] !== q) throw pxdError('INVALID_ARGUMENT', `${where}: unterminated quote`)
  return value.slice(1, -1)
}

/**
 * The config file's settings: `file` as given (it must exist), else the default file when it
 * exists, else none.
 */
export function loadConfig(file: string | undefined, keys: Record<string, string>): Map<string, string> {
  const path = file ?? DEFAULT_CONFIG_FILE
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    if (file === undefined && (err as NodeJS.ErrnoException).code === 'ENOENT') return new Map()
    throw pxdError('INVALID_ARGUMENT', `cannot read the config file ${path}: ${(err as Error).message}`, err)
  }
  return parseConfig(text, keys, path)
}
