// Two Docker engines on two pxd nodes share one pxd shared volume (shared=true, repl=2).
//
// Each node is a private mount namespace held by a `sleep infinity` that this test spawned,
// with a tmpfs over /run and over /run/docker/plugins. In node X's namespace run pxd node X
// (its plugin socket bound at /run/docker/plugins/pxd.sock there, named through
// /proc/<holder>/root so the host can probe it too) and dockerd X (every path of its own under
// the test's temp dir), so dockerd X discovers pxd X's socket and nothing else, and sees the
// ext4 or FUSE mounts pxd X makes. etcd and the peer links between the pxd daemons are TCP on
// loopback, which the mount namespaces do not separate. The image is a static busybox
// imported from a tarball on each engine, since nothing can be pulled.
import test, { type ExecutionContext } from 'ava'
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { ApiClient } from '../../src/api/client'
import type { VolumeInfo } from '../../src/volumes/types'
import { startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster'
import { BUSYBOX, DOCKERD, DOCKER_CLI, importBusyboxImage, isStaticElf, startDockerEngine, type DockerEngine } from '../helpers/docker-engine'
import { NSENTER, UNSHARE, createMountNamespace, describeResult, runCommand, type MountNamespace } from '../helpers/mount-namespace'
import { pluginCall } from '../helpers/plugin-client'
import { missingForIntegration } from '../helpers/preflight'

const IMAGE = 'pxd-test-busybox:latest'
const PLUGIN_SOCKET = '/run/docker/plugins/pxd.sock'
const VOLUME = 'web'
const NODE_IDS = ['node-a', 'node-b'] as const
type NodeId = (typeof NODE_IDS)[number]
const ETCD_BIN = process.env['ETCD_BIN'] ?? '/usr/bin/etcd'
const TEST_TIMEOUT_MS = 240_000
/** Lines each writer must have appended before the readers look. */
const MIN_LINES = 10

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
  const missing = missingForIntegration()
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
  if (!existsSync(ETCD_BIN)) missing.push(`${ETCD_BIN} (Debian package etcd-server)`)
  if (!existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (Debian package busybox-static)`)
  else if (!isStaticElf(BUSYBOX)) missing.push(`a static ${BUSYBOX} (Debian package busybox-static; this one is dynamic)`)
  return missing
}

function tailLines(text: string, lines: number): string {
  return text.split('\n').slice(-lines - 1).join('\n')
}

function mountNamespaceOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/mnt`)
  } catch {
    return undefined
  }
}

/** Loop devices whose backing file lies under one of dirs, as `losetup -a` lines. */
async function loopDevicesUnder(dirs: string[], ns?: MountNamespace): Promise<string[]> {
  const command = ['losetup', '-a']
  const r = ns === undefined ? await runCommand(command, { timeoutMs: 10_000 }) : await ns.run(command, { timeoutMs: 10_000 })
  if (r.code !== 0) throw new Error(describeResult(r))
  return r.stdout.split('\n').filter((line) => dirs.some((d) => line.includes(d)))
}

/**
 * A log a writer appended `<tag>-1`, `<tag>-2`, ... to: how many whole lines, and what is
 * wrong with it if anything (a gap, a duplicate, a foreign line). A last line without its
 * newline is a write the reader caught half-way; it is not counted.
 */
function checkLog(text: string, tag: string): { count: number; problem: string | undefined; partial: string | undefined } {
  const lines = text.split('\n')
  const last = lines.pop()
  const partial = last === '' ? undefined : last
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== `${tag}-${i + 1}`) {
      return { count: lines.length, problem: `line ${i + 1} is ${JSON.stringify(lines[i])}, expected ${tag}-${i + 1}`, partial }
    }
  }
  return { count: lines.length, problem: undefined, partial }
}

interface NodeState {
  id: NodeId
  ns: MountNamespace | undefined
  engine: DockerEngine | undefined
}

interface State {
  nodes: Map<NodeId, NodeState>
  cluster: Cluster | undefined
}

