/**
 * --fuse-request-timeout: how long the kernel lets a request to the FUSE device directory
 * wait for its answer before it aborts the connection (FUSE_REQUEST_TIMEOUT, Linux 6.14).
 * It bounds the wait of every process doing I/O on a volume while no pxd serves them (pxd
 * was killed and no successor came); the price is that a request pxd itself takes longer
 * than this over fails every volume of the node at once. The value travels in fuse_init_out
 * as a u16 of seconds, and the kernel lowers it to its own limit
 * (/proc/sys/fs/fuse/max_request_timeout, 0: none) without a word: both are refused here.
 */
import { readFileSync } from 'node:fs'
import { pxdError } from '../errors'
import { FLUSH_TIMEOUT_MS } from '../replicas/replica-client'

/**
 * Above the longest wait pxd's own data path may take over a request: a flush to a slow
 * replica waits up to FLUSH_TIMEOUT_MS (120 s) before it is demoted through the kvdb
 * (two calls of at most 5 s each); with a bound under that, one slow replica's flush
 * would abort every volume of the node.
 */
export const DEFAULT_FUSE_REQUEST_TIMEOUT_SECONDS = 180
/** fuse_init_out.request_timeout is a u16. */
export const MAX_FUSE_REQUEST_TIMEOUT_SECONDS = 65_535
export const KERNEL_MAX_REQUEST_TIMEOUT_FILE = '/proc/sys/fs/fuse/max_request_timeout'

/**
 * Whole seconds, 0 (no bound) to 65535 and at most `kernelMax` when that is not 0; an
 * INVALID_ARGUMENT saying why otherwise.
 */
export function parseFuseRequestTimeout(text: string, kernelMax = 0): number {
  const trimmed = text.trim()
  const seconds = /^\d+$/.test(trimmed) ? Number(trimmed) : NaN
  if (!Number.isSafeInteger(seconds) || seconds > MAX_FUSE_REQUEST_TIMEOUT_SECONDS) {
    throw pxdError('INVALID_ARGUMENT', `invalid --fuse-request-timeout "${text}": whole seconds from 0 (no bound) to ${MAX_FUSE_REQUEST_TIMEOUT_SECONDS}`)
  }
  if (kernelMax > 0 && seconds > kernelMax) {
    throw pxdError('INVALID_ARGUMENT', `--fuse-request-timeout ${seconds} is above this kernel's limit of ${kernelMax} s (${KERNEL_MAX_REQUEST_TIMEOUT_FILE}); the kernel would use ${kernelMax} s`)
  }
  return seconds
}

/**
 * What to warn of at start when the bound is below the longest wait of pxd's own (a flush
 * to a slow replica, before it is demoted): such a flush would abort every volume of the
 * node. Undefined for no bound, or one above it.
 */
export function boundBelowFlushLimit(seconds: number): string | undefined {
  if (seconds === 0 || seconds * 1000 > FLUSH_TIMEOUT_MS) return undefined
  return `--fuse-request-timeout ${seconds} s is not above the ${FLUSH_TIMEOUT_MS / 1000} s a flush to a slow replica may wait before the replica is demoted: such a flush makes the kernel abort the FUSE connection, and every volume of this node fails (EIO)`
}

/** The kernel's limit on FUSE request timeouts (s); 0 when it sets none or has no such setting. */
export function kernelMaxRequestTimeout(file = KERNEL_MAX_REQUEST_TIMEOUT_FILE): number {
  try {
    const value = Number(readFileSync(file, 'utf8').trim())
    return Number.isSafeInteger(value) && value > 0 ? value : 0
  } catch {
    return 0
  }
}
