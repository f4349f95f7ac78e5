/** pxctl against a real daemon: tables for people, --json for programs, errors on stderr. */
import test from 'ava'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { PXCTL_BIN, PXD_BIN, REPO_ROOT } from '../helpers/paths'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon

test.before(async () => {
  daemon = await startDaemon({ dir })
})

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

const run = (bin: string, args: string[]) => runCommand(process.execPath, [bin, ...args], 120_000)
const pxctl = (...args: string[]) => run(PXCTL_BIN, ['--api', daemon.apiUrl, ...args])

test('--help of both executables', async (t) => {
  const a = await run(PXCTL_BIN, ['--help'])
  t.is(a.code, 0)
  t.regex(a.stdout, /volume create NAME/)
  const b = await run(PXD_BIN, ['--help'])
  t.is(b.code, 0)
  t.regex(b.stdout, /--plugin-socket PATH/)
  t.regex(b.stdout, /PXD_DATA_DIR/)
  const bad = await run(PXD_BIN, ['--no-such-flag'])
  t.is(bad.code, 2)
  t.regex(bad.stderr, /Unknown option|unknown option/i)
})

test('status', async (t) => {
  const human = await pxctl('status')
  t.is(human.code, 0, human.stderr)
  t.regex(human.stdout, /Node:\s+node-a/)
  t.regex(human.stdout, /Capacity:/)
  const json = JSON.parse((await pxctl('--json', 'status')).stdout) as { nodeId: string; capacity: { total: number } }
  t.is(json.nodeId, 'node-a')
  t.true(json.capacity.total > 0)
})

test('cluster list shows each node with the version it runs', async (t) => {
  const version = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version
  const list = await pxctl('cluster', 'list')
  t.is(list.code, 0, list.stderr)
  t.regex(list.stdout, /^NODE\s+STATE\s+PEER ADDRESS\s+USED\s+FREE\s+VERSION$/m)
  const row = list.stdout.split('\n').find((l) => l.startsWith('node-a '))
  t.truthy(row, list.stdout)
  t.is(row!.trim().split(/\s+/).at(-1), version)
  const json = JSON.parse((await pxctl('--json', 'cluster', 'list')).stdout) as Array<{ nodeId: string; version: string }>
  t.deepEqual(json.map((n) => [n.nodeId, n.version]), [['node-a', version]])
})

test('volume create, list, inspect (with mountpoint while mounted), delete', async (t) => {
  const created = await pxctl('volume', 'create', 'cli1', '--size', '48M', '--repl', '1', '--fs', 'ext4', '--opt', 'io_priority=low')
  t.is(created.code, 0, created.stderr)
  t.regex(created.stdout, /Volume cli1 created/)

  const list = await pxctl('volume', 'list')
  t.regex(list.stdout, /^NAME\s+ID\s+SIZE\s+REPL\s+FS\s+SHARED\s+STATE/m)
  t.regex(list.stdout, /^cli1\s+[0-9a-f]{16}\s+48 MiB\s+1\s+ext4\s+no\s+detached\s+healthy/m)

  const mounted = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Mount', { Name: 'cli1', ID: 'm1' })
  t.is(mounted.body.Err, '', mounted.raw)
  const inspect = JSON.parse((await pxctl('--json', 'volume', 'inspect', 'cli1')).stdout) as Record<string, unknown>
  t.is(inspect.name, 'cli1')
  t.regex(String(inspect.id), /^[0-9a-f]{16}$/)
  t.is(inspect.size, 48 * 1024 * 1024)
  t.is(inspect.repl, 1)
  t.is(inspect.state, 'attached')
  t.is(inspect.mountpoint, mounted.body.Mountpoint)
  t.deepEqual(inspect.options, { io_priority: 'low' })
  const human = await pxctl('volume', 'inspect', 'cli1')
  t.regex(human.stdout, /Mountpoint:\s+\//)

  const busy = await pxctl('volume', 'delete', 'cli1')
  t.not(busy.code, 0)
  t.regex(busy.stderr, /mounted/)
  await pluginCall(daemon.pluginSocket, '/VolumeDriver.Unmount', { Name: 'cli1', ID: 'm1' })
  const detached = JSON.parse((await pxctl('--json', 'volume', 'inspect', 'cli1')).stdout) as Record<string, unknown>
  t.is(detached.state, 'detached')
  t.is(detached.mountpoint, null)

  const del = await pxctl('volume', 'delete', 'cli1')
  t.is(del.code, 0, del.stderr)
  t.deepEqual(JSON.parse((await pxctl('--json', 'volume', 'list')).stdout), [])
})

test('errors go to stderr with a non-zero exit', async (t) => {
  const missing = await pxctl('volume', 'inspect', 'ghost')
  t.is(missing.code, 1)
  t.is(missing.stdout, '')
  t.regex(missing.stderr, /ghost not found/)
  const bad = await pxctl('volume', 'create', 'x', '--size', '0')
  t.is(bad.code, 1)
  t.regex(bad.stderr, /greater than zero/)
  const usage = await pxctl('volume', 'frobnicate')
  t.is(usage.code, 2)
  t.regex(usage.stderr, /unknown volume command/)
  const down = await run(PXCTL_BIN, ['--api', 'http://127.0.0.1:1', 'status'])
  t.is(down.code, 1)
  t.regex(down.stderr, /cannot reach pxd/)
})
