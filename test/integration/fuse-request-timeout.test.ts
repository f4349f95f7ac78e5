/**
 * The bound on a FUSE request's wait (--fuse-request-timeout, FUSE_REQUEST_TIMEOUT of Linux
 * 6.14), with pxd killed -9 while a stand-in for systemd's fd store keeps the session:
 * - no successor comes: a read on the volume fails within the bound (plus the kernel's check
 *   period) instead of waiting for ever in D state; pxd started later lets the dead session go
 *   (and the store with it), cleans up, and the volume mounts again with its data;
 * - a successor comes within the bound: the read is answered, and the connection is still up
 *   well past the bound.
 * The kernel checks for expired requests every 15 s and never bounds a request below that
 * (fs/fuse: FUSE_TIMEOUT_TIMER_FREQ), so a request fails between max(bound, 15 s) and 15 s
 * later. A kernel without the feature fails these tests, saying so.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { existsSync, promises as fs } from 'node:fs'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { cleanupRunDir, leftoversUnder, makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { startFdStore, type FdStore } from '../helpers/fd-store'
import { pluginOk, sha, writeSynced } from '../helpers/volume-io'

assertIntegrationPreconditions()

/** The sysctls that came with request timeouts (Linux 6.14). */
const KERNEL_FEATURE = '/proc/sys/fs/fuse/max_request_timeout'
/** How often the kernel looks for expired requests, and the least bound it enforces. */
const KERNEL_CHECK_S = 15
/** What the test's own machinery may add (a loaded 2-core machine). */
const SLACK_S = 15

interface Read { code: number | null; stderr: string; ms: number }

/** `dd` of one block of `file` with O_DIRECT (past the page cache, to the FUSE server) in a child process. */
function readBlock(file: string): { done: Promise<Read>; pid: number } {
  const start = Date.now()
  const child = spawn('dd', [`if=${file}`, 'of=/dev/null', 'bs=4096', 'count=1', 'skip=7', 'iflag=direct'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const done = new Promise<Read>((resolve) => child.once('exit', (code) => resolve({ code, stderr: stderr.trim(), ms: Date.now() - start })))
  return { done, pid: child.pid! }
}

/** The read's outcome, or undefined if it has not ended within `ms`. */
function within(read: Promise<Read>, ms: number): Promise<Read | undefined> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ms) })
  return Promise.race([read, late]).finally(() => clearTimeout(timer))
}

/** A daemon under the fd store with `timeout`, a mounted volume holding a synced file; fails (never skips) without the kernel feature. */
async function mountedUnderStore(t: ExecutionContext, dir: string, store: FdStore, timeout: number): Promise<{ daemon: Daemon; file: string; written: string } | undefined> {
  if (!existsSync(KERNEL_FEATURE)) {
    t.fail(`this kernel has no FUSE request timeouts (FUSE_REQUEST_TIMEOUT, Linux 6.14): ${KERNEL_FEATURE} is missing`)
    return undefined
  }
  const daemon = await startDaemon({ dir, extraArgs: ['--fuse-request-timeout', String(timeout)], env: { NOTIFY_SOCKET: store.socket, PXD_FD_STORE: '1' } })
  await store.waitFor('pxd-fuse')
  if (!new RegExp(`a FUSE request unanswered for ${timeout} s makes the kernel abort the connection`).test(daemon.logs())) {
    t.fail(`the kernel did not take the request timeout at FUSE_INIT (FUSE_REQUEST_TIMEOUT not offered); pxd said:\n${daemon.logs()}`)
    return { daemon, file: '', written: '' }
  }
  await pluginOk(daemon, '/VolumeDriver.Create', { Name: 'bounded', Opts: { size: '64M' } })
  const mountpoint = (await pluginOk(daemon, '/VolumeDriver.Mount', { Name: 'bounded', ID: 'b1' }))['Mountpoint'] as string
  const file = path.join(mountpoint, 'data.bin')
  const data = randomBytes(1024 * 1024)
  await writeSynced(file, data)
  return { daemon, file, written: sha(data) }
}

/**
 * Takes down what a dead connection left and checks nothing is left. The stored descriptor
 * goes first: closing it ends the connection, so no I/O still waiting on it can hold up the
 * unmounts and loop detaches after it.
 */
async function cleanUp(t: ExecutionContext, dir: string, store: FdStore, daemon: Daemon | undefined, reader?: Promise<Read>): Promise<void> {
  await daemon?.stop()
  await store.close()
  if (reader) await within(reader, SLACK_S * 1000)
  if (daemon) cleanupRunDir(daemon.runDir)
  t.deepEqual(leftoversUnder(dir), [], 'nothing is left mounted or attached')
  removeDir(dir)
}

