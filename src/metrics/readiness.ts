/**
 * Readiness for supervisors (GET /readyz): named checks, run in parallel, each bounded by
 * a timeout so a hung metadata store makes /readyz answer 503 quickly instead of hanging.
 * A check passes by resolving and fails by throwing; its message says what is wrong.
 */
import { promises as fs, constants as fsConstants } from 'node:fs'
import { messageOf, pxdError } from '../errors'
import { listMounts } from '../frontend/filesystem'
import { keys, type Kvdb } from '../kvdb/kvdb'

export const READINESS_CHECK_TIMEOUT_MS = 2_000

export interface CheckResult {
  ok: boolean
  /** Why not, when not ok. */
  error?: string
}

export interface ReadinessReport {
  ready: boolean
  /** Names of the checks that failed. */
  notReady: string[]
  checks: Record<string, CheckResult>
}

export type Readiness = () => Promise<ReadinessReport>
export type ReadinessChecks = Record<string, () => Promise<unknown>>

export function readinessOf(checks: ReadinessChecks, timeoutMs = READINESS_CHECK_TIMEOUT_MS): Readiness {
  return async () => {
    const names = Object.keys(checks)
    const results = await Promise.all(names.map((name) => runCheck(checks[name]!, timeoutMs)))
    const report: ReadinessReport = { ready: true, notReady: [], checks: {} }
    names.forEach((name, i) => {
      const r = results[i]!
      report.checks[name] = r
      if (!r.ok) {
        report.ready = false
        report.notReady.push(name)
      }
    })
    return report
  }
}

async function runCheck(check: () => Promise<unknown>, timeoutMs: number): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(pxdError('PRECONDITION', `no answer within ${timeoutMs} ms`)), timeoutMs)
  })
  try {
    await Promise.race([Promise.resolve().then(check), timeout])
    return { ok: true }
  } catch (err) {
    return { ok: false, error: messageOf(err) }
  } finally {
    clearTimeout(timer)
  }
}

export interface NodeReadinessOptions {
  nodeId: string
  kvdb: Kvdb
  dataDir: string
  /** Where the FUSE device directory is mounted (<run-dir>/dev). */
  fuseMountpoint: string
}

/**
 * The checks of a running node:
 *   store  the data dir is there and writable (access(2) says EROFS once the file system
 *          went read-only after an I/O error)
 *   kvdb   the metadata store answers a read
 *   fuse   the FUSE device directory is mounted (read from /proc/self/mounts: nothing in
 *          this process may touch the FUSE mount itself, see device-directory.ts)
 */
export function nodeReadinessChecks(o: NodeReadinessOptions): ReadinessChecks {
  return {
    store: async () => {
      try {
        await fs.access(o.dataDir, fsConstants.W_OK)
      } catch (err) {
        throw pxdError('PRECONDITION', `data dir ${o.dataDir} is not writable: ${messageOf(err)}`, err)
      }
    },
    kvdb: async () => {
      await o.kvdb.get(keys.member(o.nodeId))
    },
    fuse: async () => {
      const mounted = (await listMounts()).some((m) => m.target === o.fuseMountpoint && m.fstype.startsWith('fuse'))
      if (!mounted) throw pxdError('PRECONDITION', `the FUSE device directory ${o.fuseMountpoint} is not mounted`)
    },
  }
}

export function nodeReadiness(o: NodeReadinessOptions): Readiness {
  return readinessOf(nodeReadinessChecks(o))
}
