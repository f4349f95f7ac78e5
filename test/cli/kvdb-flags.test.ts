/**
 * The --kvdb-* flags and their PXD_KVDB_* variables reach the daemon, are in --help,
 * and a bad combination stops pxd before it creates anything.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PXD_BIN } from '../helpers/paths'

function pxd(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [PXD_BIN, ...args], { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr })
    })
  })
}

function cluster(t: import('ava').ExecutionContext) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-kvdb-flags-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const secret = path.join(dir, 'secret')
  writeFileSync(secret, 'x'.repeat(32), { mode: 0o600 })
  const dataDir = path.join(dir, 'data')
  return {
    dir, dataDir,
    args: ['--data-dir', dataDir, '--run-dir', path.join(dir, 'run'), '--kvdb', 'etcd://127.0.0.1:1', '--peer-listen', '127.0.0.1:1', '--cluster-secret-file', secret],
  }
}

test('--help lists every --kvdb-* flag with its variable', async (t) => {
  const r = await pxd(['--help'])
  t.is(r.code, 0)
  for (const [flag, env] of [['--kvdb-ca', 'PXD_KVDB_CA'], ['--kvdb-cert', 'PXD_KVDB_CERT'], ['--kvdb-key', 'PXD_KVDB_KEY'], ['--kvdb-username', 'PXD_KVDB_USERNAME'], ['--kvdb-password-file', 'PXD_KVDB_PASSWORD_FILE']]) {
    t.regex(r.stdout, new RegExp(`${flag} [A-Z]+ .* ${env}\\b`), flag)
  }
  t.regex(r.stdout, /https:\/\/H:P/)
})

test('a certificate without a key, by flag or by variable, stops pxd before it creates its data dir', async (t) => {
  const c = cluster(t)
  const byFlag = await pxd([...c.args, '--kvdb-cert', '/nonexistent.crt'])
  t.is(byFlag.code, 1)
  t.regex(byFlag.stderr, /pxd: --kvdb-cert and --kvdb-key go together/)
  const byEnv = await pxd(c.args, { PXD_KVDB_KEY: '/nonexistent.key' })
  t.is(byEnv.code, 1)
  t.regex(byEnv.stderr, /pxd: --kvdb-cert and --kvdb-key go together/)
  t.false(existsSync(c.dataDir))
})

test('PXD_KVDB_USERNAME without a password file, and an unreadable password file, are refused', async (t) => {
  const c = cluster(t)
  const noFile = await pxd(c.args, { PXD_KVDB_USERNAME: 'pxd' })
  t.is(noFile.code, 1)
  t.regex(noFile.stderr, /--kvdb-username and --kvdb-password-file go together/)
  const missing = await pxd([...c.args, '--kvdb-username', 'pxd'], { PXD_KVDB_PASSWORD_FILE: path.join(c.dir, 'none') })
  t.is(missing.code, 1)
  t.regex(missing.stderr, /--kvdb-password-file .*none: cannot read it/)
  const open = path.join(c.dir, 'pw')
  writeFileSync(open, 'pw\n', { mode: 0o644 })
  const worldReadable = await pxd([...c.args, '--kvdb-username', 'pxd', '--kvdb-password-file', open])
  t.is(worldReadable.code, 1)
  t.regex(worldReadable.stderr, /every user can read it/)
  t.false(existsSync(c.dataDir))
})

test('--kvdb-* without --kvdb is refused', async (t) => {
  const c = cluster(t)
  const r = await pxd(['--data-dir', c.dataDir, '--run-dir', path.join(c.dir, 'run'), '--kvdb-ca', '/x.crt'])
  t.is(r.code, 1)
  t.regex(r.stderr, /they need --kvdb/)
  t.false(existsSync(c.dataDir))
})
