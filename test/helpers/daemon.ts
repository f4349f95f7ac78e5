/**
 * Start a real pxd daemon as a separate process with its own temp dirs, plugin socket
 * and free API port; stop it by its pid. If it does not stop cleanly, whatever it left
 * mounted or attached under its run dir is removed, so no test leaks mounts or loops.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { pluginCall } from './plugin-client'
import { DAEMON_NODE_FLAGS } from '../../src/cli/node-flags'
import { PXD_BIN } from './paths'
import { stopChild } from './mount-namespace'
import { guardProcess, releaseProcess } from './exit-guard'

export interface DaemonOptions {
  dir?: string
  pluginSocket?: string
  commandPrefix?: string[]
  extraArgs?: string[]
  /** Extra environment; PXD_CONFIG is /dev/null unless set here, so that a host's /etc/pxd/pxd.conf never reaches a test daemon. */
  env?: Record<string, string>
  /** Flags for node itself (e.g. --cpu-prof when profiling the daemon). */
  nodeArgs?: string[]
  nodeId?: string
  apiPort?: number
  /** The address the API listens on (default 127.0.0.1); beyond loopback it needs --api-token-file. */
  apiHost?: string
  /** bin/pxd of another build (another version) in place of this checkout's. */
  bin?: string
  /** A pxd this one takes over from (--takeover): ready only once that one exited and this one answers. */
  after?: ChildProcess
  /** Descriptors the daemon inherits as 3, 4, ... (what a service manager passes with LISTEN_FDS). */
  inheritFds?: number[]
}

export interface Daemon {
  pid: number
  dir: string
  dataDir: string
  runDir: string
  pluginSocket: string
  apiUrl: string
  apiPort: number
  child: ChildProcess
  logs(): string
  stop(): Promise<void>
  /** SIGKILL, as a crash would. Leaves its mounts behind for the next start to clean. */
  kill(): Promise<void>
}

export function makeTempDir(prefix = 'pxd-test-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix))
}

/** Ports this process handed out: a port closed again may come back from the kernel before its taker binds it. */
const handedOut = new Set<number>()

/** A free port on 127.0.0.1, never one this process handed out before (an API and a peer port of one node could collide). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer()
      srv.once('error', reject)
      srv.listen(0, '127.0.0.1', () => {
        const p = (srv.address() as net.AddressInfo).port
        srv.close(() => resolve(p))
      })
    })
    if (handedOut.has(port)) continue
    handedOut.add(port)
    return port
  }
}

const START_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 60_000

export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const dir = opts.dir ?? makeTempDir()
  const dataDir = path.join(dir, 'data')
  const runDir = path.join(dir, 'run')
  const pluginSocket = opts.pluginSocket ?? path.join(dir, 'plugins', 'pxd.sock')
  const apiPort = opts.apiPort ?? (await freePort())
  const args = [
    opts.bin ?? PXD_BIN,
    '--data-dir', dataDir,
    '--run-dir', runDir,
    '--plugin-socket', pluginSocket,
    '--api-listen', `${opts.apiHost ?? '127.0.0.1'}:${apiPort}`,
    '--node-id', opts.nodeId ?? 'node-a',
    ...(opts.extraArgs ?? []),
  ]
  const command = [...(opts.commandPrefix ?? []), process.execPath, ...DAEMON_NODE_FLAGS, ...(opts.nodeArgs ?? []), ...args]
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe', ...(opts.inheritFds ?? [])], env: { ...process.env, PXD_CONFIG: '/dev/null', ...opts.env } })
  guardProcess(child.pid!)
  child.once('exit', () => releaseProcess(child.pid!))
  let output = ''
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { output += d })
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { output += d })

  const daemon: Daemon = {
    pid: child.pid!,
    dir, dataDir, runDir, pluginSocket, apiPort,
    apiUrl: `http://${opts.apiHost ?? '127.0.0.1'}:${apiPort}`,
    child,
    logs: () => output,
    stop: async () => {
      await stopChild(child, STOP_TIMEOUT_MS)
      if (leftoversUnder(runDir).length > 0) cleanupRunDir(runDir)
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid!, 'SIGKILL')
        await new Promise((resolve) => child.once('exit', resolve))
      }
    },
  }

  const deadline = Date.now() + START_TIMEOUT_MS
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`pxd exited during start (${child.exitCode ?? child.signalCode}):\n${output}`)
    }
    const predecessorGone = !opts.after || opts.after.exitCode !== null || opts.after.signalCode !== null
    if (predecessorGone) try {
      const reply = await pluginCall(pluginSocket, '/Plugin.Activate', {})
      if (reply.status === 200) return daemon
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await daemon.stop()
      throw new Error(`pxd did not answer on ${pluginSocket} within ${START_TIMEOUT_MS} ms:\n${output}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Remove mounts under a run dir and detach loops backed by its FUSE files (after a crash or a hung stop). */
export function cleanupRunDir(runDir: string): void {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '')
  for (const target of mounts.filter((t) => t.startsWith(path.join(runDir, 'mounts') + '/')).reverse()) {
    try { execFileSync('umount', ['--lazy', target], { stdio: 'ignore' }) } catch { /* already gone */ }
  }
  try {
    const list = JSON.parse(execFileSync('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'], { encoding: 'utf8' }) || '{}') as { loopdevices?: Array<{ name: string; 'back-file': string }> }
    for (const l of list.loopdevices ?? []) {
      if ((l['back-file'] ?? '').startsWith(path.join(runDir, 'dev') + '/')) {
        try { execFileSync('losetup', ['--detach', l.name], { stdio: 'ignore' }) } catch { /* already gone */ }
      }
    }
  } catch { /* losetup missing: nothing attached */ }
  if (mounts.includes(path.join(runDir, 'dev'))) {
    try { execFileSync('umount', ['--lazy', path.join(runDir, 'dev')], { stdio: 'ignore' }) } catch { /* already gone */ }
  }
}

/** What is still mounted under a dir or attached to a file under it. */
export function leftoversUnder(dir: string): string[] {
  const out: string[] = []
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const target = line.split(' ')[1] ?? ''
    if (target.startsWith(dir + '/')) out.push(`mount ${target}`)
  }
  try {
    const list = JSON.parse(execFileSync('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'], { encoding: 'utf8' }) || '{}') as { loopdevices?: Array<{ name: string; 'back-file': string }> }
    for (const l of list.loopdevices ?? []) if ((l['back-file'] ?? '').startsWith(dir + '/')) out.push(`loop ${l.name} -> ${l['back-file']}`)
  } catch { /* no losetup */ }
  return out
}

export function removeDir(dir: string): void {
  if (leftoversUnder(dir).length === 0) rmSync(dir, { recursive: true, force: true })
}
