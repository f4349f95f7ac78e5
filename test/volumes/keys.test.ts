/**
 * Wrapping of secure volumes' data keys (src/volumes/keys.ts): each KEK source unwraps what
 * it wrapped, a wrong one is BAD_KEY, a missing one KEY_REQUIRED, the passphrase is in no
 * field of the wrapped form, and secret names cannot leave --secrets-dir.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import test from 'ava'
import { newVolumeKey, takeKeyOptions, unwrapVolumeKey } from '../../src/volumes/keys'

const cluster = { clusterSecret: Buffer.from('cluster-secret-of-at-least-16-bytes') }

test('cluster secret: unwraps with the same secret, BAD_KEY with another, KEY_REQUIRED with none', (t) => {
  const { key, wrapped } = newVolumeKey('vol1', { useClusterSecret: true }, cluster)
  t.is(key.length, 64)
  t.is(wrapped.kek, 'cluster_secret')
  t.deepEqual(unwrapVolumeKey('vol1', wrapped, {}, cluster), key)
  t.throws(() => unwrapVolumeKey('vol1', wrapped, {}, { clusterSecret: Buffer.from('another-cluster-secret-16+') }), { code: 'BAD_KEY' } as never)
  t.throws(() => unwrapVolumeKey('vol1', wrapped, {}, {}), { code: 'KEY_REQUIRED' } as never)
  // Bound to the volume it was made for: a snapshot or clone (another id) opens it too,
  // and a wrapped key whose binding is changed does not open.
  t.is(wrapped.boundTo, 'vol1')
  t.deepEqual(unwrapVolumeKey('clone-of-vol1', wrapped, {}, cluster), key)
  t.throws(() => unwrapVolumeKey('vol1', { ...wrapped, boundTo: 'vol2' }, {}, cluster), { code: 'BAD_KEY' } as never)
})

test('passphrase: salted, never stored, required and checked at unwrap', (t) => {
  const { key, wrapped } = newVolumeKey('v', { passphrase: 'correct horse battery' }, {})
  t.is(wrapped.kek, 'passphrase')
  t.false(JSON.stringify(wrapped).includes('correct horse'))
  t.deepEqual(unwrapVolumeKey('v', wrapped, { passphrase: 'correct horse battery' }, {}), key)
  t.throws(() => unwrapVolumeKey('v', wrapped, { passphrase: 'wrong horse battery' }, {}), { code: 'BAD_KEY', message: /wrong passphrase/ } as never)
  t.throws(() => unwrapVolumeKey('v', wrapped, {}, {}), { code: 'KEY_REQUIRED', message: /passphrase=/ } as never)
  const again = newVolumeKey('v', { passphrase: 'correct horse battery' }, {})
  t.not(again.wrapped.salt, wrapped.salt)
  t.notDeepEqual(again.key, key)
})

test('secret_key: a file under the secrets dir; names cannot traverse', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pxd-secrets-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, 'k1'), 'a-secret-file-of-enough-bytes')
  const { key, wrapped } = newVolumeKey('v', { secretKey: 'k1' }, { secretsDir: dir })
  t.deepEqual(unwrapVolumeKey('v', wrapped, {}, { secretsDir: dir }), key)
  fs.writeFileSync(path.join(dir, 'k1'), 'another-secret-file-contents')
  t.throws(() => unwrapVolumeKey('v', wrapped, {}, { secretsDir: dir }), { code: 'BAD_KEY' } as never)
  t.throws(() => newVolumeKey('v', { secretKey: 'missing' }, { secretsDir: dir }), { code: 'KEY_REQUIRED' } as never)
  for (const bad of ['../etc/passwd', '..', 'a/b', '']) {
    t.throws(() => takeKeyOptions({ secret_key: bad }), { code: 'INVALID_ARGUMENT' } as never, bad)
  }
})

test('takeKeyOptions removes the key options and refuses two sources at once', (t) => {
  const options: Record<string, string> = { size: '1G', passphrase: 'long enough pass', secure: 'true' }
  t.deepEqual(takeKeyOptions(options), { passphrase: 'long enough pass' })
  t.deepEqual(options, { size: '1G', secure: 'true' })
  t.throws(() => takeKeyOptions({ passphrase: 'long enough pass', use_cluster_secret: 'true' }), { code: 'INVALID_ARGUMENT' } as never)
  t.throws(() => takeKeyOptions({ passphrase: 'short' }), { code: 'INVALID_ARGUMENT' } as never)
})
