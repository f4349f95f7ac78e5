/**
 * Who may do what: the API needs a token for every changing call, on loopback too (the
 * daemon's own, root-only, unless the operator gives one); the plugin socket is root's (and
 * Docker's group's) alone; replica files and the data dir are not world-readable. An
 * unprivileged local user is played by setpriv to uid 65534.
 */
import test from 'ava'
import { existsSync, promises as fs, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
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

if (!existsSync('/usr/bin/setpriv')) throw new Error('these tests need setpriv (util-linux) to act as an unprivileged user')
/** node as the unprivileged user nobody, with no supplementary groups. */
const asNobody = (args: string[], timeoutMs = 60_000) =>
  runCommand('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...args], timeoutMs)

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1').on('connect', () => { s.destroy(); resolve(true) }).on('error', () => resolve(false))
    })
    if (up) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`nothing listened on port ${port} within 10 s`)
}

test('an API beyond loopback without a token is refused at start', async (t) => {
  const err = await t.throwsAsync(startDaemon({ dir: path.join(dir, 'open'), extraArgs: ['--api-listen', `0.0.0.0:${await freePort()}`] }))
  t.regex(err!.message, /beyond loopback: give it a token with --api-token-file/)
})

test('an operator token file: changing calls need it, reads do not, root pxctl finds it', async (t) => {
  const tokenFile = path.join(dir, 'token')
  writeFileSync(tokenFile, 'a-long-enough-api-token-1234\n', { mode: 0o600 })
  const port = await freePort()
  const guarded = await startDaemon({ dir: path.join(dir, 'guarded'), apiPort: port, extraArgs: ['--api-listen', `0.0.0.0:${port}`, '--api-token-file', tokenFile] })
  try {
    const api = `http://127.0.0.1:${port}`
    t.is((await fetch(`${api}/v1/volumes`, { method: 'POST', body: JSON.stringify({ name: 'v2' }) })).status, 401)
    const raw = await fetch(`${api}/v1/volumes`, { method: 'POST', body: JSON.stringify({ name: 'v2' }), headers: { Authorization: 'Bearer wrong-token-wrong-token' } })
    t.is(raw.status, 401)
    t.is((await pxctl(['--api', api, 'volume', 'list', '--json'])).stdout.trim(), '[]', 'nothing was created; reading needs no token')
    t.deepEqual(await (await fetch(`${api}/v1/token-file`)).json(), { path: tokenFile })
    const ok = await pxctl(['--api', api, 'volume', 'create', 'v1', '--size', '32M'])
    t.is(ok.code, 0, ok.stderr)
    const del = await pxctl(['--api', api, '--api-token-file', tokenFile, 'volume', 'delete', 'v1'])
    t.is(del.code, 0, del.stderr)
  } finally {
    await guarded.stop()
  }
})

test('without --api-token-file the daemon makes its own token, root-only, and keeps it', async (t) => {
  daemon ??= await startDaemon({ dir: path.join(dir, 'perm') })
  const file = path.join(daemon.dataDir, 'api-token')
  const st = await fs.stat(file)
  t.is(st.mode & 0o777, 0o600)
  t.is(st.uid, 0)
  const token = (await fs.readFile(file, 'utf8')).trim()
  t.regex(token, /^[0-9a-f]{64}$/)
  await daemon.stop()
  daemon = await startDaemon({ dir: path.join(dir, 'perm') })
  t.is((await fs.readFile(file, 'utf8')).trim(), token, 'a restart keeps the token')
  t.is((await fetch(`${daemon.apiUrl}/v1/volumes`, { method: 'POST', body: JSON.stringify({ name: 'anon' }) })).status, 401, 'loopback is no exemption')
  const created = await pxctl(['--api', daemon.apiUrl, 'volume', 'create', 'rootvol', '--size', '32M'])
  t.is(created.code, 0, 'root pxctl needs no flag: ' + created.stderr)
  t.is((await pxctl(['--api', daemon.apiUrl, 'volume', 'delete', 'rootvol'])).code, 0)
})

test('a local non-root user can read but not create, mount or delete, through the API or the plugin socket', async (t) => {
  daemon ??= await startDaemon({ dir: path.join(dir, 'perm') })
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'held', Opts: { size: '32M' } })).body.Err, '')
  const create = await asNobody([PXCTL_BIN, '--api', daemon.apiUrl, 'volume', 'create', 'intruder', '--size', '32M'])
  t.is(create.code, 1, create.out)
  t.regex(create.stderr, /needs the API token.*run pxctl as root or give --api-token-file/s)
  const del = await asNobody([PXCTL_BIN, '--api', daemon.apiUrl, 'volume', 'delete', 'held'])
  t.is(del.code, 1, del.out)
  const list = await asNobody([PXCTL_BIN, '--api', daemon.apiUrl, 'volume', 'list', '--json'])
  t.is(list.code, 0, list.out)
  t.deepEqual((JSON.parse(list.stdout) as Array<{ name: string }>).map((v) => v.name), ['held'], 'reads stay open; nothing was created or deleted')
  const raw = await asNobody(['-e', `fetch(process.argv[1] + '/v1/volumes/held/mount', { method: 'POST', body: '{}' }).then((r) => console.log(r.status))`, daemon.apiUrl])
  t.is(raw.stdout.trim(), '401', raw.out)
  // Let the user reach the socket's directory, so that only the socket's own mode stands in the way.
  for (const d of [dir, daemon.dir, path.dirname(daemon.pluginSocket)]) await fs.chmod(d, 0o711)
  const socket = await asNobody(['-e', `require('node:fs').statSync(process.argv[1]); require('node:net').connect(process.argv[1]).on('connect', () => { console.log('connected'); process.exit(0) }).on('error', (e) => { console.log(e.code); process.exit(0) })`, daemon.pluginSocket])
  t.is(socket.stdout.trim(), 'EACCES', 'the plugin socket is not for other users: ' + socket.out)
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Remove', { Name: 'held' })).body.Err, '')
})

test('root pxctl does not hand the token to a port another user listens on', async (t) => {
  daemon ??= await startDaemon({ dir: path.join(dir, 'perm') })
  const port = await freePort()
  const fake = `const seen = []; require('node:http').createServer((req, res) => {
    if (req.url === '/v1/token-file') { res.end(JSON.stringify({ path: process.argv[2] })); return }
    console.log('auth=' + (req.headers.authorization ?? 'none')); res.statusCode = 401
    res.end(JSON.stringify({ error: { code: 'UNAUTHORIZED', message: 'this call changes state and needs the API token' } }))
    setTimeout(() => process.exit(0), 100)
  }).listen(Number(process.argv[1]), '127.0.0.1', () => console.log('listening'))`
  const listener = asNobody(['-e', fake, String(port), path.join(daemon.dataDir, 'api-token')], 30_000)
  await waitForPort(port)
  const tried = await pxctl(['--api', `http://127.0.0.1:${port}`, 'volume', 'create', 'bait', '--size', '32M'])
  t.is(tried.code, 1)
  t.regex(tried.stderr, /not root's/)
  const out = (await listener).stdout
  t.regex(out, /auth=none/, out)
  t.notRegex(out, /Bearer/)
})

test('plugin socket 0660, data dir 0700, replica files not world-readable', async (t) => {
  daemon ??= await startDaemon({ dir: path.join(dir, 'perm') })
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
