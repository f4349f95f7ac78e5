/**
 * The metadata store on etcd, for a real cluster. Every key lives under
 * `pxd/<clusterId>/`, so several clusters can share one etcd; values are JSON.
 *
 * Bounded failure. etcd3's defaults retry each call three times and give unary calls no
 * deadline, so a frozen etcd hangs a caller forever and a retried CAS can report the
 * wrong outcome. Here every unary call has a deadline of CALL_DEADLINE_MS; a call is
 * retried (on another endpoint) only when gRPC had no connection to send it on; each
 * endpoint has a circuit breaker that fails calls at once after BREAKER_FAILURES
 * failures in a row and lets one through again after BREAKER_OPEN_MS; gRPC reconnects
 * at most RECONNECT_BACKOFF_MS apart. Every failure is a KVDB_UNAVAILABLE PxdError that
 * names the endpoints and the reason.
 *
 * Outcome of a failed write. A txn is one etcd transaction, so it is applied whole or
 * not at all. If the request may have reached etcd (deadline expired, connection
 * dropped mid-call) the caller cannot know which, and the error message says so. Since
 * every dependent change is a compare-and-swap, the safe reaction is the same either
 * way: read again and decide; a blind retry of the same txn returns false if the first
 * attempt did land, because its compares no longer hold.
 *
 * Leased keys. etcd3's Lease keeps each lease alive (a keepalive every TTL/3). A key
 * counts as lost when no keepalive answered for a whole TTL (etcd has dropped it or is
 * about to) or when etcd says the lease is gone. Listeners then get the error, and the
 * key tries every REGRANT_INTERVAL_MS to get a new lease and put its latest value again;
 * when that works listeners get `undefined`.
 */
import { isBrokenCircuitError } from 'cockatiel'
import { Etcd3, type Lease, type Namespace } from 'etcd3'
import type { Logger } from 'pino'
import { isPxdError, messageOf, pxdError, type PxdError } from '../errors'
import { Mutex } from '../util/mutex'
import { BREAKER_FAILURES, BREAKER_OPEN_MS, CALL_DEADLINE_MS, etcdClientOptions, notSent, tlsHint, type EtcdSecurity } from './etcd-connection'
import { checkKey, checkTtl, checkTxn, toJson } from './validate'
import type { KvEntry, Kvdb, KvTxn, LeasedKey } from './kvdb'

export { CALL_DEADLINE_MS }
const REGRANT_INTERVAL_MS = 1_000
const LEASE_WATCHDOG_MS = 200
const CLUSTER_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

export interface EtcdKvdbOptions {
  /** `http://host:port`, `https://host:port` (or `host:port`) of each etcd member. */
  endpoints: string[]
  clusterId: string
  log?: Logger
  /** TLS and etcd auth (etcd-connection.ts); with TLS every endpoint is https. */
  security?: EtcdSecurity
}

/** What a leased key needs from its store. */
interface LeaseHost {
  readonly ns: Namespace
  readonly log: Logger | undefined
  call<T>(write: boolean, fn: () => Promise<T>): Promise<T>
  forget(key: EtcdLeasedKey): void
}

export class EtcdKvdb implements Kvdb {
  readonly description: string
  readonly #client: Etcd3
  readonly #ns: Namespace
  readonly #prefix: Buffer
  readonly #log: Logger | undefined
  readonly #leased = new Set<EtcdLeasedKey>()
  #lastFailure = 'no answer yet'
  #closed = false
  #closing: Promise<void> | undefined

  private constructor(options: EtcdKvdbOptions, hosts: string[]) {
    this.description = `${hosts.some((h) => h.startsWith('https:')) ? 'https' : 'etcd'}://${hosts.map((h) => h.replace(/^https?:\/\//, '')).join(',')}`
    this.#log = options.log
    this.#client = new Etcd3(etcdClientOptions(hosts, options.security))
    this.#ns = this.#client.namespace(`pxd/${options.clusterId}/`)
    this.#prefix = this.#ns.prefix
  }

