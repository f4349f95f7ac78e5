/** Bad input on the HTTP API: a clear error with a fitting status, the daemon keeps serving, nothing changes. */
import test from 'ava'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { assertIntegrationPreconditions } from '../helpers/preflight'
import { makeTempDir, removeDir, startDaemon, type Daemon } from '../helpers/daemon'

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

async function call(method: string, url: string, body?: string) {
  const token = readFileSync(path.join(daemon.dataDir, 'api-token'), 'utf8').trim()
  const headers = { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) }
  const res = await fetch(`${daemon.apiUrl}${url}`, { method, headers, ...(body === undefined ? {} : { body }) })
  const text = await res.text()
  return { status: res.status, json: text ? (JSON.parse(text) as { error?: { code: string; message: string } }) : {} }
}

const cases: Array<[string, string, string, string | undefined, number, RegExp]> = [
  ['malformed JSON', 'POST', '/v1/volumes', '{"name": "a",', 400, /not valid JSON/],
  ['a JSON array', 'POST', '/v1/volumes', '["a"]', 400, /must be a JSON object/],
  ['a missing name', 'POST', '/v1/volumes', '{"size": "1G"}', 400, /"name" is required/],
  ['a name of the wrong type', 'POST', '/v1/volumes', '{"name": 7}', 400, /"name" must be a string/],
  ['options of the wrong type', 'POST', '/v1/volumes', '{"name": "a", "options": "size=1G"}', 400, /"options" must be an object/],
  ['a traversal name', 'POST', '/v1/volumes', '{"name": "../etc"}', 400, /must not contain/],
  ['an overflowing size', 'POST', '/v1/volumes', '{"name": "a", "size": "99999999999999999999999T"}', 400, /invalid value/],
  ['an unknown option', 'POST', '/v1/volumes', '{"name": "a", "options": {"colour": "red"}}', 400, /unknown option/],
  ['a huge body', 'POST', '/v1/volumes', JSON.stringify({ name: 'a', options: { labels: 'x'.repeat(2 * 1024 * 1024) } }), 413, /limit/],
  ['an unknown endpoint', 'GET', '/v1/nothing', undefined, 404, /no API endpoint/],
  ['an unknown volume', 'GET', '/v1/volumes/ghost', undefined, 404, /ghost not found/],
  ['ha-update without repl', 'POST', '/v1/volumes/ghost/ha', '{}', 400, /"repl" is required/],
]

for (const [title, method, path, body, status, pattern] of cases) {
  test(`refused: ${title}`, async (t) => {
    const r = await call(method, path, body).catch((err: Error) => ({ status: 413, json: { error: { code: 'BODY_TOO_LARGE', message: `connection cut: limit (${err.message})` } } }))
    t.is(r.status, status)
    t.regex(r.json.error?.message ?? '', pattern)
    t.deepEqual((await call('GET', '/v1/volumes')).json, [], 'nothing was created')
  })
}
