import test from 'ava'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isPxdError } from '../../src/errors'
import { etcdClientOptions, loadEtcdSecurity, tlsHint } from '../../src/kvdb/etcd-connection'
import { checkKvdbSettings, parseEtcdSpec } from '../../src/kvdb/open'

const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'

function files(t: import('ava').ExecutionContext) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-etcd-conn-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = (name: string, text: string, mode = 0o600) => {
    const p = path.join(dir, name)
    writeFileSync(p, text)
    chmodSync(p, mode)
    return p
  }
  return { dir, file }
}

const invalid = (t: import('ava').ExecutionContext, fn: () => unknown, pattern: RegExp) => {
  const err = t.throws(fn)
  t.true(isPxdError(err, 'INVALID_ARGUMENT'), String(err))
  t.regex(err!.message, pattern)
}

test('no settings: plain connection, no credentials, no auth', (t) => {
  const s = loadEtcdSecurity({})
  t.deepEqual(s, { tls: false })
  const o = etcdClientOptions(['http://a:1'], s)
  t.is(o.credentials, undefined)
  t.is(o.auth, undefined)
})

test('CA, certificate and key become etcd3 credentials and TLS', (t) => {
  const { file } = files(t)
  const s = loadEtcdSecurity({ ca: file('ca.crt', PEM), cert: file('c.crt', PEM), key: file('c.key', PEM.replace(/CERTIFICATE/g, 'PRIVATE KEY')) })
  t.true(s.tls)
  t.is(s.credentials!.rootCertificate.toString(), PEM)
  t.is(s.credentials!.certChain!.toString(), PEM)
  t.regex(s.credentials!.privateKey!.toString(), /PRIVATE KEY/)
  t.is(etcdClientOptions(['https://a:1'], s).credentials, s.credentials)
})

test('a CA alone is TLS without a client certificate', (t) => {
  const { file } = files(t)
  const s = loadEtcdSecurity({ ca: file('ca.crt', PEM) })
  t.true(s.tls)
  t.is(s.credentials!.certChain, undefined)
})

test('a certificate without its key, or a key without its certificate, is refused', (t) => {
  const { file } = files(t)
  invalid(t, () => loadEtcdSecurity({ cert: file('c.crt', PEM) }), /--kvdb-cert and --kvdb-key go together/)
  invalid(t, () => loadEtcdSecurity({ key: file('c.key', PEM) }), /--kvdb-cert and --kvdb-key go together/)
})

test('missing or non-PEM files name the flag and the file', (t) => {
  const { dir, file } = files(t)
  invalid(t, () => loadEtcdSecurity({ ca: path.join(dir, 'nope.crt') }), /--kvdb-ca .*nope\.crt: cannot read it/)
  invalid(t, () => loadEtcdSecurity({ ca: file('ca.crt', 'garbage') }), /--kvdb-ca .*ca\.crt: not a PEM file/)
})

test('user and password file: the password is the first line, without its newline', (t) => {
  const { file } = files(t)
  const s = loadEtcdSecurity({ username: 'pxd', passwordFile: file('pw', 's3cret\n') })
  t.deepEqual(s.auth, { username: 'pxd', password: 's3cret' })
  t.false(s.tls)
  const o = etcdClientOptions(['http://a:1'], s)
  t.is(o.auth!.username, 'pxd')
  t.is(o.auth!.password, 's3cret')
  // The token exchange has a deadline, so a silent etcd cannot hang the start.
  const call = (o.auth!.callOptions as () => { deadline: number })()
  t.true(call.deadline > Date.now())
})

test('user without password file, password file without user, bad files are refused', (t) => {
  const { dir, file } = files(t)
  invalid(t, () => loadEtcdSecurity({ username: 'pxd' }), /--kvdb-username and --kvdb-password-file go together/)
  invalid(t, () => loadEtcdSecurity({ passwordFile: file('pw', 'x') }), /--kvdb-username and --kvdb-password-file go together/)
  invalid(t, () => loadEtcdSecurity({ username: 'pxd', passwordFile: path.join(dir, 'none') }), /--kvdb-password-file .*none: cannot read it/)
  invalid(t, () => loadEtcdSecurity({ username: 'pxd', passwordFile: file('open', 'x', 0o644) }), /every user can read it \(mode 644\)/)
  invalid(t, () => loadEtcdSecurity({ username: 'pxd', passwordFile: file('empty', '\n') }), /is empty/)
  invalid(t, () => loadEtcdSecurity({ username: 'a b', passwordFile: file('pw2', 'x') }), /--kvdb-username/)
})

test('https:// specs stay https; TLS or auth settings without --kvdb are refused', (t) => {
  t.deepEqual(parseEtcdSpec('https://a:2379,b:2380'), ['https://a:2379', 'https://b:2380'])
  t.deepEqual(parseEtcdSpec('HTTPS://a:1'), ['https://a:1'])
  invalid(t, () => checkKvdbSettings(undefined, { ca: '/x' }), /need --kvdb/)
  invalid(t, () => checkKvdbSettings('', { username: 'pxd' }), /need --kvdb/)
  t.notThrows(() => checkKvdbSettings(undefined, {}))
})

test('TLS failures get a hint at which side to check', (t) => {
  t.regex(tlsHint('SSL routines:ssl3_read_bytes:sslv3 alert bad certificate'), /--kvdb-cert and --kvdb-key/)
  t.regex(tlsHint('Error: unable to verify the first certificate'), /--kvdb-ca/)
  t.regex(tlsHint('SSL routines::wrong version number'), /one side speaks TLS/)
  t.is(tlsHint('ECONNREFUSED'), '')
})
