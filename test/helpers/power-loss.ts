/**
 * Run the power-loss file system (test/faults/) as its own process over a directory and
 * drive it: cut power, stall, fail fsyncs. `powerLoss(node)` of a daemon whose data dir is
 * on it = kill -9 of the daemon, then the cut.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { request } from 'node:http'
import path from 'node:path'
import type { TestFn } from 'ava'
import type { CutReport } from '../faults/power-loss-fs'
import { leftoversUnder, makeTempDir, removeDir } from './daemon'
import { assertIntegrationPreconditions } from './preflight'
import { guardProcess, releaseProcess } from './exit-guard'
import { stopChild } from './mount-namespace'

const MAIN = path.join(__dirname, '..', 'faults', 'power-loss-main.js')
const START_TIMEOUT_MS = 15_000

export interface PowerLossStatus { dirtyPages: number; pendingNames: number; stalledMs: number; failFsyncs: number; failedFsyncs: number }

export interface PowerLossMount {
  /** Where the file system is mounted: give this to the daemon as its data dir. */
  mountpoint: string
  backing: string
  pid: number
  cut(seed?: number): Promise<CutReport>
  stall(ms: number): Promise<PowerLossStatus>
  failFsyncs(count: number): Promise<PowerLossStatus>
  status(): Promise<PowerLossStatus>
  /** Unmount and end the process (idempotent). */
  stop(): Promise<void>
}

/** Mount a power-loss file system at `mountpoint`, backed by `backing` (both made if missing). */
export async function startPowerLossFs(backing: string, mountpoint: string): Promise<PowerLossMount> {
  mkdirSync(backing, { recursive: true })
  mkdirSync(mountpoint, { recursive: true })
  const socket = `${backing}.control.sock`
  const child: ChildProcess = spawn(process.execPath, [MAIN, backing, mountpoint, socket], { stdio: ['ignore', 'pipe', 'pipe'] })
  guardProcess(child.pid!)
  child.once('exit', () => releaseProcess(child.pid!))
  let output = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`power-loss fs did not start within ${START_TIMEOUT_MS} ms: ${output}`)), START_TIMEOUT_MS)
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      output += d
      if (output.includes('ready\n')) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { output += d })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`power-loss fs exited (${code}) during start: ${output}`))
    })
  })
  const call = <T>(method: string, route: string): Promise<T> => new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, method, path: route }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`power-loss fs ${route}: ${res.statusCode} ${body}`))
        else resolve(JSON.parse(body) as T)
      })
    })
    req.once('error', reject)
    req.end()
  })
  let stopping: Promise<void> | undefined
  return {
    mountpoint, backing, pid: child.pid!,
    cut: (seed) => call<CutReport>('POST', seed === undefined ? '/cut' : `/cut?seed=${seed}`),
    stall: (ms) => call<PowerLossStatus>('POST', `/stall?ms=${ms}`),
    failFsyncs: (count) => call<PowerLossStatus>('POST', `/fail-fsync?count=${count}`),
    status: () => call<PowerLossStatus>('GET', '/status'),
    stop: () => (stopping ??= stopChild(child, 15_000).then(() => undefined)),
  }
}

/**
 * A power-loss file system for the tests of one file: mounted in a temp dir before them,
 * unmounted after; the file fails if anything is left mounted or attached under the dir.
 */
export function powerLossFsForTests(test: TestFn, prefix: string): () => PowerLossMount {
  let dir: string | undefined
  let plfs: PowerLossMount | undefined
  test.before(async () => {
    assertIntegrationPreconditions()
    dir = makeTempDir(prefix)
    plfs = await startPowerLossFs(path.join(dir, 'disk'), path.join(dir, 'mnt'))
  })
  test.after.always(async () => {
    await plfs?.stop()
    if (!dir) return
    const left = leftoversUnder(dir)
    removeDir(dir)
    if (left.length > 0) throw new Error(`left behind: ${left.join(', ')}`)
  })
  return () => {
    if (!plfs) throw new Error('the power-loss file system is not mounted (its before hook failed)')
    return plfs
  }
}
