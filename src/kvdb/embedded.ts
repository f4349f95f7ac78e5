/**
 * Embedded single-node metadata store: the whole map lives in memory and is written
 * to one JSON file on every change (write a temp file, fsync, rename, fsync the dir),
 * so a crash leaves either the old or the new state, never a torn one.
 *
 * Leased keys are an in-process lease: the process that holds them is the only one
 * that uses this file, so they live until `revoke()` or until the process is gone.
 * They are marked in the file and dropped when it is opened again.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { writeFileDurably } from '../util/durable'
import { pxdError } from '../errors'
import { Mutex } from '../util/mutex'
import type { Kvdb, KvEntry, KvTxn, LeasedKey } from './kvdb'
import { checkTtl, checkTxn, toJson } from './validate'

const FORMAT_VERSION = 1

/** `lease` marks a leased key with the in-process lease that holds it. */
interface Stored { value: unknown; modRevision: number; lease?: number }
interface FileFormat { version: number; revision: number; entries: Record<string, Stored> }

export class EmbeddedKvdb implements Kvdb {
  readonly description = 'embedded'
  readonly #file: string
  readonly #mutex = new Mutex()
  #entries = new Map<string, Stored>()
  #revision = 0
  #closed = false
  #leases = 0

  private constructor(file: string) {
    this.#file = file
  }

  static async open(file: string): Promise<EmbeddedKvdb> {
    const db = new EmbeddedKvdb(file)
    await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 })
    let text: string | undefined
    try {
      text = await fs.readFile(file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    if (text !== undefined) {
      let parsed: FileFormat
      try {
        parsed = JSON.parse(text) as FileFormat
      } catch (err) {
        throw pxdError('KVDB_UNAVAILABLE', `metadata file ${file} is not valid JSON; refusing to start over it`, err)
      }
      if (parsed.version !== FORMAT_VERSION) throw pxdError('KVDB_UNAVAILABLE', `metadata file ${file} has unknown version ${parsed.version}`)
      db.#revision = parsed.revision
      db.#entries = new Map(Object.entries(parsed.entries).filter(([, stored]) => stored.lease === undefined))
    }
    return db
  }

  async get<T>(key: string): Promise<KvEntry<T> | undefined> {
    this.#checkOpen()
    const stored = this.#entries.get(key)
    return stored ? { key, value: JSON.parse(JSON.stringify(stored.value)) as T, modRevision: stored.modRevision } : undefined
  }

  async list<T>(prefix: string): Promise<Array<KvEntry<T>>> {
    this.#checkOpen()
    const out: Array<KvEntry<T>> = []
    for (const [key, stored] of this.#entries) {
      if (key.startsWith(prefix)) out.push({ key, value: JSON.parse(JSON.stringify(stored.value)) as T, modRevision: stored.modRevision })
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  }

  async txn(txn: KvTxn): Promise<boolean> {
    return this.#apply(txn)
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.txn({ puts: [{ key, value }] })
  }

  async delete(key: string): Promise<void> {
    await this.txn({ deletes: [key] })
  }

  async putLeased(key: string, value: unknown, ttlSeconds: number): Promise<LeasedKey> {
    checkTtl(ttlSeconds)
    const lease = ++this.#leases
    await this.#apply({ puts: [{ key, value }] }, lease)
    let revoked = false
    return {
      update: async (next) => {
        if (revoked) throw pxdError('INVALID_ARGUMENT', `leased key ${key} was revoked`)
        await this.#apply({ puts: [{ key, value: next }] }, lease)
      },
      onChange: () => {},
      revoke: () => this.#mutex.run(async () => {
        if (revoked || this.#closed) return
        revoked = true
        // Like an etcd lease: the key goes only if this lease still holds it.
        if (this.#entries.get(key)?.lease === lease) await this.#commit([], [key], undefined)
      }),
      // In-process leases end with the process; the file's next opening drops the key.
      release: () => { revoked = true },
    }
  }

  async close(): Promise<void> {
    await this.#mutex.run(async () => {
      this.#closed = true
    })
  }

  async #apply(txn: KvTxn, lease?: number): Promise<boolean> {
    checkTxn(txn)
    const puts = (txn.puts ?? []).map(({ key, value }) => ({ key, value: JSON.parse(toJson(key, value)) as unknown }))
    return this.#mutex.run(async () => {
      this.#checkOpen()
      for (const c of txn.compares ?? []) {
        if ((this.#entries.get(c.key)?.modRevision ?? 0) !== c.modRevision) return false
      }
      await this.#commit(puts, txn.deletes ?? [], lease)
      return true
    })
  }

  /** Under the mutex: build the next state, persist it, then make it current. */
  async #commit(puts: Array<{ key: string; value: unknown }>, deletes: string[], lease: number | undefined): Promise<void> {
    const next = new Map(this.#entries)
    const revision = this.#revision + 1
    for (const { key, value } of puts) next.set(key, lease === undefined ? { value, modRevision: revision } : { value, modRevision: revision, lease })
    for (const key of deletes) next.delete(key)
    await this.#persist(next, revision)
    this.#entries = next
    this.#revision = revision
  }

  async #persist(entries: Map<string, Stored>, revision: number): Promise<void> {
    const doc: FileFormat = { version: FORMAT_VERSION, revision, entries: Object.fromEntries(entries) }
    await writeFileDurably(this.#file, JSON.stringify(doc))
  }

  #checkOpen(): void {
    if (this.#closed) throw pxdError('KVDB_UNAVAILABLE', 'metadata store is closed')
  }
}