test('two docker engines on two pxd nodes share one repl=2 shared volume', async (t) => {
  t.timeout(TEST_TIMEOUT_MS)
  const missing = missingPreconditions()
  if (missing.length > 0) {
    t.fail(`cannot run the two-node docker shared volume test, missing: ${missing.join('; ')}`)
    return
  }
  const started = Date.now()
  const dir = mkdtempSync(join(tmpdir(), 'pxd-docker-shared-'))
  const state: State = { nodes: new Map(), cluster: undefined }
  for (const id of NODE_IDS) state.nodes.set(id, { id, ns: undefined, engine: undefined })
  t.teardown(async () => teardown(t, dir, state, started))

  const nodeState = (id: NodeId): NodeState => state.nodes.get(id)!
  const nsOf = (id: string): MountNamespace => {
    const ns = state.nodes.get(id as NodeId)?.ns
    if (ns === undefined) throw new Error(`no mount namespace for ${id}`)
    return ns
  }

  // 1. One private mount namespace per node, each with only its own node's plugin socket to discover.
  for (const id of NODE_IDS) {
    const ns = await createMountNamespace()
    nodeState(id).ns = ns
    t.log(`[${id}] mount namespace held by pid ${ns.holderPid} (${UNSHARE} --mount --propagation private sleep infinity)`)
    await ns.mountTmpfs('/run')
    await ns.mountTmpfs('/run/docker/plugins')
    t.deepEqual(readdirSync(ns.hostPath('/run/docker/plugins')), [], `${id}'s namespace starts with no plugin socket`)
  }
  const [nsA, nsB] = [nsOf('node-a'), nsOf('node-b')]
  t.not(mountNamespaceOf(nsA.holderPid), mountNamespaceOf(nsB.holderPid), 'the two nodes have mount namespaces of their own')

  // 2. The cluster: etcd on the host, pxd node X inside namespace X, its socket /run/docker/plugins/pxd.sock there.
  const cluster = await startCluster([...NODE_IDS], {
    pluginSocket: (id) => nsOf(id).hostPath(PLUGIN_SOCKET),
    commandPrefix: (id) => nsOf(id).prefix,
    // debug: pxd logs every plugin request, which shows what Docker asked of it.
    extraArgs: ['--log-level', 'debug'],
  })
  state.cluster = cluster
  const pxd = (id: NodeId): ClusterNode => cluster.node(id)
  for (const id of NODE_IDS) {
    const ns = nsOf(id)
    const node = pxd(id)
    t.log(`[${id}] pxd pid ${node.pid}, run dir ${node.runDir}, --plugin-socket ${node.pluginSocket}, api ${node.apiUrl}, peer port ${node.peerPort}`)
    t.is(mountNamespaceOf(node.pid), mountNamespaceOf(ns.holderPid), `pxd ${id} runs in ${id}'s mount namespace`)
    t.deepEqual(readdirSync(ns.hostPath('/run/docker/plugins')), ['pxd.sock'], `${id}'s namespace has pxd's socket and nothing else`)
    const activate = await pluginCall(node.pluginSocket, '/Plugin.Activate', {})
    t.deepEqual(activate.body['Implements'], ['VolumeDriver'], `Plugin.Activate on ${id} answered ${activate.raw}`)
  }

  // 3. dockerd X inside namespace X, everything under <temp dir>/<node>; a local busybox image on each.
  await Promise.all(
    NODE_IDS.map(async (id) => {
      const engineDir = join(dir, id)
      mkdirSync(engineDir)
      const engine = await startDockerEngine({
        dir: engineDir,
        commandPrefix: nsOf(id).prefix,
        log: (line) => t.log(`[${id}] ${line}`),
        cgroupParent: `pxd-test-${process.pid}-${Date.now()}-${id}`,
      })
      nodeState(id).engine = engine
      await importBusyboxImage(engine, IMAGE, engineDir)
    }),
  )
  const docker = (id: NodeId): DockerEngine => nodeState(id).engine!
  for (const id of NODE_IDS) {
    t.is(mountNamespaceOf(docker(id).pid), mountNamespaceOf(nsOf(id).holderPid), `dockerd ${id} runs in ${id}'s mount namespace`)
  }
  const A = docker('node-a')
  const B = docker('node-b')
  const apiA = new ApiClient(pxd('node-a').apiUrl)
  const apiB = new ApiClient(pxd('node-b').apiUrl)
  const createArgs = ['volume', 'create', '-d', 'pxd', '--opt', 'repl=2', '--opt', 'shared=true', VOLUME]
  const mounted = (id: NodeId): string => join(pxd(id).runDir, 'mounts', VOLUME)
  const mountsOfVolume = (id: NodeId) => nsOf(id).mounts().filter((m) => m.mountPoint === mounted(id))

  // 4. The volume, created on node-a, is known on node-b.
  t.is((await A.dockerOk(createArgs)).trim(), VOLUME, 'docker volume create on node-a')
  const lsB = (await B.dockerOk(['volume', 'ls', '--format', '{{.Driver}} {{.Name}}'])).split('\n')
  t.true(lsB.includes(`pxd ${VOLUME}`), `docker volume ls on node-b lists the volume node-a created: ${JSON.stringify(lsB)}`)
  t.is((await B.dockerOk(createArgs)).trim(), VOLUME, 'the same create on node-b is accepted')
  const inspectedB = JSON.parse(await B.dockerOk(['volume', 'inspect', VOLUME])) as Array<Record<string, unknown>>
  t.is(inspectedB[0]?.['Driver'], 'pxd', 'docker volume inspect on node-b shows driver pxd')
  for (const id of NODE_IDS) {
    const volumePlugins = JSON.parse(await docker(id).dockerOk(['info', '--format', '{{json .Plugins.Volume}}'])) as string[]
    t.true(volumePlugins.includes('pxd'), `docker info on ${id} lists volume plugins ${JSON.stringify(volumePlugins)}`)
  }
  const created = await apiB.inspectVolume(VOLUME)
  t.true(created.shared, 'pxd has it as a shared volume')
  t.is(created.repl, 2)
  t.deepEqual(created.replicas.map((r) => r.nodeId).sort(), ['node-a', 'node-b'], 'one replica on each node')
  t.is(created.attachedOn, null, 'not attached before any container uses it')

  // 5. A writer container on each node, node-a's first: node-a serves the volume, node-b is its client.
  const writer = (tag: string): string[] => [
    'run', '-d', '--name', `writer-${tag}`, '--network', 'none', '-v', `${VOLUME}:/data`, IMAGE,
    'sh', '-c', `i=0; while true; do i=$((i+1)); echo ${tag}-$i >> /data/${tag}.log; sleep 0.1; done`,
  ]
  await A.dockerOk(writer('a'), { timeoutMs: 60_000 })
  t.deepEqual(mountsOfVolume('node-a').map((m) => m.fsType), ['ext4'], `node-a, first to mount, has pxd's ext4 at ${mounted('node-a')}`)
  await B.dockerOk(writer('b'), { timeoutMs: 60_000 })
  t.deepEqual(mountsOfVolume('node-b').map((m) => m.fsType), ['fuse.pxd-shared'], `node-b has the FUSE client at ${mounted('node-b')}`)
  t.deepEqual(mountsOfVolume('node-a').map((m) => m.fsType), ['ext4'], 'node-a still has its ext4')

  // Both writers at it: the server's ext4 holds both logs, growing.
  const onServer = (file: string): string => {
    try {
      return readFileSync(nsA.hostPath(join(mounted('node-a'), file)), 'utf8')
    } catch {
      return ''
    }
  }
  await waitFor(
    `both writers to append ${MIN_LINES} lines`,
    async () => checkLog(onServer('a.log'), 'a').count >= MIN_LINES && checkLog(onServer('b.log'), 'b').count >= MIN_LINES,
    30_000,
  )
  const running = async (): Promise<void> => {
    for (const [id, tag] of [['node-a', 'a'], ['node-b', 'b']] as const) {
      const r = (await docker(id).dockerOk(['inspect', '--format', '{{.State.Running}}', `writer-${tag}`])).trim()
      t.is(r, 'true', `writer-${tag} is running on ${id}`)
    }
  }
  await running()

  // A short-lived reader on each node reads the other node's log.
  const readOn = async (id: NodeId, file: string): Promise<{ fsType: string | undefined; content: string }> => {
    const out = await docker(id).dockerOk(
      ['run', '--rm', '--network', 'none', '-v', `${VOLUME}:/data`, IMAGE, 'sh', '-c', `grep ' /data ' /proc/mounts; echo ---; cat /data/${file}`],
      { timeoutMs: 60_000 },
    )
    const at = out.indexOf('---\n')
    const mountLine = out.slice(0, Math.max(at, 0)).split('\n').find((l) => l.split(' ')[1] === '/data')
    return { fsType: mountLine?.split(' ')[2], content: at < 0 ? '' : out.slice(at + 4) }
  }
  const counts: Record<string, number> = {}
  const readOther = async (round: string): Promise<void> => {
    for (const [reader, file, tag] of [['node-a', 'b.log', 'b'], ['node-b', 'a.log', 'a']] as const) {
      const { fsType, content } = await readOn(reader, file)
      t.is(fsType, reader === 'node-a' ? 'ext4' : 'fuse.pxd-shared', `${round}: a container's /data on ${reader} is ${reader === 'node-a' ? "the server's ext4" : 'the FUSE client'}`)
      const check = checkLog(content, tag)
      t.is(check.problem, undefined, `${round}: ${file} read on ${reader} is whole and in order`)
      if (check.partial !== undefined) t.log(`${round}: ${file} read on ${reader} ended in a line caught half-written: ${JSON.stringify(check.partial)}`)
      t.true(check.count >= MIN_LINES, `${round}: ${file} read on ${reader} has ${check.count} lines of the other node's writer`)
      if (counts[file] !== undefined) t.true(check.count > counts[file]!, `${round}: ${file} grew from ${counts[file]!} to ${check.count} lines: its writer is still at it`)
      counts[file] = check.count
      t.log(`${round}: ${reader} reads ${check.count} lines of ${file}`)
    }
  }
  await readOther('first read')

  // A file written by a container on node-b reads back on node-a.
  await B.dockerOk(['run', '--rm', '--network', 'none', '-v', `${VOLUME}:/data`, IMAGE, 'sh', '-c', 'echo hello > /data/shared.txt'], { timeoutMs: 60_000 })
  const hello = await A.dockerOk(['run', '--rm', '--network', 'none', '-v', `${VOLUME}:/data`, IMAGE, 'cat', '/data/shared.txt'], { timeoutMs: 60_000 })
  t.is(hello, 'hello\n', "node-a's container reads what node-b's wrote")

  await readOther('second read')
  await running()

  // 6. pxd's view: node-a, first to mount, serves; node-b is its one client, sending file operations.
  const sharing = await waitFor(
    'node-b to publish its client record with operations sent',
    async () => {
      const info = await apiA.inspectVolume(VOLUME)
      const b = info.sharing?.clients.find((c) => c.nodeId === 'node-b')
      return b !== undefined && b.ops > 0 ? info : undefined
    },
    20_000,
  )
  t.log(`inspect on node-a: attachedOn ${String(sharing.attachedOn)}, sharing ${JSON.stringify(sharing.sharing)}`)
  for (const [id, info] of [['node-a', sharing], ['node-b', await apiB.inspectVolume(VOLUME)]] as const) {
    t.is(info.sharing?.server, 'node-a', `inspect on ${id}: node-a, the first to mount, serves the volume`)
    t.is(info.attachedOn, 'node-a', `inspect on ${id}: attached on node-a`)
    t.deepEqual(info.sharing?.clients.map((c) => c.nodeId), ['node-b'], `inspect on ${id}: node-b is the only client`)
    t.true((info.sharing?.clients[0]?.mounts ?? 0) >= 1, `inspect on ${id}: node-b has it mounted`)
  }
  t.is(sharing.mountpoint, mounted('node-a'))
  t.is((await apiB.inspectVolume(VOLUME)).mountpoint, mounted('node-b'))

  // 7. Containers go, node-a's first. The server keeps serving node-b, and cannot remove the volume.
  for (const [id, tag] of [['node-a', 'a'], ['node-b', 'b']] as const) {
    const engine = docker(id)
    await engine.dockerOk(['stop', '--time', '1', `writer-${tag}`], { timeoutMs: 30_000 })
    await engine.dockerOk(['rm', `writer-${tag}`])
    if (id === 'node-a') {
      const refused = await A.docker(['volume', 'rm', VOLUME])
      t.not(refused.code, 0, 'docker volume rm on node-a fails while node-b still has the volume mounted')
      t.regex(refused.stderr, /mounted|in use|attached/i, `and says why: ${refused.stderr.trim()}`)
      const stillA = await apiA.inspectVolume(VOLUME)
      t.is(stillA.attachedOn, 'node-a', 'node-a keeps the volume attached for its client')
      t.is(stillA.mounts, 0, 'with no mount of its own left')
      const before = counts['b.log']!
      const { content } = await readOn('node-b', 'b.log')
      const after = checkLog(content, 'b')
      t.is(after.problem, undefined, "node-b's log is whole after node-a's container went")
      t.true(after.count > before, `node-b's writer carries on once node-a has no container: ${before} -> ${after.count} lines`)
    }
  }
  const lastUnmount = Date.now()
  await waitFor(
    'node-a to detach the volume once no node has it mounted',
    async () => (await apiA.inspectVolume(VOLUME)).attachedOn === null,
    30_000,
  )
  t.log(`node-a detached the volume ${Date.now() - lastUnmount} ms after node-b's container was removed`)
  for (const id of NODE_IDS) {
    t.deepEqual(mountsOfVolume(id), [], `nothing mounted at ${mounted(id)} on ${id} once the containers are gone`)
  }
  const noClients = await apiA.inspectVolume(VOLUME)
  t.deepEqual(noClients.sharing?.clients ?? [], [], 'no client records left')

  // 8. docker volume rm on node-b, the node that mounted last.
  t.is((await B.dockerOk(['volume', 'rm', VOLUME])).trim(), VOLUME, 'docker volume rm on node-b')
  const left: VolumeInfo[] = await apiA.listVolumes()
  t.false(left.some((v) => v.name === VOLUME), `pxd no longer has the volume: ${JSON.stringify(left.map((v) => v.name))}`)
  for (const id of NODE_IDS) {
    const names = (await docker(id).dockerOk(['volume', 'ls', '--format', '{{.Name}}'])).split('\n')
    t.false(names.includes(VOLUME), `docker volume ls on ${id} no longer has it`)
  }

  // Nothing of pxd's is mounted under either run dir but its device directory, nor attached.
  for (const id of NODE_IDS) {
    const runDir = pxd(id).runDir
    const under = nsOf(id).mounts().filter((m) => m.mountPoint.startsWith(runDir + '/'))
    t.log(`[${id}] mounts under ${runDir} with pxd running: ${under.map((m) => `${m.mountPoint} (${m.fsType})`).join(', ') || '(none)'}`)
    t.deepEqual(
      under.filter((m) => m.mountPoint !== join(runDir, 'dev')).map((m) => `${m.mountPoint} (${m.fsType})`),
      [],
      `nothing of pxd left mounted under ${runDir} on ${id}`,
    )
    t.deepEqual(await loopDevicesUnder([cluster.dir], nsOf(id)), [], `no loop device on a file of ${id}`)
  }
})