test.serial('kill -9 and no successor: a read on the volume fails within the bound instead of hanging', async (t) => {
  const timeout = 5
  const dir = makeTempDir('pxd-fuse-timeout-')
  const store = startFdStore(dir)
  let daemon: Daemon | undefined
  let reader: { done: Promise<Read>; pid: number } | undefined
  try {
    const m = await mountedUnderStore(t, dir, store, timeout)
    daemon = m?.daemon
    if (!m || m.file === '') return
    await m.daemon.kill()
    reader = readBlock(m.file)
    const deadlineS = Math.max(timeout, KERNEL_CHECK_S) + KERNEL_CHECK_S + SLACK_S
    const read = await within(reader.done, deadlineS * 1000)
    if (!read) return t.fail(`the read still waits after ${deadlineS} s: the kernel did not abort the connection`)
    t.log(`the read failed after ${(read.ms / 1000).toFixed(1)} s (bound ${timeout} s): ${read.stderr}`)
    t.not(read.code, 0, 'the read fails')
    t.regex(read.stderr, /Input\/output error|Transport endpoint is not connected|Software caused connection abort/, 'with EIO, ENOTCONN or ECONNABORTED')
    t.true(read.ms >= timeout * 1000, 'not before the bound')
    // The connection is gone: the next read fails at once.
    const next = await within(readBlock(m.file).done, SLACK_S * 1000)
    t.truthy(next, 'a later read does not wait')
    t.not(next?.code, 0)

    // The next start (systemd's, later) gets the dead session from the store: it lets it go and starts afresh.
    const removals = () => store.messages.filter((msg) => msg.includes('FDSTOREREMOVE=1') && msg.includes('FDNAME=pxd-fuse')).length
    const removedBefore = removals()
    const startWith = store.startWith()
    daemon = await startDaemon({ dir, ...startWith, env: { ...startWith.env, PXD_FD_STORE: '1' }, extraArgs: ['--fuse-request-timeout', String(timeout)] })
    t.regex(daemon.logs(), /the kernel aborted the FUSE session the service manager kept/)
    t.true(removals() > removedBefore, 'the store is told to let the dead session go')
    t.deepEqual(leftoversUnder(path.join(daemon.runDir, 'mounts')), [], 'the dead mount is gone')
    const again = await pluginOk(daemon, '/VolumeDriver.Mount', { Name: 'bounded', ID: 'b2' })
    t.is(sha(await fs.readFile(path.join(again['Mountpoint'] as string, 'data.bin'))), m.written, 'the fsynced data is there')
    await pluginOk(daemon, '/VolumeDriver.Unmount', { Name: 'bounded', ID: 'b2' })
  } finally {
    await cleanUp(t, dir, store, daemon, reader?.done)
  }
})

test.serial('kill -9 and a successor within the bound: the waiting read is answered and the connection stays up', async (t) => {
  // The least bound the kernel enforces: the successor has to answer within it.
  const timeout = KERNEL_CHECK_S
  const dir = makeTempDir('pxd-fuse-timeout-')
  const store = startFdStore(dir)
  let daemon: Daemon | undefined
  try {
    const m = await mountedUnderStore(t, dir, store, timeout)
    daemon = m?.daemon
    if (!m || m.file === '') return
    await m.daemon.kill()
    const killedAt = Date.now()
    const reader = readBlock(m.file)
    await new Promise((resolve) => setTimeout(resolve, 1000))
    t.is(await within(reader.done, 0), undefined, 'the read waits while no pxd runs')
    const next = await startDaemon({ dir, ...store.startWith(), env: { ...store.startWith().env, PXD_FD_STORE: '1' }, extraArgs: ['--fuse-request-timeout', String(timeout)] })
    daemon = next
    t.regex(next.logs(), /the service manager kept the FUSE session/)
    t.regex(next.logs(), new RegExp(`FUSE device directory taken over from the previous pxd.*"requestTimeout":${timeout}|"requestTimeout":${timeout}.*FUSE device directory taken over`), 'the successor knows the bound the connection keeps')
    const read = await within(reader.done, timeout * 1000)
    t.truthy(read, 'the read is answered')
    t.log(`the read took ${((read?.ms ?? 0) / 1000).toFixed(1)} s across the restart`)
    t.is(read?.code, 0, read?.stderr)
    t.true(Date.now() - killedAt < timeout * 1000, 'the successor answered within the bound')
    // Past two of the kernel's checks after the kill, the connection still serves.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, killedAt + (2 * KERNEL_CHECK_S + 2) * 1000 - Date.now())))
    const later = await within(readBlock(m.file).done, SLACK_S * 1000)
    t.is(later?.code, 0, later?.stderr ?? 'a read after the kernel checked again still waits')
    await pluginOk(next, '/VolumeDriver.Unmount', { Name: 'bounded', ID: 'b1' })
    await pluginOk(next, '/VolumeDriver.Remove', { Name: 'bounded' })
  } finally {
    await cleanUp(t, dir, store, daemon)
  }
})
