/**
 * Concurrency checks over several views of one shared directory (the same volume mounted on
 * different nodes, or one mount given more than once): appends from every view at once, and
 * a lock held through one view as seen through another. Each function starts its own child
 * processes and ends every one of them by pid before it returns.
 *
 * An appended record is [magic "APND"][writer: u32 BE][seq: u32 BE][random][first 16 bytes
 * of the sha256 of everything before them], recordBytes long (at least 32).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'

const PYTHON = process.env.PYTHON ?? 'python3'
const STEP_TIMEOUT_MS = 20_000
/** How long a blocking lock attempt must stay blocked while the lock is held. */
const HOLD_MS = 500

const live = new Map<number, ChildProcess>()

export interface Child {
  readonly pid: number | undefined
  /** stdout, line by line, as far as read. */
  readonly lines: string[]
  stderr(): string
  send(line: string): void
  /** The first stdout line matching re; rejects if the child ends first or after timeoutMs. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>
  /** The exit code (null when a signal ended it). */
  exited(timeoutMs?: number): Promise<number | null>
  /** SIGKILL by pid unless it has exited already. */
  end(): void
}

export function startChild(file: string, args: string[], opts: SpawnOptions = {}): Child {
  const cp = spawn(file, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] })
  const pid = cp.pid
  if (pid !== undefined) live.set(pid, cp)
  const lines: string[] = []
  const waiters = new Set<() => void>()
  const wake = (): void => { for (const w of [...waiters]) w() }
  let partial = ''
  let err = ''
  let spawnError: Error | undefined
  let closed: number | null | undefined
  cp.stdout?.setEncoding('utf8').on('data', (s: string) => {
    partial += s
    for (let i = partial.indexOf('\n'); i >= 0; i = partial.indexOf('\n')) {
      lines.push(partial.slice(0, i))
      partial = partial.slice(i + 1)
    }
    wake()
  })
  cp.stderr?.setEncoding('utf8').on('data', (s: string) => { if (err.length < 20_000) err += s })
  cp.stdin?.on('error', () => { /* the child is gone; its exit says why */ })
  cp.on('error', (e) => { spawnError = e; wake() })
  cp.on('close', (code) => {
    closed = code
    if (pid !== undefined) live.delete(pid)
    wake()
  })
  const name = `${path.basename(file)} ${args.filter((a) => a.length < 80).join(' ')}`.slice(0, 160)
  const until = <T>(probe: () => T | undefined, what: string, timeoutMs: number): Promise<T> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} from ${name}; stderr: ${err.trim()}`)) }, timeoutMs)
      function check(): void {
        const v = probe()
        if (v !== undefined) {
          clearTimeout(timer); waiters.delete(check); resolve(v)
        } else if (spawnError !== undefined || closed !== undefined) {
          clearTimeout(timer); waiters.delete(check)
          reject(new Error(`${name} ended (${spawnError?.message ?? `exit ${closed}`}) before ${what}; stdout: ${lines.join(' | ')}; stderr: ${err.trim()}`))
        }
      }
      waiters.add(check)
      check()
    })
  return {
    pid,
    lines,
    stderr: () => err,
    send: (line) => { cp.stdin?.write(line + '\n') },
    waitFor: (re, timeoutMs = STEP_TIMEOUT_MS) => until(() => lines.find((l) => re.test(l)), `a line matching ${re}`, timeoutMs),
    exited: (timeoutMs = STEP_TIMEOUT_MS) => until(() => (spawnError === undefined ? closed : undefined), 'its exit', timeoutMs),
    end: () => { if (pid !== undefined && cp.exitCode === null && cp.signalCode === null) endPid(pid) },
  }
}

function endPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

/** Ends, by pid, every child started here that is still running (a caller that gave up on a step). */
export function endAllChildren(): void {
  for (const [pid, cp] of live) if (cp.exitCode === null && cp.signalCode === null) endPid(pid)
}

// ---- appends ----

const APPEND_JS = `
const fs = require('fs'), crypto = require('crypto')
const [file, writer, count, size] = process.argv.slice(1).map((a, i) => i === 0 ? a : Number(a))
const fd = fs.openSync(file, 'a')
const recs = []
for (let seq = 0; seq < count; seq++) {
  const r = Buffer.alloc(size)
  r.write('APND', 0, 'latin1'); r.writeUInt32BE(writer, 4); r.writeUInt32BE(seq, 8)
  crypto.randomFillSync(r, 12, size - 28)
  crypto.createHash('sha256').update(r.subarray(0, size - 16)).digest().copy(r, size - 16, 0, 16)
  recs.push(r)
}
process.stdout.write('ready\\n')
process.stdin.once('data', () => {
  for (const r of recs) {
    const n = fs.writeSync(fd, r)
    if (n !== size) { process.stderr.write('short write: ' + n + ' of ' + size + '\\n'); process.exit(3) }
  }
  fs.closeSync(fd)
  process.exit(0)
})
`

/** What appendFromAll wrote, for checkAppendRecords. */
export interface AppendRun {
  writers: number
  records: number
  recordBytes: number
}

/**
 * One child per dir appends recordsPerDir records to dir/file (O_APPEND, one write(2) per
 * record), all starting together; resolves once every child exited, rejects if one failed.
 */
export async function appendFromAll(dirs: string[], file: string, recordsPerDir: number, recordBytes: number, timeoutMs = 120_000): Promise<AppendRun> {
  if (recordBytes < 32) throw new Error('appendFromAll: records need at least 32 bytes')
  const children: Child[] = []
  try {
    dirs.forEach((dir, writer) => {
      children.push(startChild(process.execPath, ['-e', APPEND_JS, path.join(dir, file), String(writer), String(recordsPerDir), String(recordBytes)]))
    })
    await Promise.all(children.map((c) => c.waitFor(/^ready$/, timeoutMs)))
    for (const c of children) c.send('go')
    const codes = await Promise.all(children.map((c) => c.exited(timeoutMs)))
    const failed = codes.flatMap((code, i) => (code === 0 ? [] : [`writer ${i} (${dirs[i]}): exit ${code} ${children[i]?.stderr().trim()}`]))
    if (failed.length > 0) throw new Error(`appendFromAll: ${failed.join('; ')}`)
    return { writers: dirs.length, records: recordsPerDir, recordBytes }
  } finally {
    for (const c of children) c.end()
  }
}

export interface AppendCheck {
  ok: boolean
  size: number
  expectedSize: number
  /** Slots (index of recordBytes-sized pieces) that are not one whole record. */
  torn: number[]
  /** "writer/seq" of records not found, and of records found more than once. */
  missing: string[]
  duplicated: string[]
  /** Writers whose records are not in the order they wrote them. */
  outOfOrder: number[]
  detail: string
}

/** Every record of the run present exactly once, whole, each writer's in its order, nothing else. */
export async function checkAppendRecords(file: string, expected: AppendRun): Promise<AppendCheck> {
  const { writers, records, recordBytes: size } = expected
  const data = await fs.readFile(file)
  const count = new Map<string, number>()
  const lastSeq = new Array<number>(writers).fill(-1)
  const torn: number[] = []
  const outOfOrder = new Set<number>()
  for (let slot = 0; slot * size < data.length; slot++) {
    const r = data.subarray(slot * size, (slot + 1) * size)
    const whole = r.length === size && r.toString('latin1', 0, 4) === 'APND' &&
      createHash('sha256').update(r.subarray(0, size - 16)).digest().subarray(0, 16).equals(r.subarray(size - 16))
    const writer = whole ? r.readUInt32BE(4) : -1
    const seq = whole ? r.readUInt32BE(8) : -1
    if (!whole || writer >= writers || seq >= records) {
      torn.push(slot)
      continue
    }
    const key = `${writer}/${seq}`
    count.set(key, (count.get(key) ?? 0) + 1)
    if (seq <= (lastSeq[writer] ?? -1)) outOfOrder.add(writer)
    lastSeq[writer] = seq
  }
  const missing: string[] = []
  for (let w = 0; w < writers; w++) for (let s = 0; s < records; s++) if (!count.has(`${w}/${s}`)) missing.push(`${w}/${s}`)
  const duplicated = [...count].filter(([, n]) => n > 1).map(([k]) => k)
  const expectedSize = writers * records * size
  const ok = data.length === expectedSize && torn.length === 0 && missing.length === 0 && duplicated.length === 0 && outOfOrder.size === 0
  const few = (xs: Array<string | number>): string => `${xs.length}${xs.length ? ` (${xs.slice(0, 10).join(', ')}${xs.length > 10 ? ', ...' : ''})` : ''}`
  const detail = `${data.length} bytes of ${expectedSize}; ${writers * records - missing.length} of ${writers * records} records found; ` +
    `torn slots ${few(torn)}; missing ${few(missing)}; duplicated ${few(duplicated)}; writers out of order ${few([...outOfOrder])}`
  return { ok, size: data.length, expectedSize, torn, missing, duplicated, outOfOrder: [...outOfOrder], detail }
}

// ---- locks ----

export type LockKind = 'lockf' | 'flock'

/** argv: kind (lockf|flock), op (hold|try|wait), mode (ex|sh), start, len, path. */
const LOCK_PY = `
import errno, fcntl, os, sys, time
kind, op, mode, start, length, path = sys.argv[1:7]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
flag = fcntl.LOCK_EX if mode == 'ex' else fcntl.LOCK_SH
def lock(f):
    if kind == 'lockf':
        fcntl.lockf(fd, f, int(length), int(start))
    else:
        fcntl.flock(fd, f)
