// A private mount namespace for integration tests, plus the small process helpers the
// tests around it need (run a command with a bound, stop a process by its pid).
//
// The namespace is held open by one process, `unshare --mount --propagation private
// sleep infinity`, that the test spawns and remembers by pid. Everything else enters it
// with `nsenter -t <holder> -m -- <command>`; nsenter execs the command for a mount
// namespace alone, so the pid the test sees is the command's own pid. Mounts made inside
// (a tmpfs over /run, pxd's FUSE files, loop-backed ext4, dockerd's layers) are invisible to
// the host and vanish with the namespace once its last process is gone.
import { spawn, type ChildProcess } from 'node:child_process'
import { guardProcess, releaseProcess } from './exit-guard'
import { readFileSync, readdirSync, readlinkSync } from 'node:fs'

export interface RunOptions {
  timeoutMs?: number
  env?: Record<string, string>
  input?: string
}

export interface RunResult {
  command: string[]
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  timedOut: boolean
}

/** Runs a command to completion (bounded: SIGKILL after timeoutMs). Never throws for a non-zero exit. */
export function runCommand(command: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [file, ...args] = command
  if (file === undefined) return Promise.reject(new Error('runCommand: empty command'))
  const timeoutMs = opts.timeoutMs ?? 30_000
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    if (opts.input !== undefined) child.stdin?.end(opts.input)
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(new Error(`cannot run ${command.join(' ')}: ${err.message}`))
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ command, code, signal, stdout, stderr, timedOut })
    })
  })
}

/** One line summary of a finished command, for assertion messages. */
export function describeResult(r: RunResult): string {
  const status = r.timedOut ? 'timed out' : r.signal !== null ? `killed by ${r.signal}` : `exit ${String(r.code)}`
  return `${r.command.join(' ')}: ${status}\nstdout: ${r.stdout.trim()}\nstderr: ${r.stderr.trim()}`
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Resolves true once the child has exited, false if it is still running after timeoutMs. */
export function waitForChildExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit)
      resolve(false)
    }, timeoutMs)
    const onExit = (): void => {
      clearTimeout(timer)
      resolve(true)
    }
    child.once('exit', onExit)
  })
}

/** Polls a pid that is not our child (no exit event) until it is gone or timeoutMs passes. */
export async function waitForPidExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (!isAlive(pid) || isZombie(pid)) return true
    if (Date.now() >= deadline) return false
    await sleep(50)
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
  } catch {
    return false
  }
}

/**
 * Stops one process we started, by its pid: SIGTERM, wait up to termTimeoutMs, then SIGKILL
 * and wait up to killTimeoutMs. Returns how it ended, for the test log.
 */
export async function stopChild(
  child: ChildProcess,
  termTimeoutMs: number,
  killTimeoutMs = 5_000,
): Promise<'already exited' | 'exited after SIGTERM' | 'killed with SIGKILL' | 'still running after SIGKILL'> {
  if (child.exitCode !== null || child.signalCode !== null) return 'already exited'
  if (child.pid === undefined) return 'already exited'
  try {
    process.kill(child.pid, 'SIGTERM')
  } catch {
    /* exited meanwhile */
  }
  if (await waitForChildExit(child, termTimeoutMs)) return 'exited after SIGTERM'
  try {
    process.kill(child.pid, 'SIGKILL')
  } catch {
    /* exited meanwhile */
  }
  return (await waitForChildExit(child, killTimeoutMs)) ? 'killed with SIGKILL' : 'still running after SIGKILL'
}

export interface MountEntry {
  mountPoint: string
  fsType: string
  source: string
}

export interface MountNamespace {
  /** pid of the `sleep infinity` that holds the namespace open */
  readonly holderPid: number
  /** prefix that runs a command inside the namespace: nsenter -t <holder> -m -- */
  readonly prefix: string[]
  /** a path inside the namespace as the host can open it (through /proc/<holder>/root) */
  hostPath(path: string): string
  /** runs a command inside the namespace */
  run(command: string[], opts?: RunOptions): Promise<RunResult>
  /** mkdir -p + mount -t tmpfs inside the namespace; throws with the command's output on failure */
  mountTmpfs(target: string): Promise<void>
  /** the namespace's mount table */
  mounts(): MountEntry[]
  /** pids of processes inside the namespace other than the holder */
  processes(): number[]
  /** kills the holder (by pid) and waits for it */
  close(): Promise<void>
}

