/**
 * What an operator and a supervisor see of a running node: the health endpoints, the
 * one-screen `pxctl status` (for people and as JSON), and the daemon's log formats.
 */
import test from 'ava'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { PXCTL_BIN } from '../helpers/paths'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon

test.before(async () => {
  daemon = await startDaemon({ dir })
  const created = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'opvol', Opts: { size: '32M' } })
  if (created.body.Err !== '') throw new Error(`create failed: ${created.raw}`)
})

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

const pxctl = (...args: string[]) => runCommand(process.execPath, [PXCTL_BIN, '--api', daemon.apiUrl, ...args], 60_000)

test('GET /healthz answers ok', async (t) => {
  const res = await fetch(`${daemon.apiUrl}/healthz`)
  t.is(res.status, 200)
  t.regex(res.headers.get('content-type') ?? '', /^text\/plain/)
  t.is((await res.text()).trim(), 'ok')
})

test('GET /readyz is 200 with every check passing on a running daemon', async (t) => {
  const res = await fetch(`${daemon.apiUrl}/readyz`)
  const body = await res.json() as { ready: boolean; notReady: string[]; checks: Record<string, { ok: boolean; error?: string }> }
  t.is(res.status, 200, JSON.stringify(body))
  t.true(body.ready)
  t.deepEqual(body.notReady, [])
  t.true(body.checks.kvdb?.ok, 'the metadata store is checked')
  for (const [name, check] of Object.entries(body.checks)) t.true(check.ok, `${name}: ${check.error}`)
})

test('pxctl status: one screen for people', async (t) => {
  const r = await pxctl('status')
  t.is(r.code, 0, r.stderr)
  const out = r.stdout
  t.regex(out, /^Status:\s+ready$/m)
  t.regex(out, /^Node:\s+node-a$/m)
  t.regex(out, /^Version:\s+\d+\.\d+\.\d+, up \d+[smhd]/m)
  t.regex(out, /^Metadata:\s+embedded$/m)
  t.regex(out, /^Cluster:\s+1 of 1 node online$/m)
  t.regex(out, /^Peers:\s+none \(single node\)$/m)
  t.regex(out, /^Capacity:\s+[\d.]+ [KMGTP]?i?B used of [\d.]+ [KMGTP]iB \((\d+|<1|>99)%\), [\d.]+ [KMGTP]?i?B free$/m)
  t.regex(out, /^Volumes:\s+1: 1 healthy, 0 degraded; 0 attached$/m)
  t.true(out.trim().split('\n').length <= 24, 'fits on one screen')
})

test('pxctl --json status: numbers in bytes, peers, health', async (t) => {
  const r = await pxctl('--json', 'status')
  t.is(r.code, 0, r.stderr)
  const s = JSON.parse(r.stdout) as {
    nodeId: string; kvdb: string; uptimeSeconds: number
    health: { ready: boolean; notReady: string[] }
    capacity: { total: number; free: number; used: number }
    cluster: { nodes: number; online: number }
    volumes: { total: number; healthy: number; degraded: number; attached: number }
    peers: { total: number; up: number; down: number; downNodes: string[] }
  }
  t.is(s.nodeId, 'node-a')
  t.is(s.kvdb, 'embedded')
  t.true(Number.isInteger(s.uptimeSeconds))
  t.true(s.health.ready)
  t.true(Number.isSafeInteger(s.capacity.total) && s.capacity.total > 0)
  t.is(s.capacity.used, s.capacity.total - s.capacity.free)
  t.deepEqual(s.cluster, { nodes: 1, online: 1 })
  t.deepEqual(s.volumes, { total: 1, attached: 0, degraded: 0, healthy: 1 })
  t.deepEqual(s.peers, { total: 0, up: 0, down: 0, downNodes: [] })
  t.is(await pxctl('status', '--json').then((x) => JSON.parse(x.stdout).nodeId), 'node-a', '--json may follow the command')
})

test('pxctl --json errors are JSON on stderr with the error code', async (t) => {
  const r = await pxctl('--json', 'volume', 'inspect', 'ghost')
  t.is(r.code, 1)
  t.is(r.stdout, '')
  const e = JSON.parse(r.stderr) as { error: { code: string; message: string } }
  t.is(e.error.code, 'NOT_FOUND')
  t.regex(e.error.message, /ghost not found/)
  const usage = await pxctl('--json', 'volume', 'frobnicate')
  t.is(usage.code, 2)
  t.is((JSON.parse(usage.stderr) as { error: { code: string } }).error.code, 'USAGE')
})

test('logs are JSON lines by default, each volume line with the volume\'s name', async (t) => {
  const lines = daemon.logs().split('\n').filter((l) => l.startsWith('{'))
  t.true(lines.length > 0)
  const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
  const ready = records.find((r) => r.msg === 'pxd ready')
  t.truthy(ready)
  t.is(ready!.node, 'node-a')
  const created = records.find((r) => r.msg === 'volume created')
  t.is(created?.volume, 'opvol')
  t.regex(String(created?.volumeId), /^[0-9a-f]{16}$/, 'and its id, under one key: volumeId')
})

test('pxd --log-pretty prints readable lines, not JSON, and flushes them at shutdown', async (t) => {
  const prettyDir = makeTempDir()
  const pretty = await startDaemon({ dir: prettyDir, nodeId: 'node-p', extraArgs: ['--log-pretty'] })
  try {
    const created = await pluginCall(pretty.pluginSocket, '/VolumeDriver.Create', { Name: 'pv', Opts: { size: '32M' } })
    t.is(created.body.Err, '', created.raw)
  } finally {
    await pretty.stop()
    removeDir(prettyDir)
  }
  const lines = pretty.logs().split('\n').filter((l) => l.trim() !== '')
  t.true(lines.length > 0)
  for (const line of lines) t.false(line.startsWith('{'), `a JSON line in pretty output: ${line}`)
  t.regex(pretty.logs(), /INFO.*: pxd ready/)
  t.regex(pretty.logs(), /INFO.*: volume created/)
  t.regex(pretty.logs(), /volume: "pv"/)
  t.regex(pretty.logs(), /INFO.*: pxd stopped/, 'the last line before exit made it out')
  t.notRegex(pretty.logs(), /\u001b\[/, 'no colours when stdout is not a terminal')
})