if op == 'try':
    try:
        lock(flag | fcntl.LOCK_NB)
        print('ok', flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
elif op == 'hold':
    lock(flag)
    print('locked', flush=True)
    sys.stdin.readline()
    print('releasing %.6f' % time.monotonic(), flush=True)
    os._exit(0)
else:
    print('waiting', flush=True)
    lock(flag)
    print('got %.6f' % time.monotonic(), flush=True)
    os._exit(0)
`

export interface LockOptions {
  shared?: boolean
  /** Byte range, lockf only (len 0: to the end of the file and beyond). */
  start?: number
  len?: number
}

const lockArgs = (kind: LockKind, op: string, file: string, o: LockOptions): string[] =>
  ['-c', LOCK_PY, kind, op, o.shared ? 'sh' : 'ex', String(o.start ?? 0), String(o.len ?? 0), file]

/** A child holding the lock until it is sent a line, then exiting (which releases it). */
export async function holdLock(kind: LockKind, file: string, o: LockOptions = {}): Promise<Child> {
  const c = startChild(PYTHON, lockArgs(kind, 'hold', file, o))
  try {
    await c.waitFor(/^locked$/)
    return c
  } catch (err) {
    c.end()
    throw err
  }
}

/** A child blocked in a lock until it gets it: it prints `waiting`, then `got <time>` and exits. */
export function waitForLock(kind: LockKind, file: string, o: LockOptions = {}): Child {
  return startChild(PYTHON, lockArgs(kind, 'wait', file, o))
}

/** A non-blocking attempt from a child of its own: 'ok', or the errno name (EAGAIN, EACCES, ...). */
export async function tryLock(kind: LockKind, file: string, o: LockOptions = {}): Promise<string> {
  const c = startChild(PYTHON, lockArgs(kind, 'try', file, o))
  try {
    const answer = await c.waitFor(/./)
    await c.exited()
    return answer
  } finally {
    c.end()
  }
}

export interface LockAcross {
  kind: LockKind
  /** B's non-blocking attempt while A held the lock: 'ok' or the errno name. */
  whileHeld: string
  /** B's non-blocking attempt after A exited. */
  afterRelease: string
  /** A blocking attempt in B, started while A held the lock, returned before A let go. */
  gotBeforeRelease: boolean
  /** From A letting go to B's blocking attempt returning (monotonic clock of this host); null: never. */
  waitedAfterReleaseMs: number | null
  /** All as a lock must: refused while held, granted after, the blocking attempt waited for the release. */
  ok: boolean
  detail: string
}

async function lockAcross(kind: LockKind, dirA: string, dirB: string, file: string): Promise<LockAcross> {
  const a = path.join(dirA, file)
  const b = path.join(dirB, file)
  const result: LockAcross = { kind, whileHeld: '', afterRelease: '', gotBeforeRelease: false, waitedAfterReleaseMs: null, ok: false, detail: '' }
  const children: Child[] = []
  try {
    const first = await holdLock(kind, a)
    children.push(first)
    result.whileHeld = await tryLock(kind, b)
    first.send('release')
    await first.exited()
    result.afterRelease = await tryLock(kind, b)
    const second = await holdLock(kind, a)
    children.push(second)
    const waiter = startChild(PYTHON, lockArgs(kind, 'wait', b, {}))
    children.push(waiter)
    await waiter.waitFor(/^waiting$/)
    await new Promise((r) => setTimeout(r, HOLD_MS))
    result.gotBeforeRelease = waiter.lines.some((l) => l.startsWith('got '))
    second.send('release')
    const released = Number((await second.waitFor(/^releasing /)).split(' ')[1])
    const got = Number((await waiter.waitFor(/^got /)).split(' ')[1])
    await waiter.exited()
    result.waitedAfterReleaseMs = Math.round((got - released) * 1000)
  } catch (err) {
    result.detail = `error: ${(err as Error).message}; `
  } finally {
    for (const c of children) c.end()
  }
  result.ok = ['EAGAIN', 'EWOULDBLOCK', 'EACCES'].includes(result.whileHeld) && result.afterRelease === 'ok' &&
    !result.gotBeforeRelease && result.waitedAfterReleaseMs !== null && result.waitedAfterReleaseMs >= 0
  result.detail += `${kind}: while held ${result.whileHeld || '-'}, after release ${result.afterRelease || '-'}, ` +
    `blocking attempt ${result.gotBeforeRelease ? `returned within ${HOLD_MS} ms while held` : `still waiting after ${HOLD_MS} ms`}, ` +
    `got it ${result.waitedAfterReleaseMs ?? '-'} ms after the release`
  return result
}

/** fcntl (POSIX record) lock: exclusive in a child on dirA's view, tried from dirB's view. */
export const lockBlocksAcross = (dirA: string, dirB: string, file: string): Promise<LockAcross> => lockAcross('lockf', dirA, dirB, file)

/** The same with flock(2). */
export const flockBlocksAcross = (dirA: string, dirB: string, file: string): Promise<LockAcross> => lockAcross('flock', dirA, dirB, file)
