// End to end with the real Docker engine as the client of pxd's volume plugin.
//
// Everything runs in a private mount namespace held by a `sleep infinity` that this test
// spawned: a tmpfs over /run there keeps dockerd's and containerd's runtime files (and the
// host's own /run/containerd socket, which dockerd would otherwise adopt) apart from the host,
// and a tmpfs on /run/docker/plugins means dockerd's plugin discovery finds pxd's socket and
// nothing else. dockerd gets all of its paths under the test's temp dir. The image is a
// static busybox imported from a tarball, since nothing can be pulled.
import test, { type ExecutionContext } from 'ava'
import { createHash, randomBytes } from 'node:crypto'
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { ApiClient } from '../../src/api/client'
import { startDaemon, type Daemon } from '../helpers/daemon'
import { BUSYBOX, DOCKERD, DOCKER_CLI, importBusyboxImage, isStaticElf, startDockerEngine, type DockerEngine } from '../helpers/docker-engine'
import { NSENTER, UNSHARE, createMountNamespace, describeResult, runCommand, type MountNamespace } from '../helpers/mount-namespace'

const IMAGE = 'pxd-test-busybox:latest'
const PLUGIN_SOCKET = '/run/docker/plugins/pxd.sock'
const TEST_TIMEOUT_MS = 120_000

