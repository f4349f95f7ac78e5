/**
 * Start Debian's etcd as a throw-away single-member cluster on 127.0.0.1, with free
 * client and peer ports and its own data dir. `kill()` is a crash (SIGKILL) and
 * `restart()` brings the same member back on the same ports over the same data, so a
 * test can take the metadata store away and give it back. Only the pid started here
 * is ever signalled.
 */
import { guardProcess, releaseProcess } from './exit-guard'
import { spawn, type ChildProcess } from 'node:child_process'
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

export interface EtcdServer {
  /** `127.0.0.1:port`, the client endpoint (what `etcd://` takes). */
  endpoint: string
  /** `http://127.0.0.1:port` */
  url: string
  /** Pid of the running etcd (changes on restart). */
  pid: number
  dataDir: string
  /** The log of every run so far. */
  logs(): string
  /** SIGTERM, wait, SIGKILL if it lingers; then remove the temp dir if this helper made it. */
  stop(): Promise<void>
  /** SIGKILL, as a crash would; the data dir stays for `restart()`. */
  kill(): Promise<void>
  /** Start again (stopping first if running) on the same ports and data dir. */
  restart(): Promise<void>
}

const ETCD_BIN = process.env['ETCD_BIN'] ?? '/usr/bin/etcd'
const READY_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 10_000
const POLL_MS = 100
const LOG_TAIL_CHARS = 4000

/** Go's name for this architecture, for ETCD_UNSUPPORTED_ARCH (etcd 3.4 refuses arm64 without it). */
const GO_ARCH: Record<string, string> = { arm64: 'arm64', arm: 'arm', ia32: '386', s390x: 's390x', ppc64: 'ppc64le' }

const running = new Set<ChildProcess>()
let exitHookInstalled = false

export interface EtcdOptions {
  dir?: string
  /** The address to listen on (default 127.0.0.1): a test network member's. */
  host?: string
  /** Run etcd under this (e.g. nsenter into a network namespace). */
  commandPrefix?: string[]
}

export async function startEtcd(opts: EtcdOptions = {}): Promise<EtcdServer> {
  if (!existsSync(ETCD_BIN)) {
    throw new Error(`etcd is not installed (${ETCD_BIN} not found): apt-get install etcd-server`)
  }
  installExitHook()
  const ownDir = opts.dir === undefined
  const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), 'pxd-etcd-'))
  const dataDir = path.join(dir, 'etcd-data')
  const logFile = path.join(dir, 'etcd.log')
  mkdirSync(dir, { recursive: true })
  const [clientPort, peerPort] = await freePorts(2)
  const host = opts.host ?? '127.0.0.1'
  const url = `http://${host}:${clientPort}`
  const peerUrl = `http://${host}:${peerPort}`
  const args = [
    '--name', 'pxd-test',
    '--data-dir', dataDir,
    '--listen-client-urls', url,
    '--advertise-client-urls', url,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `pxd-test=${peerUrl}`,
    '--initial-cluster-state', 'new',
    '--initial-cluster-token', path.basename(dir),
    '--logger', 'zap',
    '--log-outputs', 'stderr',
  ]
  const env: NodeJS.ProcessEnv = { ...process.env }
  const goArch = GO_ARCH[process.arch]
  if (goArch !== undefined) env['ETCD_UNSUPPORTED_ARCH'] = goArch

  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  const logs = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '')
  // Output can still arrive after 'exit' (the pipes drain later), when a stopped
  // cluster may have removed the directory: what comes then has nowhere to go.
  const appendLog = (chunk: Buffer) => {
    try {
      appendFileSync(logFile, chunk)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  const tail = () => logs().slice(-LOG_TAIL_CHARS)

  const launch = async () => {
    appendFileSync(logFile, `--- etcd ${args.join(' ')}\n`)
    const command = [...(opts.commandPrefix ?? []), ETCD_BIN, ...args]
    const proc = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env })
    child = proc
    guardProcess(proc.pid!, 'SIGKILL')
    proc.once('exit', () => releaseProcess(proc.pid!))
    running.add(proc)
    let exitInfo: string | undefined
    exited = new Promise<void>((resolve) => {
      proc.once('exit', (code, signal) => {
        exitInfo = `exited with ${signal ?? `code ${code}`}`
        running.delete(proc)
        resolve()
      })
      proc.once('error', (err) => {
        exitInfo = `failed to start: ${err.message}`
        running.delete(proc)
        resolve()
      })
    })
    for (const stream of [proc.stdout!, proc.stderr!]) stream.on('data', appendLog)
    const deadline = Date.now() + READY_TIMEOUT_MS
    while (!(await healthy(url))) {
      if (exitInfo !== undefined) throw new Error(`etcd ${exitInfo} before it answered; its log:\n${tail()}`)
      if (Date.now() > deadline) {
        await signalAndWait('SIGKILL')
        throw new Error(`etcd did not answer on ${url} within ${READY_TIMEOUT_MS} ms; its log:\n${tail()}`)
      }
      await sleep(POLL_MS)
    }
  }

  const signalAndWait = async (signal: NodeJS.Signals, timeoutMs = STOP_TIMEOUT_MS): Promise<boolean> => {
    const proc = child
    if (!proc || proc.exitCode !== null || proc.signalCode !== null || proc.pid === undefined) return true
    try {
      process.kill(proc.pid, signal)
    } catch {
      return true
    }
    let timer: NodeJS.Timeout | undefined
    const timedOut = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), timeoutMs) })
    try {
      return await Promise.race([exited.then(() => true), timedOut])
    } finally {
      clearTimeout(timer)
    }
  }

  const halt = async () => {
    if (!(await signalAndWait('SIGTERM'))) await signalAndWait('SIGKILL')
  }

  try {
    await launch()
  } catch (err) {
    if (ownDir) rmSync(dir, { recursive: true, force: true })
    throw err
  }

  const server: EtcdServer = {
    endpoint: `${host}:${clientPort}`,
    url,
    get pid() { return child?.pid ?? -1 },
    dataDir,
    logs,
    async stop() {
      await halt()
      if (ownDir) rmSync(dir, { recursive: true, force: true })
    },
    async kill() {
      await signalAndWait('SIGKILL')
    },
    async restart() {
      await halt()
      await launch()
    },
  }
  return server
}

async function healthy(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(`${url}/health`, { timeout: 1000 }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => {
        try {
          resolve(res.statusCode === 200 && (JSON.parse(body) as { health?: unknown }).health === 'true')
        } catch {
          resolve(false)
        }
      })
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
  })
}

/** Free ports, held open together so the kernel hands out distinct ones. */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: count }, () => new Promise<net.Server>((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => resolve(srv))
  })))
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port)
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  return ports
}

/** If the test process exits without stopping its etcd, do not leave it running. */
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const proc of running) {
      if (proc.pid !== undefined) {
        try { process.kill(proc.pid, 'SIGKILL') } catch { /* already gone */ }
      }
    }
  })
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
