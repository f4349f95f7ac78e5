/**
 * Who may do what: the API needs a token for changing calls once it listens beyond
 * loopback; the plugin socket is root's (and Docker's group's) alone; replica files and
 * the data dir are not world-readable.
 */
import test from 'ava'
import { promises as fs, writeFileSync } from 'node:fs'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { freePort, makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'
import { PXCTL_BIN } from '../helpers/paths'
import { runCommand } from '../helpers/run'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon | undefined

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

const pxctl = (args: string[]) => runCommand(process.execPath, [PXCTL_BIN, ...args], 60_000)

test('an API beyond loopback without a token is refused at start', async (t) => {
  const err = await t.throwsAsync(startDaemon({ dir: path.join(dir, 'open'), extraArgs: ['--api-listen', `0.0.0.0:${await freePort()}`] }))
  t.regex(err!.message, /beyond loopback: give it a token with --api-token-file/)
})

test('with a token, changing calls need it; reading ones do not', async (t) => {
  const tokenFile = path.join(dir, 'token')
  writeFileSync(tokenFile, 'a-long-enough-api-token-1234\n', { mode: 0o600 })
  const port = await freePort()
  daemon = await startDaemon({ dir: path.join(dir, 'guarded'), apiPort: port, extraArgs: ['--api-listen', `0.0.0.0:${port}`, '--api-token-file', tokenFile] })
  const api = `http://127.0.0.1:${port}`
  const denied = await pxctl(['--api', api, 'volume', 'create', 'v1', '--size', '32M'])
  t.is(denied.code, 1)
  t.regex(denied.stderr, /needs the API token/)
  const raw = await fetch(`${api}/v1/volumes`, { method: 'POST', body: JSON.stringify({ name: 'v2' }), headers: { Authorization: 'Bearer wrong-token-wrong-token' } })
  t.is(raw.status, 401)
  t.is((await pxctl(['--api', api, 'volume', 'list', '--json'])).stdout.trim(), '[]', 'nothing was created; reading needs no token')
  const ok = await pxctl(['--api', api, '--api-token-file', tokenFile, 'volume', 'create', 'v1', '--size', '32M'])
  t.is(ok.code, 0, ok.stderr)
  const del = await pxctl(['--api', api, '--api-token-file', tokenFile, 'volume', 'delete', 'v1'])
  t.is(del.code, 0, del.stderr)
})

test('plugin socket 0660, data dir 0700, replica files not world-readable', async (t) => {
  if (!daemon) daemon = await startDaemon({ dir: path.join(dir, 'perm') })
  t.is((await fs.stat(daemon.pluginSocket)).mode & 0o777, 0o660)
  t.is((await fs.stat(daemon.dataDir)).mode & 0o777, 0o700)
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'perm', Opts: { size: '32M' } })).body.Err, '')
  const replicas = path.join(daemon.dataDir, 'replicas')
  for (const id of await fs.readdir(replicas)) {
    for (const f of ['data', 'crc', 'intent', 'super.json']) {
      t.is((await fs.stat(path.join(replicas, id, f))).mode & 0o077, 0, `${f} is the owner's alone`)
    }
  }
})
