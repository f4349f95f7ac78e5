// A throw-away Docker engine for integration tests: dockerd with every path of its own
// (data root, exec root, socket, pid file, config file, trust key) under a temp dir,
// no iptables and no bridge, optionally started inside a mount namespace. Plus a local
// busybox image built without pulling anything.
import { guardProcess, releaseProcess } from './exit-guard'
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, readdirSync, rmdirSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync, copyFileSync, chmodSync } from 'node:fs'
import { join } from 'node:path'
import { describeResult, runCommand, stopChild, type RunOptions, type RunResult } from './mount-namespace'

/** The docker CLI that matches the installed dockerd (docker.io). /usr/local/bin/docker may be another client. */
export const DOCKER_CLI = process.env['PXD_TEST_DOCKER_CLI'] ?? '/usr/bin/docker'
export const DOCKERD = process.env['PXD_TEST_DOCKERD'] ?? 'dockerd'
/** Debian's busybox-static installs a static binary here; a dynamic one cannot run in a bare image. */
export const BUSYBOX = process.env['PXD_TEST_BUSYBOX'] ?? '/bin/busybox'

export interface DockerEngineOptions {
  /** directory for everything the engine writes; must exist */
  dir: string
  /** e.g. the mount namespace's nsenter prefix; dockerd and every docker CLI call run behind it */
  commandPrefix?: string[]
  /** vfs (default) works on any backing file system; overlay2 is faster but needs a suitable one */
  storageDriver?: string
  readyTimeoutMs?: number
  /** receives every docker command run and its output */
  log?: (line: string) => void
  /**
   * cgroup (cgroupfs driver) under which the containers run, instead of the host-wide `docker`;
   * stop() removes it again. Default: pxd-test-<pid>-<time>.
   */
  cgroupParent?: string
}

export interface DockerEngine {
  readonly pid: number
  readonly dir: string
  readonly socket: string
  /** everything dockerd printed so far */
  logs(): string
  /** the last `lines` lines of the dockerd log, for failure messages */
  logTail(lines?: number): string
  /** runs `docker --host <socket> ...args`, logs command and output; never throws for a non-zero exit */
  docker(args: string[], opts?: RunOptions): Promise<RunResult>
  /** like docker() but throws (with the output and the dockerd log tail) unless it exits 0; returns stdout */
  dockerOk(args: string[], opts?: RunOptions): Promise<string>
  /**
   * SIGTERM by pid, wait up to timeoutMs, SIGKILL if it hangs; then removes the (empty) cgroups
   * the containers ran in. Returns how dockerd ended.
   */
  stop(timeoutMs?: number): Promise<string>
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Quotes an argument for display the way a shell would need it. */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`
}

/** Removes <cgroup root>/<controller>/<name> for every v1 controller and the v2 hierarchy, if empty. */
function removeCgroup(name: string): string[] {
  const left: string[] = []
  const roots = ['/sys/fs/cgroup']
  try {
    for (const e of readdirSync('/sys/fs/cgroup', { withFileTypes: true })) {
      if (e.isDirectory()) roots.push(join('/sys/fs/cgroup', e.name))
    }
  } catch {
    return left
  }
  for (const root of roots) {
    const path = join(root, name)
    if (!existsSync(path)) continue
    try {
      rmdirSync(path)
    } catch (err) {
      left.push(`${path}: ${(err as Error).message}`)
    }
  }
  return left
}

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines - 1).join('\n')
}

/** Environment for the docker CLI: no host contexts, configs or DOCKER_* variables. */
function cliEnv(dir: string): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('DOCKER_')) env[k] = v
  }
  env['DOCKER_CONFIG'] = join(dir, 'docker-cli-config')
  return env
}

export async function startDockerEngine(opts: DockerEngineOptions): Promise<DockerEngine> {
  const { dir } = opts
  const prefix = opts.commandPrefix ?? []
  const readyTimeoutMs = opts.readyTimeoutMs ?? 30_000
  const log = opts.log ?? ((): void => {})
  const socket = join(dir, 'docker.sock')
  const logFile = join(dir, 'dockerd.log')
  const configFile = join(dir, 'daemon.json')
  const tmpDir = join(dir, 'docker-tmp')
  mkdirSync(tmpDir, { recursive: true })
  const cgroupParent = opts.cgroupParent ?? `pxd-test-${process.pid}-${Date.now()}`
  mkdirSync(join(dir, 'docker-cli-config'), { recursive: true })
  // A config file of our own keeps /etc/docker/daemon.json of the host out of the test, and
  // moves the trust key that dockerd 20.10 would otherwise create as /etc/docker/key.json.
  writeFileSync(configFile, JSON.stringify({ 'deprecated-key-path': join(dir, 'docker-key.json') }, null, 2) + '\n')

  const args = [
    '--iptables=false',
    '--ip-masq=false',
    '--bridge=none',
    `--storage-driver=${opts.storageDriver ?? 'vfs'}`,
    `--data-root=${join(dir, 'docker-data')}`,
    `--exec-root=${join(dir, 'docker-exec')}`,
    `--host=unix://${socket}`,
    `--pidfile=${join(dir, 'docker.pid')}`,
    `--config-file=${configFile}`,
    `--cgroup-parent=/${cgroupParent}`,
  ]
  const command = [...prefix, DOCKERD, ...args]
  log(`$ ${command.map(shellQuote).join(' ')}`)
  const out = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    // TMPDIR: containerd writes goroutine dumps (containerd.<pid>.stacks.log, on SIGUSR1)
    // there; keep them in the test's dir rather than the host's /tmp.
    child = spawn(command[0] as string, command.slice(1), {
      stdio: ['ignore', out, out],
      env: { ...cliEnv(dir), TMPDIR: tmpDir },
    })
  } finally {
    closeSync(out)
  }
  const started = child
  if (started.pid !== undefined) {
    guardProcess(started.pid)
    started.once('exit', () => releaseProcess(started.pid!))
  }
  const spawnError = await new Promise<Error | undefined>((resolve) => {
    child.once('spawn', () => resolve(undefined))
    child.once('error', (err) => resolve(err))
  })
  if (spawnError !== undefined || child.pid === undefined) {
    throw new Error(`cannot start dockerd: ${spawnError?.message ?? 'no pid'}`)
  }
  const pid = child.pid
  const env = cliEnv(dir)
  const logs = (): string => {
    try {
      return readFileSync(logFile, 'utf8')
    } catch {
      return ''
    }
  }
  const logTail = (lines = 40): string => tail(logs(), lines)

  const rawDocker = (dockerArgs: string[], runOpts: RunOptions = {}): Promise<RunResult> =>
    runCommand([...prefix, DOCKER_CLI, '--host', `unix://${socket}`, ...dockerArgs], {
      timeoutMs: 60_000,
      ...runOpts,
      env,
    })

  const engine: DockerEngine = {
    pid,
    dir,
    socket,
    logs,
    logTail,
    async docker(dockerArgs, runOpts) {
      log(`$ docker ${dockerArgs.map(shellQuote).join(' ')}`)
      const r = await rawDocker(dockerArgs, runOpts)
      const output = (r.stdout + r.stderr).trimEnd()
      if (output !== '') log(output)
      if (r.code !== 0) log(`(exit ${String(r.code)}${r.timedOut ? ', timed out' : ''})`)
      return r
    },
    async dockerOk(dockerArgs, runOpts) {
      const r = await engine.docker(dockerArgs, runOpts)
      if (r.code !== 0) {
        throw new Error(`${describeResult(r)}\n--- dockerd log (tail) ---\n${logTail()}`)
      }
      return r.stdout
    },
    async stop(timeoutMs = 20_000) {
      const how = await stopChild(child, timeoutMs)
      const left = removeCgroup(cgroupParent)
      return left.length === 0 ? how : `${how}; cgroups left: ${left.join(', ')}`
    },
  }

  // Bounded wait for the API; give up at once if dockerd exits.
  const deadline = Date.now() + readyTimeoutMs
  let last: RunResult | undefined
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `dockerd exited (code ${String(child.exitCode)}, signal ${String(child.signalCode)}) before answering\n` +
          `--- dockerd log (tail) ---\n${logTail()}`,
      )
    }
    last = await rawDocker(['info', '--format', '{{.ServerVersion}} {{.Driver}}'], { timeoutMs: 5_000 })
    if (last.code === 0) break
    if (Date.now() >= deadline) {
      await stopChild(child, 10_000)
      throw new Error(
        `dockerd did not answer \`docker info\` within ${readyTimeoutMs} ms\n${describeResult(last)}\n` +
          `--- dockerd log (tail) ---\n${logTail()}`,
      )
    }
    await sleep(250)
  }
  log(`dockerd pid ${pid} ready: server version, storage driver = ${last.stdout.trim()}`)
  return engine
}

