/**
 * --fuse-request-timeout, PXD_FUSE_REQUEST_TIMEOUT and its config-file key: whole seconds
 * from 0 to 65535 and no more than the kernel's own limit; anything else stops pxd at start,
 * saying why, before it creates anything.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { boundBelowFlushLimit, DEFAULT_FUSE_REQUEST_TIMEOUT_SECONDS, kernelMaxRequestTimeout, parseFuseRequestTimeout } from '../../src/cli/fuse-request-timeout'
import { FLUSH_TIMEOUT_MS } from '../../src/replicas/replica-client'
import { PXD_BIN } from '../helpers/paths'

function pxd(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [PXD_BIN, ...args], { env: { ...process.env, PXD_CONFIG: '/dev/null', ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr })
    })
  })
}

function tempDir(t: import('ava').ExecutionContext): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-fuse-timeout-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

test('whole seconds from 0 (no bound) to 65535 are taken', (t) => {
  t.is(parseFuseRequestTimeout('0'), 0)
  t.is(parseFuseRequestTimeout('5'), 5)
  t.is(parseFuseRequestTimeout(' 60 '), 60)
  t.is(parseFuseRequestTimeout('65535'), 65535)
  t.is(DEFAULT_FUSE_REQUEST_TIMEOUT_SECONDS, 180)
})

test('a negative, fractional, non-numeric or empty value, or one past the u16 of fuse_init_out, is refused saying what is taken', (t) => {
  for (const bad of ['-1', '1.5', '60s', 'abc', '', '1e3', '0x10', '65536', '99999999999999999999']) {
    t.throws(() => parseFuseRequestTimeout(bad), { code: 'INVALID_ARGUMENT', message: /^invalid --fuse-request-timeout ".*": whole seconds from 0 \(no bound\) to 65535$/ }, bad)
  }
})

test("a value above the kernel's limit is refused rather than lowered by the kernel without a word; 0 there means no limit", (t) => {
  t.throws(() => parseFuseRequestTimeout('120', 90), { code: 'INVALID_ARGUMENT', message: /--fuse-request-timeout 120 is above this kernel's limit of 90 s \(\/proc\/sys\/fs\/fuse\/max_request_timeout\)/ })
  t.is(parseFuseRequestTimeout('90', 90), 90)
  t.is(parseFuseRequestTimeout('0', 90), 0)
  t.is(parseFuseRequestTimeout('65535', 0), 65535)
})

test("the kernel's limit is read from its sysctl; a missing file, 0 or garbage is no limit", (t) => {
  const dir = tempDir(t)
  const file = path.join(dir, 'max_request_timeout')
  t.is(kernelMaxRequestTimeout(path.join(dir, 'none')), 0)
  writeFileSync(file, '0\n')
  t.is(kernelMaxRequestTimeout(file), 0)
  writeFileSync(file, '300\n')
  t.is(kernelMaxRequestTimeout(file), 300)
  writeFileSync(file, 'x\n')
  t.is(kernelMaxRequestTimeout(file), 0)
})

test('a bound not above the longest flush wait is warned of at start; none, or the default, is not', (t) => {
  t.regex(boundBelowFlushLimit(60) ?? '', /flush to a slow replica .* every volume of this node fails/)
  t.truthy(boundBelowFlushLimit(FLUSH_TIMEOUT_MS / 1000))
  t.is(boundBelowFlushLimit(FLUSH_TIMEOUT_MS / 1000 + 1), undefined)
  t.is(boundBelowFlushLimit(0), undefined, 'no bound: nothing to abort')
  t.is(boundBelowFlushLimit(DEFAULT_FUSE_REQUEST_TIMEOUT_SECONDS), undefined, 'the default sits above it')
})

test('--help lists the flag with its variable and default', async (t) => {
  const r = await pxd(['--help'])
  t.is(r.code, 0)
  t.regex(r.stdout, /--fuse-request-timeout SEC .* PXD_FUSE_REQUEST_TIMEOUT \(default 180; 0: none\)/)
})

test('a bad value by flag, by variable or in the config file stops pxd at start, naming it, before it makes its data dir', async (t) => {
  const dir = tempDir(t)
  const dataDir = path.join(dir, 'data')
  const args = ['--data-dir', dataDir, '--run-dir', path.join(dir, 'run'), '--plugin-socket', path.join(dir, 'pxd.sock'), '--api-listen', '127.0.0.1:1']
  const byFlag = await pxd([...args, '--fuse-request-timeout=-5'])
  t.is(byFlag.code, 2, byFlag.stderr)
  t.regex(byFlag.stderr, /pxd: invalid --fuse-request-timeout "-5": whole seconds from 0 \(no bound\) to 65535/)
  const byEnv = await pxd(args, { PXD_FUSE_REQUEST_TIMEOUT: '70000' })
  t.is(byEnv.code, 2, byEnv.stderr)
  t.regex(byEnv.stderr, /pxd: invalid --fuse-request-timeout "70000"/)
  const conf = path.join(dir, 'pxd.conf')
  writeFileSync(conf, 'fuse-request-timeout = soon\n')
  const byFile = await pxd(args, { PXD_CONFIG: conf })
  t.is(byFile.code, 2, byFile.stderr)
  t.regex(byFile.stderr, /pxd: invalid --fuse-request-timeout "soon"/)
  // The flag wins over the variable, which wins over the file: the error names the flag's value.
  writeFileSync(conf, 'PXD_FUSE_REQUEST_TIMEOUT = soon\n')
  const flagWins = await pxd([...args, '--fuse-request-timeout=-1'], { PXD_CONFIG: conf, PXD_FUSE_REQUEST_TIMEOUT: 'later' })
  t.regex(flagWins.stderr, /invalid --fuse-request-timeout "-1"/)
  t.false(existsSync(dataDir), 'nothing was made')
})
