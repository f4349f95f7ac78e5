/**
 * Start Debian's etcd as a throw-away single-member cluster on 127.0.0.1, with free
 * client and peer ports and its own data dir. `kill()` is a crash (SIGKILL) and
 * `restart()` brings the same member back on the same ports over the same data, so a
 * test can take the metadata store away and give it back. Only the pid started here
 * is ever signalled.
 *
 * With `tls` etcd serves clients over https only and, with `clientCertAuth`, asks each
 * client for a certificate its CA signed (etcd's --client-cert-auth); `enableEtcdAuth`
 * turns on etcd's user/password auth with a `pxd` user limited to one key prefix.
 */
import { guardProcess, releaseProcess } from './exit-guard'
import { spawn, type ChildProcess } from 'node:child_process'
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import { Etcd3 } from 'etcd3'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

export interface EtcdServer {
  /** `127.0.0.1:port`, the client endpoint (what `etcd://` takes). */
  endpoint: string
  /** `http://127.0.0.1:port` (https with `tls`) */
  url: string
  /** With `tls`: the CA and a client certificate etcd accepts. */
  tls?: EtcdTls
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

export interface EtcdTls {
  /** etcd's server certificate and key (PEM), and the CA that signed it and its clients. */
  certFile: string
  keyFile: string
  caFile: string
  /** A client certificate for the health check and enableEtcdAuth (signed by caFile). */
  clientCertFile: string
  clientKeyFile: string
  /** Ask every client for a certificate signed by caFile. */
  clientCertAuth: boolean
}

export interface EtcdOptions {
  tls?: EtcdTls
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
  const url = `${opts.tls ? 'https' : 'http'}://${host}:${clientPort}`
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
    ...(opts.tls ? ['--cert-file', opts.tls.certFile, '--key-file', opts.tls.keyFile, '--trusted-ca-file', opts.tls.caFile] : []),
    ...(opts.tls?.clientCertAuth ? ['--client-cert-auth'] : []),
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
    while (!(await healthy(url, opts.tls))) {
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
    ...(opts.tls ? { tls: opts.tls } : {}),
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

/**
 * Turn on etcd auth: a root user (etcd needs one), and a user `username` whose role may
 * read and write only keys under `prefix`. Returns root's password.
 */
export async function enableEtcdAuth(etcd: EtcdServer, username: string, password: string, prefix: string): Promise<string> {
  const rootPassword = `root-${Date.now()}`
  const client = new Etcd3({ hosts: etcd.url, ...(etcd.tls ? { credentials: etcdClientCredentials(etcd.tls) } : {}) })
  try {
    const root = await client.user('root').create(rootPassword)
    await root.addRole('root')
    const role = await client.role('pxd').create()
    await role.grant({ permission: 'Readwrite', range: client.range({ prefix }) })
    const user = await client.user(username).create(password)
    await user.addRole('pxd')
    await client.auth.authEnable({})
  } finally {
    client.close()
  }
  return rootPassword
}

export function etcdClientCredentials(t: EtcdTls): { rootCertificate: Buffer; privateKey: Buffer; certChain: Buffer } {
  return { rootCertificate: readFileSync(t.caFile), privateKey: readFileSync(t.clientKeyFile), certChain: readFileSync(t.clientCertFile) }
}

async function healthy(url: string, tls?: EtcdTls): Promise<boolean> {
  return new Promise((resolve) => {
    const get = tls ? https.get : http.get
    const tlsOptions = tls ? { ca: readFileSync(tls.caFile), cert: readFileSync(tls.clientCertFile), key: readFileSync(tls.clientKeyFile) } : {}
    const req = get(`${url}/health`, { timeout: 1000, ...tlsOptions }, (res) => {
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
