/**
 * Bad input on the plugin socket: each gets a clear error, the daemon keeps serving,
 * and nothing is created or changed.
 */
import test from 'ava'
import http from 'node:http'
import net from 'node:net'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'
import { pluginCall } from '../helpers/plugin-client'

assertIntegrationPreconditions()

const dir = makeTempDir()
let daemon: Daemon

test.before(async () => {
  daemon = await startDaemon({ dir })
  const created = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'keep', Opts: { size: '32M' } })
  if (created.body.Err !== '') throw new Error(`setup create failed: ${created.raw}`)
})

test.after.always(async () => {
  await daemon?.stop()
  removeDir(dir)
})

const volumeNames = async () =>
  ((await pluginCall(daemon.pluginSocket, '/VolumeDriver.List', {})).body.Volumes as Array<{ Name: string }>).map((v) => v.Name)

const cases: Array<[string, string, unknown, RegExp, string?]> = [
  ['unknown option', '/VolumeDriver.Create', { Name: 'v1', Opts: { colour: 'red' } }, /unknown option "colour"; known options/],
  ['malformed value', '/VolumeDriver.Create', { Name: 'v1', Opts: { repl: 'two' } }, /invalid value "two" for option "repl"/],
  ['size zero', '/VolumeDriver.Create', { Name: 'v1', Opts: { size: '0' } }, /greater than zero/],
  ['size beyond free space', '/VolumeDriver.Create', { Name: 'v1', Opts: { size: '4000T' } }, /free/],
  ['repl beyond one node', '/VolumeDriver.Create', { Name: 'v1', Opts: { repl: '3' } }, /repl=3 needs 3 online nodes.*single-node/],
  ['name with a slash', '/VolumeDriver.Create', { Name: 'a/b' }, /must not contain "\/"/],
  ['name with ..', '/VolumeDriver.Create', { Name: '..' }, /must not contain "\.\."/],
  ['traversal inside an inline name', '/VolumeDriver.Create', { Name: 'name=../../etc,size=1G' }, /must not contain/],
  ['odd characters', '/VolumeDriver.Create', { Name: 'semi;colon' }, /only letters/],
  ['inline spec without name', '/VolumeDriver.Create', { Name: 'size=1G,repl=1' }, /no name= key/],
  ['wrong type for Name', '/VolumeDriver.Create', { Name: 42 }, /"Name" must be a string/],
  ['missing Name', '/VolumeDriver.Mount', {}, /"Name" is required/],
  ['wrong type for Opts', '/VolumeDriver.Create', { Name: 'v1', Opts: 'size=1G' }, /"Opts" must be an object/],
  ['nested option value', '/VolumeDriver.Create', { Name: 'v1', Opts: { size: { a: 1 } } }, /must be a string/],
  ['contradicting inline and Opts', '/VolumeDriver.Create', { Name: 'name=v1,size=1G', Opts: { size: '2G' } }, /given twice/],
  ['spec change of an existing volume', '/VolumeDriver.Create', { Name: 'keep', Opts: { size: '64M' } }, /already exists with a different spec/],
  ['mount of an unknown volume', '/VolumeDriver.Mount', { Name: 'nope', ID: 'x' }, /nope not found/],
  ['remove of an unknown volume', '/VolumeDriver.Remove', { Name: 'nope' }, /nope not found/],
  ['wrong type for ID', '/VolumeDriver.Mount', { Name: 'keep', ID: 7 }, /"ID" must be a string/],
  ['JSON array body', '/VolumeDriver.Create', undefined, /must be a JSON object/, '["Name"]'],
  ['malformed JSON', '/VolumeDriver.Create', undefined, /not valid JSON/, '{"Name": "v1",'],
  ['unknown endpoint', '/VolumeDriver.Explode', { Name: 'v1' }, /unknown endpoint/],
]