/** pxd's JSON log lines at warn level or above. */
function warningsIn(logs: string): string[] {
  return logs.split('\n').filter((line) => {
    try {
      return ((JSON.parse(line) as { level?: unknown }).level as number) >= 40
    } catch {
      return false
    }
  })
}

/**
 * Always runs, pass or fail: stops both dockerds, then both pxd daemons (each by the pid it
 * was started with), checks in each namespace that nothing of the test is left mounted,
 * attached or running, ends the namespace holders, etcd, and removes the temp dirs. Anything
 * left over fails the test.
 */
async function teardown(t: ExecutionContext, dir: string, state: State, started: number): Promise<void> {
  const problems: string[] = []
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn()
    } catch (err) {
      problems.push(`${what}: ${(err as Error).message}`)
    }
  }
  const logsToShow: string[] = []
  const nodes = [...state.nodes.values()]
  const cluster = state.cluster

  await Promise.all(
    nodes.map(async ({ id, engine }) => {
      if (engine === undefined) return
      await step(`stop dockerd on ${id}`, async () => {
        const how = await engine.stop(30_000)
        t.log(`[${id}] dockerd (pid ${engine.pid}): ${how}`)
        logsToShow.push(`--- ${id} dockerd log (tail) ---\n${engine.logTail(60)}`)
        const dumps = readdirSync(join(engine.dir, 'docker-tmp')).filter((f) => f.endsWith('.stacks.log'))
        if (dumps.length > 0) t.log(`note: containerd of ${id} wrote goroutine dumps ${dumps.join(', ')} (it got a SIGUSR1)`)
        if (!how.startsWith('exited') && !how.startsWith('already')) problems.push(`dockerd on ${id}: ${how}`)
      })
    }),
  )
  if (cluster !== undefined) {
    // The client first, then the node that served.
    for (const { id } of [...nodes].reverse()) {
      const node = cluster.nodes.find((n) => n.nodeId === id)
      if (node === undefined) continue
      await step(`stop pxd on ${id}`, async () => {
        await node.stop()
        t.log(`[${id}] pxd (pid ${node.pid}) stopped (${node.child.exitCode !== null ? `exit ${node.child.exitCode}` : `signal ${String(node.child.signalCode)}`})`)
      })
      logsToShow.push(`--- ${id} pxd log (tail) ---\n${tailLines(node.logs(), 80)}`)
      // Informative: what pxd warned about during the test.
      const warnings = warningsIn(node.logs())
      t.log(`[${id}] pxd logged ${warnings.length} warnings or errors${warnings.length > 0 ? `:\n${warnings.slice(0, 10).join('\n')}` : ''}`)
    }
  }
  const ours = [dir, ...(cluster !== undefined ? [cluster.dir] : [])]
  for (const { id, ns } of nodes) {
    if (ns === undefined) continue
    // Checked before the holder goes: once the namespace dies its mounts go with it and would
    // hide a pxd or dockerd that did not clean up after itself.
    await step(`loop devices on ${id} after pxd stopped`, async () => {
      const loops = await loopDevicesUnder(ours, ns)
      if (loops.length > 0) problems.push(`loop devices still attached after pxd ${id} stopped:\n${loops.join('\n')}`)
    })
    await step(`mounts on ${id} after pxd and dockerd stopped`, async () => {
      const left = ns.mounts().filter((m) => ours.some((d) => m.mountPoint.startsWith(d + '/')))
      if (left.length > 0) {
        problems.push(`mounts left in ${id}'s namespace: ${left.map((m) => `${m.mountPoint} (${m.fsType})`).join(', ')}`)
      }
    })
    await step(`processes left in ${id}'s namespace`, async () => {
      const pids = ns.processes()
      if (pids.length === 0) return
      const described = pids.map((pid) => {
        try {
          return `${pid} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()}`
        } catch {
          return String(pid)
        }
      })
      problems.push(`processes still running in ${id}'s namespace (killed now): ${described.join('; ')}`)
      // Only descendants of what this test started can be in this namespace.
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          /* gone meanwhile */
        }
      }
    })
    await step(`stop ${id}'s namespace holder`, async () => {
      await ns.close()
      t.log(`[${id}] namespace holder (pid ${ns.holderPid}) stopped`)
    })
  }
  if (cluster !== undefined) {
    await step('stop etcd, remove the cluster dir', async () => {
      await cluster.stop()
      t.log(`etcd (pid ${cluster.etcd.pid}) stopped`)
    })
  }
  await step('loop devices after teardown', async () => {
    const loops = await loopDevicesUnder(ours)
    if (loops.length === 0) return
    problems.push(`losetup -a shows loop devices on files under ${ours.join(' or ')}:\n${loops.join('\n')}`)
    for (const line of loops) {
      const device = line.split(':')[0]
      if (device !== undefined && device.startsWith('/dev/loop')) await runCommand(['losetup', '-d', device], { timeoutMs: 10_000 })
    }
  })
  if (!t.passed || problems.length > 0) for (const text of logsToShow) t.log(text)
  await step('remove temp dirs', async () => {
    rmSync(dir, { recursive: true, force: true })
    if (cluster !== undefined && existsSync(cluster.dir)) problems.push(`the cluster dir ${cluster.dir} is still there (something left mounted under it)`)
  })
  t.log(`teardown done; test took ${((Date.now() - started) / 1000).toFixed(1)} s`)
  if (problems.length > 0) throw new Error(`teardown found problems:\n${problems.join('\n')}`)
}
