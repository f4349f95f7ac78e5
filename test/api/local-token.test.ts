/** The daemon's own token file and how a client on the same host may find it. */
import test from 'ava'
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { discoverLocalToken, listenerUids } from '../../src/api/local-token'
import { ensureTokenFile } from '../../src/api/token-file'

const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-token-'))
test.after.always(() => rmSync(dir, { recursive: true, force: true }))

async function listening(): Promise<[Server, number]> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return [server, (server.address() as { port: number }).port]
}

test('the token file is made once, 0600, and kept across starts', async (t) => {
  const file = path.join(dir, 'api-token')
  t.true(await ensureTokenFile(file))
  const first = readFileSync(file, 'utf8')
  t.regex(first, /^[0-9a-f]{64}\n$/)
  t.is(statSync(file).mode & 0o777, 0o600)
  t.false(await ensureTokenFile(file))
  t.is(readFileSync(file, 'utf8'), first)
})

test('listenerUids names the owner of the socket listening on a port', async (t) => {
  const [server, port] = await listening()
  try {
    t.deepEqual(await listenerUids(port), [process.getuid!()])
  } finally {
    server.close()
  }
  t.deepEqual(await listenerUids(port), [], 'nothing listens once it is closed')
})

test('discovery reads only a root-only file, only from a loopback root listener', async (t) => {
  if (process.getuid!() !== 0) t.fail('this test needs root: discovery trusts only root-owned listeners and files')
  const file = path.join(dir, 'discovered')
  writeFileSync(file, 'the-token-the-token\n', { mode: 0o600 })
  const [server, port] = await listening()
  try {
    const names = async () => ({ path: file })
    t.deepEqual(await discoverLocalToken(`http://127.0.0.1:${port}`, names), { token: 'the-token-the-token' })
    t.regex((await discoverLocalToken(`http://10.1.2.3:${port}`, names) as { reason: string }).reason, /not on loopback/)
    t.regex((await discoverLocalToken(`http://127.0.0.1:${port}`, async () => ({ path: 'relative' })) as { reason: string }).reason, /names no token file/)
    chmodSync(file, 0o640)
    t.regex((await discoverLocalToken(`http://127.0.0.1:${port}`, names) as { reason: string }).reason, /not a root-only regular file/)
  } finally {
    server.close()
  }
  t.regex((await discoverLocalToken(`http://127.0.0.1:${port}`, async () => ({ path: file })) as { reason: string }).reason, /nothing listens/)
})
