/**
 * The keys of mounted secure volumes that a successor could not open on its own: those
 * opened with a passphrase, which pxd writes nowhere. A live restart hands them over in
 * memory only: in the handoff datagram, or, under the service manager's fd store, in an
 * anonymous memory file (memfd) stored beside the FUSE session and rewritten after every
 * mount and unmount. Keys from the cluster secret or a named secret are found again by the
 * successor and never appear here.
 */
import { closeSync, fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs'
import { pxdError } from '../errors'
import { native } from '../native/binding'
import type { KeyOptions } from '../volumes/keys'

/** By volume name. */
export type HandedKeys = Record<string, KeyOptions>

/** The name the memory file is stored under in the fd store. */
export const KEYS_FD_NAME = 'pxd-keys'

/** HANDOFF_FAILED unless `value` is a map of volume names to key options. */
export function parseHandedKeys(value: unknown): HandedKeys {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw pxdError('HANDOFF_FAILED', 'the handed-over keys are not a map of volumes')
  const out: HandedKeys = {}
  for (const [name, k] of Object.entries(value as Record<string, unknown>)) {
    const o = k as Partial<KeyOptions> | null
    if (typeof o !== 'object' || o === null || (o.passphrase !== undefined && typeof o.passphrase !== 'string')) throw pxdError('HANDOFF_FAILED', `the handed-over key of ${name} is malformed`)
    out[name] = o.passphrase !== undefined ? { passphrase: o.passphrase } : {}
  }
  return out
}

export class KeysFile {
  readonly fd: number

  constructor(fd: number) {
    this.fd = fd
  }

  static create(): KeysFile {
    return new KeysFile(native.memfdCreate(KEYS_FD_NAME))
  }

  write(keys: HandedKeys): void {
    const data = Buffer.from(JSON.stringify(keys))
    ftruncateSync(this.fd, 0)
    writeSync(this.fd, data, 0, data.length, 0)
  }

  read(): HandedKeys {
    const size = fstatSync(this.fd).size
    if (size === 0) return {}
    const buf = Buffer.alloc(size)
    readSync(this.fd, buf, 0, size, 0)
    try {
      return parseHandedKeys(JSON.parse(buf.toString('utf8')))
    } finally {
      buf.fill(0)
    }
  }

  close(): void {
    closeSync(this.fd)
  }
}
