/**
 * How a starting pxd gets the FUSE session of the one before it (a live restart):
 *
 * - from the service manager: under systemd with a file-descriptor store, the running pxd
 *   stored its /dev/fuse descriptor (FDSTORE=1, FDNAME=pxd-fuse) right after mounting, and
 *   systemd passes it to the next start of the unit (LISTEN_FDS, LISTEN_FDNAMES), after a
 *   `systemctl restart` as after a crash;
 * - from the running pxd itself (`pxd --takeover`): the successor binds a datagram socket
 *   in the run dir, asks the running pxd over its handoff socket (handoff-server.ts) to hand
 *   over, receives the descriptor there (SCM_RIGHTS), and goes on once the connection closes,
 *   that is once its predecessor let go of everything (dir locks, ports, kvdb).
 *
 * Either way the session file (session-file.ts) says what the descriptor serves.
 */
import net from 'node:net'
import path from 'node:path'
import { promises as fs } from 'node:fs'
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import { native } from '../native/binding'
import { readSession, type LiveSession } from './session-file'
import { KEYS_FD_NAME, KeysFile, parseHandedKeys, type HandedKeys } from './handed-keys'
import { SHARE_FD_PREFIX } from '../shares/share-handoff'

/** The name the descriptor is stored under in the service manager's fd store. */
export const FD_NAME = 'pxd-fuse'

/** A descriptor with the name it travels under. */
export interface NamedFd { name: string; fd: number }

export interface InheritedSession {
  fd: number
  session: LiveSession
  /** The predecessor handed over cleanly (nothing in flight), or died (its unanswered requests must be sent again). */
  clean: boolean
  from: 'fd-store' | 'handoff'
  /** Keys the successor could not open itself (handed-keys.ts). */
  keys: HandedKeys
  /** Under the fd store: the memory file they came in, stored there already (kept for reuse). */
  keysFile?: KeysFile
  /** Client connections of shared volumes (session.shares), by name; the successor owns them. */
  shareFds: Map<string, number>
}

export function handoffSocketOf(runDir: string): string {
  return path.join(runDir, 'handoff.sock')
}

/**
 * The session passed by the service manager, if any; descriptors that are not ours are closed.
 * One kept but not servable (the kernel aborted it, or its table is gone) is closed and
 * `forget` is called: the store must let go of it too. Shared volumes' client connections
 * (`pxd-share-*`) are taken out of the store (`forgetShares`) in any case.
 */
export async function fromServiceManager(runDir: string, log: Logger, forget: () => void = () => undefined, forgetShares: (names: string[]) => void = () => undefined): Promise<InheritedSession | undefined> {
  const env = process.env
  const count = Number(env['LISTEN_FDS'] ?? 0)
  const forUs = Number(env['LISTEN_PID']) === process.pid
  const names = (env['LISTEN_FDNAMES'] ?? '').split(':')
  for (const key of ['LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES']) delete env[key]
  if (!forUs || !Number.isInteger(count) || count < 1) return undefined
  let fd: number | undefined
  let keysFile: KeysFile | undefined
  const shareFds = new Map<string, number>()
  for (let i = 0; i < count; i++) {
    const name = names[i] ?? ''
    if (name === FD_NAME && fd === undefined) fd = 3 + i
    else if (name === KEYS_FD_NAME && keysFile === undefined) keysFile = new KeysFile(3 + i)
    else if (name.startsWith(SHARE_FD_PREFIX) && !shareFds.has(name)) shareFds.set(name, 3 + i)
    else native.closeDescriptor(3 + i)
  }
  const closeShares = () => {
    for (const shareFd of shareFds.values()) native.closeDescriptor(shareFd)
    forgetShares([...shareFds.keys()])
  }
  if (fd === undefined) {
    keysFile?.close()
    closeShares()
    return undefined
  }
  if (native.fuseSessionAborted(fd)) {
    // Its mounts only fail now: letting it go, the start cleans them up and mounts afresh.
    native.closeDescriptor(fd)
    keysFile?.close()
    closeShares()
    forget()
    log.warn({ fd }, 'the kernel aborted the FUSE session the service manager kept (a request waited past --fuse-request-timeout while no pxd served it): starting without it; its volumes are taken down and can be mounted again')
    return undefined
  }
  try {
    const session = await readSession(runDir)
    log.info({ fd, volumes: session.volumes.length, handedOff: session.handedOff, from: session.pid }, 'the service manager kept the FUSE session: taking it over')
    let keys: HandedKeys = {}
    try {
      keys = keysFile?.read() ?? {}
    } catch (err) {
      log.error({ err }, 'the keys kept beside the FUSE session cannot be read: volumes opened with a passphrase are not taken over')
    }
    // The client connections are the successor's now: the store lets go of them (a crash later ends them).
    forgetShares([...shareFds.keys()])
    return { fd, session, clean: session.handedOff, from: 'fd-store', keys, ...(keysFile ? { keysFile } : {}), shareFds }
  } catch (err) {
    // Without its table the session cannot be served: letting it go ends it (its mounts fail, the start cleans them up).
    native.closeDescriptor(fd)
    keysFile?.close()
    closeShares()
    forget()
    log.error({ err }, 'the service manager kept a FUSE session, but not what it serves: starting without it')
    return undefined
  }
}

