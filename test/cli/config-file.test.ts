import test from 'ava'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { loadConfig, parseConfig } from '../../src/cli/config-file'

const KEYS = { 'data-dir': 'PXD_DATA_DIR', 'api-listen': 'PXD_API_LISTEN', kvdb: 'PXD_KVDB' }

test('flag names and variable names, comments, blanks and quotes', (t) => {
  const got = parseConfig('# pxd\n\ndata-dir = /srv/pxd\n  PXD_API_LISTEN=127.0.0.1:9100  \nkvdb = "etcd://a:2379,b:2379"\n', KEYS, 'f')
  t.deepEqual([...got], [['data-dir', '/srv/pxd'], ['api-listen', '127.0.0.1:9100'], ['kvdb', 'etcd://a:2379,b:2379']])
})

test('an unknown key, a repeated key, a line without "=" and an open quote are errors naming the line', (t) => {
  t.throws(() => parseConfig('colour = red', KEYS, 'f'), { code: 'INVALID_ARGUMENT', message: /f line 1: unknown key "colour"/ })
  t.throws(() => parseConfig('data-dir = /a\nPXD_DATA_DIR = /b', KEYS, 'f'), { message: /f line 2: "data-dir" is set twice/ })
  t.throws(() => parseConfig('\ndata-dir /a', KEYS, 'f'), { message: /f line 2: expected "key = value"/ })
  t.throws(() => parseConfig('kvdb = "etcd://a', KEYS, 'f'), { message: /unterminated quote/ })
})

test('a named file must exist; the default one may be absent', (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-conf-'))
  try {
    t.throws(() => loadConfig(path.join(dir, 'missing.conf'), KEYS), { code: 'INVALID_ARGUMENT', message: /cannot read the config file/ })
    const file = path.join(dir, 'pxd.conf')
    writeFileSync(file, 'data-dir = /x\n')
    t.is(loadConfig(file, KEYS).get('data-dir'), '/x')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
