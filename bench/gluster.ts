/**
 * GlusterFS beside pxd (`npm run bench -- --peers`): the file system a DC/OS user might
 * pick instead, set up on this machine the way pxd's cluster is: one glusterd, a one-brick
 * volume and a replica-2 volume whose two bricks are on the same disk, each mounted with
 * Gluster's FUSE client, with Gluster's default volume options.
 *
 * The host is left as it was. glusterd runs as a child of the bench (not the packaged
 * service), in its own process group so that a Ctrl-C reaches the bench and not it, with
 * its working dir, run dir, CLI socket and logs in a temp dir; the bricks are in that dir
 * too. What Gluster still writes under its fixed host paths (brick and self-heal logs,
 * brick sockets, a few state files) is removed at the end, and only what was not there
 * before. `teardown()` may be called at any point, more than once, and never throws.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { lookup } from 'node:dns/promises'
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { tryText } from './host'

export type PeerTargetId = 'gluster1' | 'gluster2'

export interface PeerTarget {
  id: PeerTargetId
  label: string
  file: string
  /** `glusterfs --version`'s first line. */
  version: string
  volume: { name: string; bricks: string[]; mountpoint: string }
}

/** glusterd's management port: fixed, so a second glusterd on the host cannot start. */
const GLUSTERD_PORT = 24007
/** Where Gluster writes whatever its working dir says (logs, brick sockets, state files). */
const HOST_DIRS = ['/var/lib/glusterd', '/var/log/glusterfs', '/var/run/gluster']
const TOOLS = ['glusterd', 'gluster', 'mount.glusterfs']
const VOLUMES: Array<{ id: PeerTargetId; label: string; name: string; bricks: string[] }> = [
  { id: 'gluster1', label: 'Gluster 1 brick', name: 'pxd-bench-g1', bricks: ['g1'] },
  { id: 'gluster2', label: 'Gluster replica 2', name: 'pxd-bench-g2', bricks: ['g2a', 'g2b'] },
]
const CLI_TIMEOUT_MS = 120_000
const READY_TIMEOUT_MS = 30_000

export class GlusterPeers {
  readonly targets: PeerTarget[] = []
  #dir: string | undefined
  #glusterd: ChildProcess | undefined
  #hostBefore: Set<string> | undefined
  readonly #created: string[] = []
  readonly #started: string[] = []
  readonly #mounted: string[] = []
  #teardown: Promise<string[]> | undefined
  /** setUp while it runs: a teardown meanwhile waits for its step in flight to end (it then stops). */
  #settingUp: Promise<PeerTarget[]> | undefined

  constructor(private readonly log: (line: string) => void, private readonly fioFile: string) {}

  /** What is missing for `setUp` to work: tools not installed, the port taken. Empty when all is there. */
  static async missing(): Promise<string[]> {
    const missing: string[] = []
    const tools = TOOLS.filter((t) => tryText('sh', ['-c', `command -v ${t}`]) === undefined)
    if (tools.length > 0) missing.push(`GlusterFS is not installed (${tools.join(', ')}): npm run bench -- --peers installs glusterfs-server and glusterfs-client`)
    if (!(await portFree(GLUSTERD_PORT))) missing.push(`port ${GLUSTERD_PORT} is taken: a glusterd runs already (stop it, e.g. systemctl stop glusterd, for the run)`)
    return missing
  }

  /** Start glusterd, create and start both volumes, mount them. */
  setUp(): Promise<PeerTarget[]> {
    this.#settingUp ??= this.#setUp()
    return this.#settingUp
  }