  /** Connect and make one call, so a wrong or dead endpoint is reported at start. */
  static async open(options: EtcdKvdbOptions): Promise<EtcdKvdb> {
    if (!CLUSTER_ID.test(options.clusterId)) {
      throw pxdError('INVALID_ARGUMENT', `cluster id ${JSON.stringify(options.clusterId)} must be 1-128 letters, digits, '.', '_' or '-'`)
    }
    if (options.endpoints.length === 0) throw pxdError('INVALID_ARGUMENT', 'etcd needs at least one endpoint (host:port)')
    const scheme = options.security?.tls ? 'https' : 'http'
    const hosts = options.endpoints.map((e) => `${/^https:\/\//.test(e) ? 'https' : scheme}://${e.replace(/^https?:\/\//, '')}`)
    const db = new EtcdKvdb(options, hosts)
    try {
      await db.get('members/')
    } catch (err) {
      await db.close()
      throw err
    }
    db.#log?.info({ kvdb: db.description, clusterId: options.clusterId }, 'metadata store connected')
    return db
  }

  async get<T>(key: string): Promise<KvEntry<T> | undefined> {
    checkKey(key)
    const res = await this.#call(false, () => this.#ns.get(key).exec())
    const kv = res.kvs[0]
    return kv ? this.#entry<T>(key, kv.value, kv.mod_revision) : undefined
  }