export const UNSHARE = 'unshare'
export const NSENTER = 'nsenter'

function mountNamespaceOf(pid: number | 'self'): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/mnt`)
  } catch {
    return undefined
  }
}

// /proc/<pid>/mountinfo escapes space, tab, newline and backslash as \ooo.
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const [left, right] = line.split(' - ')
    if (left === undefined || right === undefined) continue
    const mountPoint = left.split(' ')[4]
    const [fsType, source] = right.split(' ')
    if (mountPoint === undefined || fsType === undefined) continue
    entries.push({ mountPoint: unescapeMountField(mountPoint), fsType, source: unescapeMountField(source ?? '') })
  }
  return entries
}

/** Starts the holder and waits (bounded) until it is in a mount namespace of its own. */
export async function createMountNamespace(opts: { timeoutMs?: number } = {}): Promise<MountNamespace> {
  const timeoutMs = opts.timeoutMs ?? 5_000
  const holder = spawn(UNSHARE, ['--mount', '--propagation', 'private', 'sleep', 'infinity'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  if (holder.pid !== undefined) {
    guardProcess(holder.pid, 'SIGKILL')
    holder.once('exit', () => releaseProcess(holder.pid!))
  }
  let holderStderr = ''
  holder.stderr?.setEncoding('utf8').on('data', (d: string) => { holderStderr += d })
  const spawned = await new Promise<Error | undefined>((resolve) => {
    holder.once('spawn', () => resolve(undefined))
    holder.once('error', (err) => resolve(err))
  })
  if (spawned !== undefined || holder.pid === undefined) {
    throw new Error(`cannot start ${UNSHARE}: ${spawned?.message ?? 'no pid'}`)
  }
  const holderPid = holder.pid
  const ours = mountNamespaceOf('self')
  const deadline = Date.now() + timeoutMs
  // unshare switches namespace and then execs sleep; wait until both have happened.
  for (;;) {
    const ns = mountNamespaceOf(holderPid)
    let comm = ''
    try {
      comm = readFileSync(`/proc/${holderPid}/comm`, 'utf8').trim()
    } catch {
      /* not there yet or gone */
    }
    if (ns !== undefined && ns !== ours && comm === 'sleep') break
    if (holder.exitCode !== null || holder.signalCode !== null || Date.now() >= deadline) {
      await stopChild(holder, 1_000)
      throw new Error(
        `unshare --mount did not give pid ${holderPid} a mount namespace of its own within ${timeoutMs} ms ` +
          `(exit ${String(holder.exitCode)}, stderr: ${holderStderr.trim()})`,
      )
    }
    await sleep(20)
  }
  const holderNs = mountNamespaceOf(holderPid)
  const prefix = [NSENTER, '-t', String(holderPid), '-m', '--']

  const ns: MountNamespace = {
    holderPid,
    prefix,
    hostPath: (path) => `/proc/${holderPid}/root${path.startsWith('/') ? '' : '/'}${path}`,
    run: (command, runOpts) => runCommand([...prefix, ...command], runOpts),
    async mountTmpfs(target) {
      for (const command of [['mkdir', '-p', target], ['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'tmpfs', target]]) {
        const r = await ns.run(command, { timeoutMs: 10_000 })
        if (r.code !== 0) throw new Error(`in the test mount namespace: ${describeResult(r)}`)
      }
    },
    mounts: () => parseMountInfo(readFileSync(`/proc/${holderPid}/mountinfo`, 'utf8')),
    processes() {
      const pids: number[] = []
      if (holderNs === undefined) return pids
      for (const name of readdirSync('/proc')) {
        if (!/^\d+$/.test(name)) continue
        const pid = Number(name)
        if (pid === holderPid) continue
        if (mountNamespaceOf(pid) === holderNs && !isZombie(pid)) pids.push(pid)
      }
      return pids
    },
    async close() {
      const how = await stopChild(holder, 2_000)
      if (how === 'still running after SIGKILL') throw new Error(`namespace holder ${holderPid} did not exit`)
    },
  }
  return ns
}