  async #setUp(): Promise<PeerTarget[]> {
    if (this.#teardown) throw new Error('interrupted')
    // Gluster refuses bricks on 127.0.0.1 or "localhost", but takes this host's name.
    const host = os.hostname()
    await lookup(host).catch((err: Error) => {
      throw new Error(`this host's name ${host} does not resolve (${err.message}); Gluster's bricks need a resolvable host name other than localhost`)
    })
    const version = tryText('glusterfs', ['--version'])?.split('\n')[0] ?? 'glusterfs (version unknown)'
    this.#hostBefore = listTree(HOST_DIRS)
    const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-gluster-'))
    this.#dir = dir
    for (const sub of ['state', 'run', 'log', 'bricks', 'mnt']) mkdirSync(path.join(dir, sub))
    const volfile = path.join(dir, 'glusterd.vol')
    writeFileSync(volfile, [
      'volume management',
      '    type mgmt/glusterd',
      `    option working-directory ${dir}/state`,
      `    option run-directory ${dir}/run`,
      `    option glusterd-sockfile ${this.#socket()}`,
      '    option transport-type socket',
      `    option transport.socket.listen-port ${GLUSTERD_PORT}`,
      '    option ping-timeout 0',
      '    option event-threads 1',
      'end-volume',
      '',
    ].join('\n'))
    this.log(`starting glusterd (${version}) in ${dir}`)
    const glusterd = spawn('glusterd', ['-N', '-f', volfile, '-l', path.join(dir, 'log', 'glusterd.log'), '-p', path.join(dir, 'run', 'glusterd.pid')], { detached: true, stdio: 'ignore' })
    glusterd.on('error', () => undefined)
    this.#glusterd = glusterd
    await this.#until('glusterd answers', async () => (await this.#cli(['volume', 'list']).then(() => true, () => false)) || undefined)

    for (const v of VOLUMES) {
      if (this.#teardown) throw new Error('interrupted')
      const bricks = v.bricks.map((b) => path.join(dir, 'bricks', b))
      // `force`: the bricks are on one host, and on the root file system.
      await this.#cli(['volume', 'create', v.name, ...(bricks.length > 1 ? ['replica', String(bricks.length)] : []), ...bricks.map((b) => `${host}:${b}`), 'force'])
      this.#created.push(v.name)
      await this.#cli(['volume', 'start', v.name])
      this.#started.push(v.name)
      await this.#until(`${v.name}'s bricks online`, async () => (onlineBricks(await this.#cli(['volume', 'status', v.name])) === bricks.length) || undefined)
      const mountpoint = path.join(dir, 'mnt', v.id)
      mkdirSync(mountpoint)
      const mountLog = `mount-${v.id}.log`
      await run('mount', ['-t', 'glusterfs', '-o', `log-file=${path.join(dir, 'log', mountLog)}`, `${host}:/${v.name}`, mountpoint]).catch((err: Error) => {
        throw new Error(`${err.message}\nlast lines of the client's log:\n${this.#logTail(mountLog)}`)
      })
      this.#mounted.push(mountpoint)
      const target: PeerTarget = { id: v.id, label: v.label, file: path.join(mountpoint, this.fioFile), version, volume: { name: v.name, bricks, mountpoint } }
      this.targets.push(target)
      this.log(`${v.label}: volume ${v.name} on ${bricks.length} brick(s) under ${path.join(dir, 'bricks')}, mounted at ${mountpoint}`)
    }
    return this.targets
  }

  /** glusterd gone while the benchmark runs: every later Gluster figure would be an error. */
  exited(): string | undefined {
    const g = this.#glusterd
    if (!g || (g.exitCode === null && g.signalCode === null)) return undefined
    return `glusterd (pid ${g.pid}) exited (${g.exitCode ?? g.signalCode}); last lines of its log:\n${this.#logTail('glusterd.log')}`
  }

  teardown(): Promise<string[]> {
    this.#teardown ??= this.#doTeardown()
    return this.#teardown
  }

  async #doTeardown(): Promise<string[]> {
    await this.#settingUp?.catch(() => undefined)
    const problems: string[] = []
    const attempt = async (what: string, step: () => Promise<unknown>) => {
      try {
        await step()
      } catch (err) {
        problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
    for (const mp of [...this.#mounted].reverse()) await attempt(`unmount ${mp}`, () => unmount(mp))
    if (this.exited() === undefined && this.#glusterd) {
      for (const name of [...this.#started].reverse()) await attempt(`stop volume ${name}`, () => this.#cli(['volume', 'stop', name, 'force']))
      for (const name of [...this.#created].reverse()) await attempt(`delete volume ${name}`, () => this.#cli(['volume', 'delete', name]))
    } else if (this.#created.length > 0) {
      problems.push(this.exited()!)
    }
    if (this.#glusterd) await attempt('stop glusterd', () => stop(this.#glusterd!))
    const dir = this.#dir
    if (dir) {
      // Brick and self-heal daemons whose glusterd went before it could stop them.
      await attempt('stop Gluster processes', () => stopProcessesNaming(dir))
      const mounted = readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.split(' ')[1]?.startsWith(dir + '/'))
      if (mounted.length > 0) problems.push(`${dir} is left behind: still mounted under it: ${mounted.map((l) => l.split(' ')[1]).join(', ')}`)
      else await attempt(`remove ${dir}`, async () => rmSync(dir, { recursive: true, force: true }))
    }
    if (this.#hostBefore) {
      const before = this.#hostBefore
      await attempt('remove what Gluster left on the host', async () => {
        // Deepest first, so that a new dir goes once it is empty of new entries.
        const added = [...listTree(HOST_DIRS)].filter((p) => !before.has(p)).sort((a, b) => b.length - a.length)
        for (const p of added) rmSync(p, { recursive: true, force: true })
      })
    }
    return problems
  }

  /** The end of one of the logs in the temp dir, which teardown removes. */
  #logTail(name: string, lines = 15): string {
    try {
      return readFileSync(path.join(this.#dir!, 'log', name), 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
    } catch {
      return `(no ${name})`
    }
  }

  #socket(): string {
    return path.join(this.#dir!, 'run', 'glusterd.socket')
  }

  #cli(args: string[]): Promise<string> {
    // --mode=script answers glusterd's questions (replica 2 and split-brain, stop) with yes.
    return run('gluster', ['--mode=script', `--glusterd-sock=${this.#socket()}`, `--log-file=${path.join(this.#dir!, 'log', 'cli.log')}`, ...args])
  }

  async #until(what: string, probe: () => Promise<true | undefined>): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS
    for (;;) {
      const died = this.exited()
      if (died) throw new Error(died)
      if (this.#teardown) throw new Error('interrupted')
      if (await probe()) return
      if (Date.now() > deadline) throw new Error(`${what}: not within ${READY_TIMEOUT_MS / 1000} s; last lines of glusterd's log:\n${this.#logTail('glusterd.log')}`)
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
  }
}

/** `gluster volume status` lines of bricks that are online ("Brick host:/path  port  rdma  Y  pid"). */
function onlineBricks(status: string): number {
  return status.split('\n').filter((l) => /^Brick\s+\S+\s+\S+\s+\S+\s+Y\s+\d+/.test(l)).length
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: CLI_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${(stderr.trim() || stdout.trim() || err.message)}`))
      else resolve(stdout)
    })
  })
}

/** umount, again a few times while the FUSE client still has the file open; lazily at last. */
async function unmount(mountpoint: string): Promise<void> {
  let last: unknown
  for (let i = 0; i < 5; i++) {
    try {
      await run('umount', [mountpoint])
      return
    } catch (err) {
      last = err
      await new Promise((resolve) => setTimeout(resolve, 1000))
    }
  }
  await run('umount', ['-l', mountpoint])
  throw new Error(`unmounted lazily after: ${last instanceof Error ? last.message : String(last)}`)
}

/** SIGTERM, SIGKILL after 10 s, and wait for the exit. */
async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await exited.finally(() => clearTimeout(timer))
}

/**
 * Gluster's own daemons (brick servers, self-heal, FUSE clients) whose command line names
 * `dir`: a temp dir of this run, so they are this run's. SIGTERM, then SIGKILL after 5 s.
 */
async function stopProcessesNaming(dir: string): Promise<void> {
  const pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
    try {
      const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
      return /^gluster/.test(comm) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)
    } catch {
      return false
    }
  })
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig)
      return true
    } catch {
      return false
    }
  }
  let alive = pids.filter((pid) => signal(pid, 'SIGTERM'))
  for (let i = 0; i < 50 && alive.length > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    alive = alive.filter(running)
  }
  for (const pid of alive) signal(pid, 'SIGKILL')
}

/** Not gone and not a zombie waiting for its parent (init, for a daemon). */
function running(pid: number): boolean {
  try {
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')
  } catch {
    return false
  }
}

/** Every path under these dirs (the dirs too), without following links. */
function listTree(roots: string[]): Set<string> {
  const seen = new Set<string>()
  const walk = (p: string) => {
    let st
    try {
      st = lstatSync(p)
    } catch {
      return
    }
    seen.add(p)
    if (st.isDirectory()) for (const name of readdirSync(p)) walk(path.join(p, name))
  }
  for (const r of roots) walk(r)
  return seen
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.once('error', () => resolve(false))
    server.listen(port, () => server.close(() => resolve(true)))
  })
}