function onPath(command: string): boolean {
  if (command.includes('/')) return canExecute(command)
  return (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin')
    .split(delimiter)
    .some((d) => d !== '' && canExecute(join(d, command)))
}

function canExecute(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** Everything the test needs from the machine; a missing piece fails the test, it does not skip it. */
function missingPreconditions(): string[] {
  const missing: string[] = []
  if (process.getuid?.() !== 0) missing.push(`root (running as uid ${String(process.getuid?.())})`)
  if (!existsSync('/dev/fuse')) missing.push('/dev/fuse')
  for (const [command, pkg] of [
    [DOCKERD, 'docker.io'],
    [DOCKER_CLI, 'docker.io'],
    [UNSHARE, 'util-linux'],
    [NSENTER, 'util-linux'],
    ['losetup', 'mount'],
    ['mount', 'mount'],
    ['tar', 'tar'],
  ] as const) {
    if (!onPath(command)) missing.push(`${command} (Debian package ${pkg})`)
  }
  if (!existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (Debian package busybox-static)`)
  else if (!isStaticElf(BUSYBOX)) missing.push(`a static ${BUSYBOX} (Debian package busybox-static; this one is dynamic)`)
  return missing
}

interface PluginVolume {
  Name: string
  Mountpoint?: string
}

/** POSTs one Docker volume plugin request to a unix socket and parses the JSON answer. */
function pluginCall(socketPath: string, endpoint: string, body: unknown): Promise<Record<string, unknown>> {
  const payload = JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        path: `/${endpoint}`,
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) },
        timeout: 10_000,
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => { text += d })
        res.on('end', () => {
          try {
            resolve(JSON.parse(text) as Record<string, unknown>)
          } catch {
            reject(new Error(`${endpoint}: HTTP ${String(res.statusCode)}, not JSON: ${text}`))
          }
        })
      },
    )
    req.on('timeout', () => req.destroy(new Error(`${endpoint}: no answer within 10 s`)))
    req.on('error', reject)
    req.end(payload)
  })
}

function tailLines(text: string, lines: number): string {
  return text.split('\n').slice(-lines - 1).join('\n')
}

/** Loop devices whose backing file lies under dir, as `losetup -a` lines. */
async function loopDevicesUnder(dir: string, ns?: MountNamespace): Promise<string[]> {
  const command = ['losetup', '-a']
  const r = ns === undefined ? await runCommand(command, { timeoutMs: 10_000 }) : await ns.run(command, { timeoutMs: 10_000 })
  if (r.code !== 0) throw new Error(describeResult(r))
  return r.stdout.split('\n').filter((line) => line.includes(dir))
}

/**
 * The start of every test here: preconditions (a missing one fails the test), a temp dir,
 * the teardown (always), then dockerWithPxd. Undefined when a precondition is missing.
 */
async function begin(t: ExecutionContext): Promise<(DockerSetup & { state: SetupState }) | undefined> {
  t.timeout(TEST_TIMEOUT_MS)
  const missing = missingPreconditions()
  if (missing.length > 0) {
    t.fail(`cannot run the docker integration test, missing: ${missing.join('; ')}`)
    return undefined
  }
  const started = Date.now()
  const dir = mkdtempSync(join(tmpdir(), 'pxd-docker-'))
  const state: SetupState = {}
  t.teardown(async () => teardown(t, dir, () => ({ ns: state.ns, engine: state.engine, daemon: state.daemon }), started))
  return { ...(await dockerWithPxd(t, state, dir)), state }
}

/** What a test started so far; the daemon is replaced when a successor takes over. */
interface SetupState { ns?: MountNamespace; engine?: DockerEngine; daemon?: Daemon }

interface DockerSetup {
  dir: string
  pxdDir: string
  pluginSocket: string
  ns: MountNamespace
  engine: DockerEngine
  daemon: Daemon
}

/**
 * Steps 1-4 of every test here: a private mount namespace, pxd serving the plugin socket
 * that dockerd discovers there, dockerd, and the local busybox image. `state` always holds
 * what was started so far (for teardown, pass or fail).
 */
async function dockerWithPxd(t: ExecutionContext, state: SetupState, dir: string): Promise<DockerSetup> {
  const log = (line: string): void => t.log(line)
  // 1. Private mount namespace, with only our plugin socket for dockerd to discover.
  const ns = (state.ns = await createMountNamespace())
  log(`mount namespace held by pid ${ns.holderPid} (${UNSHARE} --mount --propagation private sleep infinity)`)
  await ns.mountTmpfs('/run')
  await ns.mountTmpfs('/run/docker/plugins')
  t.deepEqual(readdirSync(ns.hostPath('/run/docker/plugins')), [], 'the namespace starts with no plugin socket')

  // 2. pxd, serving the plugin protocol on /run/docker/plugins/pxd.sock inside the namespace.
  const pxdDir = join(dir, 'pxd')
  mkdirSync(pxdDir)
  // The socket is named through /proc/<holder>/root: inside the namespace that is the
  // namespace's own root, so pxd binds the very /run/docker/plugins/pxd.sock that dockerd
  // discovers, and the same string reaches that socket from the host, where startDaemon()
  // probes it (it connects to the path it was given, from outside the namespace).
  const pluginSocket = ns.hostPath(PLUGIN_SOCKET)
  // debug: pxd then logs every plugin request, which shows in CI what Docker asked of it.
  const daemon = (state.daemon = await startDaemon({ dir: pxdDir, pluginSocket, commandPrefix: ns.prefix, extraArgs: ['--log-level', 'debug'] }))
  log(`pxd pid ${daemon.pid}, --plugin-socket ${daemon.pluginSocket}, api ${daemon.apiUrl}`)
  t.true(existsSync(ns.hostPath(PLUGIN_SOCKET)), `pxd's socket is ${PLUGIN_SOCKET} in the namespace`)
  const activate = await pluginCall(pluginSocket, 'Plugin.Activate', {})
  t.deepEqual(activate['Implements'], ['VolumeDriver'], `Plugin.Activate answered ${JSON.stringify(activate)}`)

  // 3. dockerd in the same namespace, everything under the temp dir.
  const engine = (state.engine = await startDockerEngine({ dir, commandPrefix: ns.prefix, log }))

  // 4. A local image: static busybox, no pull.
  await importBusyboxImage(engine, IMAGE, dir)
  return { dir, pxdDir, pluginSocket, ns, engine, daemon }
}

test('docker engine creates, mounts, writes, reads and removes a pxd volume', async (t) => {
  const setup = await begin(t)
  if (!setup) return
  const log = (line: string): void => t.log(line)
  const { dir, pluginSocket, engine, daemon } = setup

  // 5. The volume's life through docker.
  const volume = `pxd-it-${randomBytes(4).toString('hex')}`
  const payload = `payload-${randomBytes(16).toString('hex')}`
  const run = ['run', '--rm', '--network', 'none', '-v', `${volume}:/data`, IMAGE]

  t.is((await engine.dockerOk(['volume', 'create', '-d', 'pxd', '--opt', 'size=256M', volume])).trim(), volume)

  const inspected = JSON.parse(await engine.dockerOk(['volume', 'inspect', volume])) as Array<Record<string, unknown>>
  t.is(inspected.length, 1)
  t.is(inspected[0]?.['Name'], volume)
  t.is(inspected[0]?.['Driver'], 'pxd', 'docker volume inspect shows driver pxd')

  // dockerd found pxd by socket discovery in the namespace's /run/docker/plugins.
  const volumePlugins = JSON.parse(await engine.dockerOk(['info', '--format', '{{json .Plugins.Volume}}'])) as string[]
  t.true(volumePlugins.includes('pxd'), `docker info lists volume plugins ${JSON.stringify(volumePlugins)}`)

  const write = await engine.dockerOk(
    [...run, 'sh', '-c', `echo ${payload} > /data/hello && sync && grep ' /data ' /proc/mounts && df -k /data`],
    { timeoutMs: 60_000 },
  )
  // The container's /data is pxd's file system: ext4 on a loop device over the FUSE file (DESIGN.md).
  const mountLine = write.split('\n').find((l) => l.split(' ')[1] === '/data')
  t.truthy(mountLine, `/data is a mount of its own in the container:\n${write}`)
  t.is(mountLine?.split(' ')[2], 'ext4', `/data is pxd's ext4: ${mountLine ?? ''}`)
  const dfLine = write.split('\n').filter((l) => /\s\d+\s+\d+\s+\d+\s+\d+%/.test(l)).pop() ?? ''
  const sizeKiB = Number(dfLine.trim().split(/\s+/)[1])
  t.true(sizeKiB > 128 * 1024 && sizeKiB <= 256 * 1024, `size=256M gives a file system of 128-256 MiB, df says ${dfLine}`)

  const read = await engine.dockerOk([...run, 'cat', '/data/hello'], { timeoutMs: 60_000 })
  t.is(read.trim(), payload, 'a second container reads what the first one wrote')

  // A snapshot from Docker's side (--opt parent=), mounted read-only in a container: it has
  // the file as it was, the volume has what was written after, and the snapshot refuses writes.
  const snapshot = `${volume}-snap`
  t.is((await engine.dockerOk(['volume', 'create', '-d', 'pxd', '--opt', `parent=${volume}`, snapshot])).trim(), snapshot)
  await engine.dockerOk([...run, 'sh', '-c', 'echo later > /data/hello && sync'], { timeoutMs: 60_000 })
  const snapRun = ['run', '--rm', '--network', 'none', '-v', `${snapshot}:/snap:ro`, IMAGE]
  t.is((await engine.dockerOk([...snapRun, 'cat', '/snap/hello'], { timeoutMs: 60_000 })).trim(), payload, 'the snapshot has the file as it was')
  t.is((await engine.dockerOk([...run, 'cat', '/data/hello'], { timeoutMs: 60_000 })).trim(), 'later', 'the volume moved on')
  const refused = await engine.docker(['run', '--rm', '--network', 'none', '-v', `${snapshot}:/snap`, IMAGE, 'sh', '-c', 'echo x > /snap/new'], { timeoutMs: 60_000 })
  t.not(refused.code, 0, `a write into the snapshot fails: ${refused.stderr.trim()}`)
  t.regex(refused.stderr, /Read-only file system/)
  t.is((await engine.dockerOk(['volume', 'rm', snapshot])).trim(), snapshot)

  // Grown online under a running container (xfs: a mounted ext4 grows only with
  // CAP_SYS_RESOURCE, which this host may not give): df inside it shows the new size.
  const growing = `${volume}-grow`
  t.is((await engine.dockerOk(['volume', 'create', '-d', 'pxd', '--opt', 'size=320M', '--opt', 'fs=xfs', growing])).trim(), growing)
  const container = (await engine.dockerOk(['run', '-d', '--network', 'none', '-v', `${growing}:/data`, IMAGE, 'sh', '-c', `echo ${payload} > /data/hello && sync && sleep 600`], { timeoutMs: 60_000 })).trim()
  try {
    const dfKiB = async (): Promise<number> => {
      const df = await engine!.dockerOk(['exec', container, 'df', '-k', '/data'], { timeoutMs: 30_000 })
      return Number((df.split('\n').filter((l) => /\s\d+\s+\d+\s+\d+\s+\d+%/.test(l)).pop() ?? '').trim().split(/\s+/)[1])
    }
    const before = await dfKiB()
    await new ApiClient(daemon.apiUrl).resize(growing, '640M')
    const after = await dfKiB()
    t.true(before < 320 * 1024 && after > 560 * 1024, `df in the running container: ${before} KiB before pxctl volume update --size 640M, ${after} KiB after`)
    t.is((await engine.dockerOk(['exec', container, 'cat', '/data/hello'])).trim(), payload, 'and the data is still there')
  } finally {
    await engine.dockerOk(['rm', '-f', container], { timeoutMs: 60_000 })
  }
  t.is((await engine.dockerOk(['volume', 'rm', growing])).trim(), growing)

  t.is((await engine.dockerOk(['volume', 'rm', volume])).trim(), volume)
  const names = (await engine.dockerOk(['volume', 'ls', '--format', '{{.Name}}'])).split('\n')
  t.false(names.includes(volume), 'docker volume ls no longer has it')

  const list = await pluginCall(pluginSocket, 'VolumeDriver.List', {})
  log(`VolumeDriver.List -> ${JSON.stringify(list)}`)
  t.falsy(list['Err'], `VolumeDriver.List failed: ${String(list['Err'])}`)
  const listed = ((list['Volumes'] ?? []) as PluginVolume[]).map((v) => v.Name)
  t.false(listed.includes(volume), `pxd's volume list no longer has ${volume}: ${JSON.stringify(listed)}`)

  // What pxd was asked, by startDaemon's probe, this test and dockerd (from pxd's debug log;
  // informative only, the assertions above are the test).
  const requests = pluginRequestsIn(daemon.logs())
  log(`plugin requests in pxd's log: ${requests.length > 0 ? requests.join(', ') : '(none found)'}`)
})

test('a live restart under running containers: pxd --takeover, a writer and a reader container never notice', async (t) => {
  const setup = await begin(t)
  if (!setup) return
  const { pxdDir, pluginSocket, ns, engine, daemon: old, state } = setup

  const volume = `pxd-live-${randomBytes(4).toString('hex')}`
  t.is((await engine.dockerOk(['volume', 'create', '-d', 'pxd', '--opt', 'size=256M', volume])).trim(), volume)
  const run = ['run', '--network', 'none', '-v', `${volume}:/data`, IMAGE, 'sh', '-c']
  // Each record is 64 bytes, fsynced (busybox sync FILE) before the next, until /data/stop appears.
  const writer = (await engine.dockerOk([run[0]!, '-d', ...run.slice(1), 'i=0; while [ ! -e /data/stop ]; do printf \'%063d\\n\' $i >> /data/records && sync /data/records || echo "ERROR write $i"; i=$((i+1)); done; echo DONE $i'])).trim()
  const reader = (await engine.dockerOk([run[0]!, '-d', ...run.slice(1), 'while [ ! -e /data/records ]; do sleep 0.1; done; while [ ! -e /data/stop ]; do cat /data/records > /dev/null || echo "ERROR read"; done; echo DONE'])).trim()
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const lines = async () => Number((await engine.dockerOk(['exec', writer, 'wc', '-l', '/data/records'])).trim().split(/\s+/)[0])
  const beforeTakeover = await lines()

  const oldExit = new Promise<number | null>((resolve) => old.child.once('exit', (code) => resolve(code)))
  state.daemon = await startDaemon({ dir: pxdDir, pluginSocket, commandPrefix: ns.prefix, extraArgs: ['--log-level', 'debug', '--takeover'], after: old.child })
  t.is(await oldExit, 0, 'the old pxd handed over and exited')
  t.regex(state.daemon.logs(), /live restart: the FUSE session and its volumes were taken over/)
  await new Promise((resolve) => setTimeout(resolve, 1000))
  t.true(await lines() > beforeTakeover, 'the writer went on writing after the takeover')
  await engine.dockerOk(['run', '--rm', ...run.slice(1), 'touch /data/stop'])

  let written = 0
  for (const [name, id] of [['writer', writer], ['reader', reader]] as const) {
    t.is((await engine.dockerOk(['wait', id], { timeoutMs: 60_000 })).trim(), '0', `the ${name} container exited 0`)
    const logs = await engine.dockerOk(['logs', id])
    t.false(logs.includes('ERROR'), `the ${name} container saw no error:\n${logs}`)
    const done = /DONE ?(\d*)/.exec(logs)
    t.truthy(done, `the ${name} container finished:\n${logs}`)
    if (name === 'writer') written = Number(done?.[1])
  }
  t.log(`${beforeTakeover} records before the takeover, ${written} in all`)
  let expected = ''
  for (let i = 0; i < written; i++) expected += `${String(i).padStart(63, '0')}\n`
  const sum = (await engine.dockerOk(['run', '--rm', '--network', 'none', '-v', `${volume}:/data`, IMAGE, 'md5sum', '/data/records'])).trim().split(/\s+/)[0]
  t.is(sum, createHash('md5').update(expected).digest('hex'), 'every record is there, in order')
  await engine.dockerOk(['rm', writer, reader])
  t.is((await engine.dockerOk(['volume', 'rm', volume])).trim(), volume)
})

/** Endpoints of the `plugin request` debug lines in pxd's JSON log, in order. */
function pluginRequestsIn(logs: string): string[] {
  const endpoints: string[] = []
  for (const line of logs.split('\n')) {
    if (!line.includes('plugin request')) continue
    try {
      const entry = JSON.parse(line) as { msg?: unknown; endpoint?: unknown }
      if (entry.msg === 'plugin request' && typeof entry.endpoint === 'string') endpoints.push(entry.endpoint.replace(/^\//, ''))
    } catch {
      /* not a JSON line */
    }
  }
  return endpoints
}

/**
 * Always runs, pass or fail: stops dockerd, then pxd, then the namespace holder (each by the
 * pid we started it with), checks that nothing of ours is left attached or mounted, and removes
 * the temp dir. Anything left over fails the test.
 */
async function teardown(
  t: ExecutionContext,
  dir: string,
  state: () => { ns: MountNamespace | undefined; engine: DockerEngine | undefined; daemon: Daemon | undefined },
  started: number,
): Promise<void> {
  const { ns, engine, daemon } = state()
  const problems: string[] = []
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn()
    } catch (err) {
      problems.push(`${what}: ${(err as Error).message}`)
    }
  }
  // Logs are read as the processes stop (the temp dir goes at the end) and shown if anything failed.
  const logsToShow: string[] = []

  if (engine !== undefined) {
    await step('stop dockerd', async () => {
      const how = await engine.stop(20_000)
      t.log(`dockerd (pid ${engine.pid}): ${how}`)
      logsToShow.push(`--- dockerd log (tail) ---\n${engine.logTail(60)}`)
      // containerd dumps its goroutines into TMPDIR on SIGUSR1; seen now and then here, from a
      // sender not identified. Harmless, but worth a line in the log.
      const dumps = readdirSync(join(dir, 'docker-tmp')).filter((f) => f.endsWith('.stacks.log'))
      if (dumps.length > 0) t.log(`note: containerd wrote goroutine dumps ${dumps.join(', ')} (it got a SIGUSR1)`)
      if (!how.startsWith('exited') && !how.startsWith('already')) problems.push(`dockerd: ${how}`)
    })
  }
  if (daemon !== undefined) {
    await step('stop pxd', async () => {
      await daemon.stop()
      t.log(`pxd (pid ${daemon.pid}) stopped`)
    })
    logsToShow.push(`--- pxd log (tail) ---\n${tailLines(daemon.logs(), 80)}`)
  }
  if (ns !== undefined) {
    // Checked before the holder goes: once the namespace dies, its mounts go with it and would
    // hide a pxd that did not clean up after itself.
    await step('loop devices after pxd stopped', async () => {
      const loops = await loopDevicesUnder(dir, ns)
      if (loops.length > 0) problems.push(`loop devices still attached after pxd stopped:\n${loops.join('\n')}`)
    })
    await step('mounts after pxd stopped', async () => {
      const left = ns.mounts().filter((m) => m.mountPoint.startsWith(join(dir, 'pxd')) || m.fsType === 'fuse' || m.fsType.startsWith('fuse.'))
      if (left.length > 0) {
        problems.push(`mounts left in the namespace after pxd stopped: ${left.map((m) => `${m.mountPoint} (${m.fsType})`).join(', ')}`)
      }
    })
    await step('processes left in the namespace', async () => {
      const pids = ns.processes()
      if (pids.length === 0) return
      const described = pids.map((pid) => {
        try {
          return `${pid} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()}`
        } catch {
          return String(pid)
        }
      })
      problems.push(`processes still running in the test's namespace (killed now): ${described.join('; ')}`)
      // Only descendants of what this test started can be in this namespace.
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          /* gone meanwhile */
        }
      }
    })
    await step('stop namespace holder', async () => {
      await ns.close()
      t.log(`namespace holder (pid ${ns.holderPid}) stopped`)
    })
  }
  await step('loop devices after teardown', async () => {
    const loops = await loopDevicesUnder(dir)
    if (loops.length === 0) return
    problems.push(`losetup -a shows loop devices on files under ${dir}:\n${loops.join('\n')}`)
    for (const line of loops) {
      const device = line.split(':')[0]
      if (device !== undefined && device.startsWith('/dev/loop')) await runCommand(['losetup', '-d', device], { timeoutMs: 10_000 })
    }
  })
  if (!t.passed || problems.length > 0) for (const text of logsToShow) t.log(text)
  await step('remove temp dir', async () => {
    rmSync(dir, { recursive: true, force: true })
  })
  t.log(`teardown done; test took ${((Date.now() - started) / 1000).toFixed(1)} s`)
  if (problems.length > 0) throw new Error(`teardown found problems:\n${problems.join('\n')}`)
}
