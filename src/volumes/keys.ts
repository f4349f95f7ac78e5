/**
 * Per-volume data keys for secure volumes. A secure volume has one random 64-byte
 * AES-256-XTS key; the kvdb holds it only wrapped with AES-256-GCM under a key-encryption
 * key (KEK) from one of:
 *   - `passphrase=...`: scrypt(passphrase, random salt); the salt is stored beside the
 *     wrapped key, the passphrase never (it must be given again at every mount);
 *   - `secret_key=NAME`: the file NAME under the daemon's --secrets-dir, through HKDF;
 *   - `use_cluster_secret=true` (the default for `secure=true`): HKDF over the cluster
 *     secret the daemons share, so any node of the cluster can mount it.
 * The GCM tag authenticates the unwrap: a wrong passphrase or secret is BAD_KEY, never a
 * wrong key silently used. The id of the volume the key was made for is the GCM
 * additional data (and stored as `boundTo`): snapshots and clones share their source's
 * key and wrapped form (their blocks are its ciphertext, sector for sector).
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, scryptSync } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pxdError } from '../errors'

export const DATA_KEY_BYTES = 64
export type KekSource = 'passphrase' | 'secret_key' | 'cluster_secret'

/** What the kvdb holds of a secure volume's key (base64 fields). */
export interface WrappedKey {
  kek: KekSource
  /** The volume the key was made for (the GCM additional data); snapshots and clones keep it. */
  boundTo?: string
  /** secret_key: the secret file's name under --secrets-dir. */
  secretName?: string
  /** passphrase: the scrypt salt. */
  salt?: string
  iv: string
  tag: string
  wrapped: string
}

/** The key options a create or mount may carry; taken out of the options before they are recorded. */
export interface KeyOptions {
  passphrase?: string
  secretKey?: string
  useClusterSecret?: boolean
}

/** Where KEKs come from on this node. */
export interface KeySources {
  clusterSecret?: Uint8Array
  secretsDir?: string
}

export const KEY_OPTION_NAMES = ['passphrase', 'secret_key', 'use_cluster_secret'] as const

/** Take the key options out of `options` (in place) and return them. */
export function takeKeyOptions(options: Record<string, string>): KeyOptions {
  const out: KeyOptions = {}
  if (options.passphrase !== undefined) {
    if (options.passphrase.length < 8) throw pxdError('INVALID_ARGUMENT', 'passphrase must be at least 8 characters')
    out.passphrase = options.passphrase
  }
  if (options.secret_key !== undefined) out.secretKey = validateSecretName(options.secret_key)
  if (options.use_cluster_secret !== undefined) {
    const v = options.use_cluster_secret
    if (v !== 'true' && v !== 'false') throw pxdError('INVALID_ARGUMENT', `invalid value "${v}" for option "use_cluster_secret": expected true or false`)
    if (v === 'true') out.useClusterSecret = true
  }
  for (const k of KEY_OPTION_NAMES) delete options[k]
  const given = [out.passphrase !== undefined, out.secretKey !== undefined, out.useClusterSecret === true].filter(Boolean).length
  if (given > 1) throw pxdError('INVALID_ARGUMENT', 'give only one of passphrase, secret_key and use_cluster_secret')
  return out
}

/** A secret name: one path component of letters, digits, "_", "." and "-", not "." or "..". */
export function validateSecretName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,128}$/.test(name) || name === '.' || name === '..') {
    throw pxdError('INVALID_ARGUMENT', `invalid secret_key "${name}": a file name under --secrets-dir (letters, digits, "_", "." and "-")`)
  }
  return name
}

function kekOf(w: Pick<WrappedKey, 'kek' | 'secretName' | 'salt'>, opts: KeyOptions, sources: KeySources, volume: string): Buffer {
  switch (w.kek) {
    case 'passphrase':
      if (opts.passphrase === undefined) throw pxdError('KEY_REQUIRED', `volume ${volume} is encrypted with a passphrase: give passphrase=... to mount it`)
      return scryptSync(opts.passphrase, Buffer.from(w.salt!, 'base64'), 32, { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 })
    case 'secret_key': {
      if (!sources.secretsDir) throw pxdError('KEY_REQUIRED', `volume ${volume} needs secret ${w.secretName}, and this daemon has no --secrets-dir`)
      const file = join(sources.secretsDir, validateSecretName(w.secretName!))
      let secret: Buffer
      try {
        secret = readFileSync(file)
      } catch (err) {
        throw pxdError('KEY_REQUIRED', `volume ${volume} needs the secret file ${file}: ${(err as Error).message}`)
      }
      if (secret.length < 16) throw pxdError('BAD_KEY', `the secret file ${file} holds fewer than 16 bytes`)
      return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'pxd volume kek secret_key', 32))
    }
    case 'cluster_secret':
      if (!sources.clusterSecret) throw pxdError('KEY_REQUIRED', `volume ${volume} is encrypted with the cluster secret, and this daemon has none (--cluster-secret-file)`)
      return Buffer.from(hkdfSync('sha256', sources.clusterSecret, Buffer.alloc(0), 'pxd volume kek cluster', 32))
  }
}

/** A new random data key for volume `volumeId`, and its wrapped form for the kvdb. */
export function newVolumeKey(volumeId: string, opts: KeyOptions, sources: KeySources): { key: Buffer; wrapped: WrappedKey } {
  const head: Pick<WrappedKey, 'kek' | 'secretName' | 'salt'> =
    opts.passphrase !== undefined ? { kek: 'passphrase', salt: randomBytes(16).toString('base64') }
      : opts.secretKey !== undefined ? { kek: 'secret_key', secretName: opts.secretKey }
        : { kek: 'cluster_secret' }
  const kek = kekOf(head, opts, sources, volumeId)
  let key = randomBytes(DATA_KEY_BYTES)
  // XTS refuses a key whose halves are equal.
  while (key.subarray(0, 32).equals(key.subarray(32))) key = randomBytes(DATA_KEY_BYTES)
  const iv = randomBytes(12)
  const c = createCipheriv('aes-256-gcm', kek, iv)
  c.setAAD(Buffer.from(volumeId))
  const wrapped = Buffer.concat([c.update(key), c.final()])
  return { key, wrapped: { ...head, boundTo: volumeId, iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64'), wrapped: wrapped.toString('base64') } }
}

/** The data key of `volumeId`; KEY_REQUIRED when its KEK cannot be had here, BAD_KEY when it does not open it. */
export function unwrapVolumeKey(volumeId: string, w: WrappedKey, opts: KeyOptions, sources: KeySources, name = volumeId): Buffer {
  const kek = kekOf(w, opts, sources, name)
  try {
    const d = createDecipheriv('aes-256-gcm', kek, Buffer.from(w.iv, 'base64'))
    d.setAAD(Buffer.from(w.boundTo ?? volumeId))
    d.setAuthTag(Buffer.from(w.tag, 'base64'))
    const key = Buffer.concat([d.update(Buffer.from(w.wrapped, 'base64')), d.final()])
    if (key.length !== DATA_KEY_BYTES) throw new Error('bad length')
    return key
  } catch {
    throw pxdError('BAD_KEY', `the key given for volume ${name} does not open its data key (wrong ${w.kek === 'passphrase' ? 'passphrase' : w.kek === 'secret_key' ? 'secret' : 'cluster secret'})`)
  }
}