/** Ask the pxd running on `runDir` to hand its session over; resolves once it let go of everything. */
export async function takeOver(runDir: string, version: string, log: Logger, timeoutMs = 60_000): Promise<InheritedSession> {
  const control = handoffSocketOf(runDir)
  const inbox = path.join(runDir, `takeover-${process.pid}.sock`)
  const st = await fs.stat(control).catch(() => undefined)
  if (!st?.isSocket()) throw pxdError('HANDOFF_FAILED', `no running pxd answers at ${control}: there is no handoff socket (is pxd running with --run-dir ${runDir}?)`)
  await fs.rm(inbox, { force: true })
  const inboxFd = native.bindDatagram(inbox)
  let received: number | undefined
  const shareFds = new Map<string, number>()
  try {
    const conn = net.createConnection(control)
    const closed = new Promise<string>((resolve, reject) => {
      let text = ''
      conn.setEncoding('utf8')
      conn.on('data', (chunk: string) => { text += chunk })
      conn.on('error', (err) => reject(pxdError('HANDOFF_FAILED', `no running pxd answers at ${control}: ${err.message}`, err)))
      conn.on('close', () => resolve(text))
    })
    closed.catch(() => undefined)
    await new Promise<void>((resolve, reject) => {
      conn.once('connect', resolve)
      conn.once('error', reject)
    }).catch(() => closed)
    conn.write(JSON.stringify({ takeover: inbox, version, pid: process.pid }) + '\n')
    log.info({ control }, 'asked the running pxd to hand over its FUSE session')
    const message = await Promise.race([
      native.receiveDatagram(inboxFd, timeoutMs),
      // The descriptor may still be on its way when the connection closes: a refusal says so, silence waits a moment.
      closed.then(async (text) => {
        if (refusalOf(text) === '') await new Promise((resolve) => setTimeout(resolve, 2_000))
        throw pxdError('HANDOFF_FAILED', `the running pxd did not hand over: ${refusalOf(text) || 'it closed the connection'}`)
      }),
    ])
    received = message.fds[0]
    const payload = JSON.parse(message.payload) as { fdname?: unknown; fdnames?: unknown; keys?: unknown }
    const fdnames = Array.isArray(payload.fdnames) ? payload.fdnames : []
    message.fds.slice(1).forEach((extra, i) => {
      const name = fdnames[i + 1]
      if (typeof name === 'string' && name.startsWith(SHARE_FD_PREFIX) && !shareFds.has(name)) shareFds.set(name, extra)
      else native.closeDescriptor(extra)
    })
    if (received === undefined || payload.fdname !== FD_NAME) throw pxdError('HANDOFF_FAILED', 'the running pxd sent no FUSE session')
    const keys = parseHandedKeys(payload.keys)
    const text = await withTimeout(closed, timeoutMs, 'the running pxd did not finish stopping')
    if (refusalOf(text) !== '') throw pxdError('HANDOFF_FAILED', `the running pxd failed while handing over: ${refusalOf(text)}`)
    const session = await readSession(runDir)
    return { fd: received, session, clean: session.handedOff, from: 'handoff', keys, shareFds }
  } catch (err) {
    if (received !== undefined) native.closeDescriptor(received)
    for (const shareFd of shareFds.values()) native.closeDescriptor(shareFd)
    throw err
  } finally {
    native.closeDescriptor(inboxFd)
    await fs.rm(inbox, { force: true })
  }
}

/** The error lines of the predecessor's answer ({"error": "..."}), joined; '' when none. */
function refusalOf(text: string): string {
  const errors: string[] = []
  for (const line of text.split('\n')) {
    try {
      const e = (JSON.parse(line) as { error?: unknown }).error
      if (typeof e === 'string') errors.push(e)
    } catch {
      // not a line of ours
    }
  }
  return errors.join('; ')
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(pxdError('HANDOFF_FAILED', `${what} within ${ms} ms`)), ms)
    p.then((v) => { clearTimeout(t); resolve(v) }, (e) => { clearTimeout(t); reject(e) })
  })
}