  async list<T>(prefix: string): Promise<Array<KvEntry<T>>> {
    if (typeof prefix !== 'string') throw pxdError('INVALID_ARGUMENT', 'a kvdb prefix must be a string')
    const res = await this.#call(false, () => this.#ns.getAll().prefix(prefix).sort('Key', 'Ascend').exec())
    return res.kvs.map((kv) => this.#entry<T>(kv.key.toString('utf8'), kv.value, kv.mod_revision))
  }

  async txn(txn: KvTxn): Promise<boolean> {
    checkTxn(txn)
    const request = {
      compare: (txn.compares ?? []).map((c) => ({ key: this.#key(c.key), target: 'Mod' as const, result: 'Equal' as const, mod_revision: c.modRevision })),
      success: [
        ...(txn.puts ?? []).map(({ key, value }) => ({ request_put: { key: this.#key(key), value: Buffer.from(toJson(key, value)) } })),
        ...(txn.deletes ?? []).map((key) => ({ request_delete_range: { key: this.#key(key) } })),
      ],
      failure: [],
    }
    const res = await this.#call(true, () => this.#ns.kv.txn(request))
    return res.succeeded
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.txn({ puts: [{ key, value }] })
  }

  async delete(key: string): Promise<void> {
    await this.txn({ deletes: [key] })
  }

  async putLeased(key: string, value: unknown, ttlSeconds: number): Promise<LeasedKey> {
    checkKey(key)
    checkTtl(ttlSeconds)
    const json = toJson(key, value)
    this.#checkOpen()
    const host: LeaseHost = {
      ns: this.#ns,
      log: this.#log,
      call: (write, fn) => this.#call(write, fn),
      forget: (k) => this.#leased.delete(k),
    }
    const leased = new EtcdLeasedKey(host, key, json, ttlSeconds)
    this.#leased.add(leased)
    try {
      await leased.start()
    } catch (err) {
      this.#leased.delete(leased)
      throw err
    }
    return leased
  }

  /** Revoke the leases this store holds (bounded by the call deadline), then disconnect. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const leased = [...this.#leased]
      const results = await Promise.allSettled(leased.map((k) => k.revoke()))
      this.#closed = true
      results.forEach((r, i) => {
        if (r.status === 'fulfilled') return
        this.#log?.warn({ err: r.reason as unknown }, 'leased key not revoked at close; it expires with its TTL')
        leased[i]!.abandon()
      })
      this.#client.close()
    })()
    return this.#closing
  }

  #key(key: string): Buffer {
    return Buffer.concat([this.#prefix, Buffer.from(key, 'utf8')])
  }

  #entry<T>(key: string, value: Buffer, modRevision: string | number): KvEntry<T> {
    let parsed: T
    try {
      parsed = JSON.parse(value.toString('utf8')) as T
    } catch (err) {
      throw pxdError('KVDB_UNAVAILABLE', `metadata store ${this.description}: the value of ${key} is not JSON`, err)
    }
    return { key, value: parsed, modRevision: Number(modRevision) }
  }

  #checkOpen(): void {
    if (this.#closed || this.#closing) throw pxdError('KVDB_UNAVAILABLE', `metadata store ${this.description} is closed`)
  }

  /** Run one etcd call; any failure becomes KVDB_UNAVAILABLE (or INVALID_ARGUMENT if etcd refused the request). */
  async #call<T>(write: boolean, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw pxdError('KVDB_UNAVAILABLE', `metadata store ${this.description} is closed`)
    try {
      return await fn()
    } catch (err) {
      throw this.#failure(err, write)
    }
  }

  #failure(err: unknown, write: boolean): PxdError {
    if (isPxdError(err)) return err
    if (this.#closed) return pxdError('KVDB_UNAVAILABLE', `metadata store ${this.description} is closed`, err)
    const name = err instanceof Error ? err.constructor.name : ''
    if (name === 'GRPCInvalidArgumentError' && messageOf(err).includes('user name is empty')) {
      return pxdError('KVDB_DENIED', `metadata store ${this.description} requires authentication: give --kvdb-username and --kvdb-password-file`, err)
    }
    if (name === 'GRPCInvalidArgumentError') {
      return pxdError('INVALID_ARGUMENT', `metadata store ${this.description} refused the request: ${messageOf(err)}`, err)
    }
    if (name === 'EtcdAuthenticationFailedError' || name === 'EtcdPermissionDeniedError' || name === 'GRPCUnauthenticatedError') {
      return pxdError('KVDB_DENIED', `metadata store ${this.description} refused pxd: ${messageOf(err)} (check --kvdb-username, --kvdb-password-file and the user's role on pxd/<cluster-id>/)`, err)
    }
    let reason: string
    if (isBrokenCircuitError(err)) {
      reason = `not sent: ${BREAKER_FAILURES} calls in a row failed, the next one is tried within ${BREAKER_OPEN_MS} ms (last error: ${this.#lastFailure})`
    } else {
      // gRPC's TLS errors carry OpenSSL's multi-line text: one line reads better in a log.
      reason = messageOf(err).replace(/\.? Resolution note: ?$/, '').replace(/\s*\n\s*/g, ' ')
      reason += tlsHint(reason)
      this.#lastFailure = reason
      if (write && !notSent(err)) reason += '; the change may or may not have been applied: read it back before deciding'
    }
    return pxdError('KVDB_UNAVAILABLE', `metadata store ${this.description} unavailable: ${reason}`, err)
  }
}


/**
 * One key under a lease, kept alive by etcd3's Lease and watched here: `#lease` is the
 * lease that holds (or last held) the key; after a loss it stays the current one until
 * a new lease holds the key, so revoke() can still take the old one down.
 */
class EtcdLeasedKey implements LeasedKey {
  readonly #host: LeaseHost
  readonly #key: string
  readonly #ttl: number
  readonly #mutex = new Mutex()
  readonly #listeners: Array<(lost: Error | undefined) => void> = []
  #json: string
  #lease: Lease | undefined
  #renewedAt = 0
  #state: 'alive' | 'lost' | 'revoked' = 'alive'
  #revoked = false
  #watchdog: NodeJS.Timeout | undefined
  #wake: (() => void) | undefined

  constructor(host: LeaseHost, key: string, json: string, ttl: number) {
    this.#host = host
    this.#key = key
    this.#json = json
    this.#ttl = ttl
  }

  async start(): Promise<void> {
    const lease = this.#grant()
    try {
      await this.#putUnder(lease, this.#json)
    } catch (err) {
      this.#drop(lease)
      throw err
    }
    this.#lease = lease
    this.#watchdog = setInterval(() => this.#checkRenewed(), LEASE_WATCHDOG_MS)
    this.#watchdog.unref()
  }

  async update(value: unknown): Promise<void> {
    if (this.#state === 'revoked') throw pxdError('INVALID_ARGUMENT', `leased key ${this.#key} was revoked`)
    const json = toJson(this.#key, value)
    this.#json = json
    await this.#mutex.run(async () => {
      if (this.#state === 'lost') {
        throw pxdError('KVDB_UNAVAILABLE', `the lease on ${this.#key} is lost; the new value is written when a new lease is granted`)
      }
      if (this.#state === 'alive' && this.#lease) await this.#putUnder(this.#lease, json)
    })
  }

  onChange(listener: (lost: Error | undefined) => void): void {
    this.#listeners.push(listener)
  }

  async revoke(): Promise<void> {
    if (this.#revoked) return
    this.#state = 'revoked'
    clearInterval(this.#watchdog)
    this.#wake?.()
    await this.#mutex.run(async () => {
      if (this.#revoked) return
      const lease = this.#lease
      if (lease) await this.#host.call(true, () => lease.revoke())
      this.#revoked = true
      this.#host.forget(this)
    })
  }

  release(): void {
    if (this.#revoked) return
    this.abandon()
    this.#host.forget(this)
  }

  /** Stop renewing without telling etcd (the store is closing and etcd did not answer). */
  abandon(): void {
    this.#state = 'revoked'
    this.#revoked = true
    clearInterval(this.#watchdog)
    this.#wake?.()
    if (this.#lease) {
      this.#lease.removeAllListeners()
      this.#lease.release()
    }
  }

  #grant(): Lease {
    const lease = this.#host.ns.lease(this.#ttl)
    this.#renewedAt = Date.now()
    lease.on('keepaliveSucceeded', () => {
      if (lease === this.#lease) this.#renewedAt = Date.now()
    })
    lease.on('lost', (err: Error) => this.#lost(lease, err.message))
    return lease
  }

  async #putUnder(lease: Lease, json: string): Promise<void> {
    await this.#host.call(true, async () => {
      await lease.grant()
      await lease.put(this.#key).value(json).exec()
    })
  }

  /** Stop a lease's keepalives and revoke it in the background, for a lease we no longer want. */
  #drop(lease: Lease): void {
    lease.removeAllListeners()
    lease.revoke().catch(() => { /* it expires with its TTL */ })
  }

  #checkRenewed(): void {
    if (this.#state === 'alive' && this.#lease && Date.now() - this.#renewedAt > this.#ttl * 1000) {
      this.#lost(this.#lease, `no keepalive answered for ${this.#ttl} s`)
    }
  }

  #lost(lease: Lease, reason: string): void {
    if (lease !== this.#lease || this.#state !== 'alive') return
    this.#state = 'lost'
    lease.removeAllListeners()
    lease.release()
    const err = pxdError('KVDB_UNAVAILABLE', `the lease on ${this.#key} is lost (${reason}); trying to get a new one`)
    this.#host.log?.warn({ key: this.#key, err }, 'leased key lost')
    this.#notify(err)
    void this.#regrant()
  }

  /** Every REGRANT_INTERVAL_MS, a new lease and the latest value, until it works or the key is revoked. */
  async #regrant(): Promise<void> {
    while (this.#state === 'lost') {
      const regained = await this.#mutex.run(async () => {
        if (this.#state !== 'lost') return false
        const lease = this.#grant()
        try {
          await this.#putUnder(lease, this.#json)
        } catch (err) {
          this.#host.log?.debug({ key: this.#key, err }, 'new lease not granted yet')
          this.#drop(lease)
          return false
        }
        const old = this.#lease
        this.#lease = lease
        if (old) this.#drop(old)
        if (this.#state !== 'lost') return false
        this.#state = 'alive'
        return true
      })
      if (regained) {
        this.#host.log?.info({ key: this.#key }, 'leased key held again under a new lease')
        this.#notify(undefined)
        return
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, REGRANT_INTERVAL_MS)
        this.#wake = () => { clearTimeout(timer); resolve() }
      })
      this.#wake = undefined
    }
  }

  #notify(lost: Error | undefined): void {
    for (const listener of this.#listeners) {
      try {
        listener(lost)
      } catch (err) {
        this.#host.log?.error({ key: this.#key, err }, 'leased key listener threw')
      }
    }
  }
}