/** True if the ELF file has no program interpreter (PT_INTERP), i.e. is statically linked. */
export function isStaticElf(path: string): boolean {
  const buf = readFileSync(path)
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 || buf[5] !== 1) {
    throw new Error(`${path} is not a little-endian 64-bit ELF file`)
  }
  const phoff = Number(buf.readBigUInt64LE(0x20))
  const phentsize = buf.readUInt16LE(0x36)
  const phnum = buf.readUInt16LE(0x38)
  for (let i = 0; i < phnum; i++) {
    if (buf.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) return false
  }
  return true
}

/**
 * Builds an image from a root file system holding only a static busybox and one symlink per
 * applet (sh, cat, echo, sync, ls, df, grep, ...), with `docker import`: nothing is pulled.
 */
export async function importBusyboxImage(engine: DockerEngine, tag: string, workDir: string): Promise<void> {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing (Debian package busybox-static)`)
  if (!isStaticElf(BUSYBOX)) throw new Error(`${BUSYBOX} is dynamically linked: install busybox-static, not busybox`)
  const rootfs = join(workDir, 'rootfs')
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'data']) mkdirSync(join(rootfs, d), { recursive: true })
  copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'))
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755)
  const list = await runCommand([BUSYBOX, '--list'], { timeoutMs: 10_000 })
  if (list.code !== 0) throw new Error(describeResult(list))
  for (const applet of list.stdout.split('\n').map((s) => s.trim())) {
    if (applet === '' || applet === 'busybox' || applet.includes('/')) continue
    symlinkSync('busybox', join(rootfs, 'bin', applet))
  }
  writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n')
  writeFileSync(join(rootfs, 'etc', 'group'), 'root:x:0:\n')
  const tarball = join(workDir, 'rootfs.tar')
  const tar = await runCommand(['tar', '--numeric-owner', '--owner=0', '--group=0', '-C', rootfs, '-cf', tarball, '.'], {
    timeoutMs: 30_000,
  })
  if (tar.code !== 0) throw new Error(describeResult(tar))
  await engine.dockerOk(['import', '--change', 'ENV PATH=/bin', tarball, tag])
}