for (const [title, endpoint, body, pattern, raw] of cases) {
  test(`refused: ${title}`, async (t) => {
    const before = await volumeNames()
    const reply = await pluginCall(daemon.pluginSocket, endpoint, body, raw)
    t.not(reply.status, 200, reply.raw)
    t.is(reply.contentType, 'application/vnd.docker.plugins.v1+json')
    t.regex(String(reply.body.Err), pattern)
    t.deepEqual(await volumeNames(), before, 'nothing was created or removed')
  })
}

test('refused: a huge body is cut off at the cap and the daemon keeps serving', async (t) => {
  const huge = JSON.stringify({ Name: 'v1', Opts: { labels: 'x'.repeat(4 * 1024 * 1024) } })
  const reply = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', undefined, huge).catch((err: Error) => ({ status: 0, raw: err.message, body: {} as Record<string, unknown> }))
  // Either a 413 with Err, or the connection is cut after the cap; never a created volume.
  if (reply.status !== 0) {
    t.is(reply.status, 413)
    t.regex(String(reply.body.Err), /limit/)
  } else {
    t.pass()
  }
  t.deepEqual(await volumeNames(), ['keep'])
})

test('refused: GET instead of POST', async (t) => {
  const status = await new Promise<number>((resolve, reject) => {
    http.get({ socketPath: daemon.pluginSocket, path: '/VolumeDriver.List' }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    }).on('error', reject)
  })
  t.is(status, 405)
})

test('the daemon still serves after all of the above', async (t) => {
  t.deepEqual(await volumeNames(), ['keep'])
  const reply = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'after', Opts: { size: '32M' } })
  t.is(reply.body.Err, '')
  t.deepEqual((await volumeNames()).sort(), ['after', 'keep'])
})

test('the same volume created many times at once: one volume, one spec', async (t) => {
  const sizes = ['32M', '48M', '64M', '32M', '48M', '64M']
  const replies = await Promise.all(sizes.map((size) => pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'racy', Opts: { size } })))
  const ok = replies.filter((r) => r.body.Err === '')
  t.true(ok.length >= 1)
  for (const r of replies.filter((x) => x.body.Err !== '')) t.regex(String(r.body.Err), /already exists with a different spec/)
  const got = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Get', { Name: 'racy' })
  const size = (got.body.Volume as { Status: { size: number } }).Status.size
  const winner = `${size / 1024 / 1024}M`
  t.is(ok.length, sizes.filter((s) => s === winner).length, 'exactly the creates that asked for the winning spec succeeded')
  t.is((await volumeNames()).filter((n) => n === 'racy').length, 1)
  t.is((await pluginCall(daemon.pluginSocket, '/VolumeDriver.Remove', { Name: 'racy' })).body.Err, '')
})

test('refused: values that overflow', async (t) => {
  for (const opts of [{ repl: '99999999999999999999' }, { size: '9999999999999999999999999T' }, { snap_interval: '1e400' }, { block_size: '18446744073709551617' }]) {
    const reply = await pluginCall(daemon.pluginSocket, '/VolumeDriver.Create', { Name: 'big', Opts: opts })
    t.regex(String(reply.body.Err), /invalid value/, JSON.stringify(opts))
  }
  t.false((await volumeNames()).includes('big'))
})

test('refused: a client that stalls in its headers is cut off, and others are served meanwhile', async (t) => {
  const started = Date.now()
  const closed = new Promise<string>((resolve) => {
    const sock = net.connect(daemon.pluginSocket, () => sock.write('POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\n'))
    let got = ''
    sock.on('data', (d) => { got += d.toString() })
    sock.on('close', () => resolve(got))
    sock.on('error', () => undefined)
  })
  t.deepEqual((await volumeNames()).includes('keep'), true, 'served while the slow client waits')
  const reply = await closed
  const waited = Date.now() - started
  t.true(waited < 20_000, `cut off after ${waited} ms`)
  t.regex(reply, /^$|408/)
})
