import { pxdError } from '../errors'
import type { KvTxn } from './kvdb'

/**
 * Checks both stores make the same way, so a caller sees one behaviour whichever store
 * it runs on (etcd itself refuses a key written twice in one transaction).
 */
export function checkTxn(txn: KvTxn): void {
  for (const c of txn.compares ?? []) {
    checkKey(c.key)
    if (!Number.isSafeInteger(c.modRevision) || c.modRevision < 0) {
      throw pxdError('INVALID_ARGUMENT', `compare on ${c.key}: modRevision must be a non-negative integer, got ${String(c.modRevision)}`)
    }
  }
  const written = new Set<string>()
  for (const key of [...(txn.puts ?? []).map((p) => p.key), ...(txn.deletes ?? [])]) {
    checkKey(key)
    if (written.has(key)) throw pxdError('INVALID_ARGUMENT', `key ${key} is written more than once in one transaction`)
    written.add(key)
  }
}

export function checkKey(key: unknown): void {
  if (typeof key !== 'string' || key === '') throw pxdError('INVALID_ARGUMENT', `a kvdb key must be a non-empty string, got ${JSON.stringify(key)}`)
}

export function checkTtl(ttlSeconds: number): void {
  if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds < 1) {
    throw pxdError('INVALID_ARGUMENT', `a lease TTL must be a whole number of seconds >= 1, got ${String(ttlSeconds)}`)
  }
}

/** A value as JSON text: what etcd stores, and the one shape both stores agree on. */
export function toJson(key: string, value: unknown): string {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (err) {
    throw pxdError('INVALID_ARGUMENT', `value for ${key} cannot be stored as JSON: ${(err as Error).message}`, err)
  }
  if (text === undefined) throw pxdError('INVALID_ARGUMENT', `value for ${key} is not JSON (undefined or a function); delete the key instead`)
  return text
}
