/**
 * Embedded single-node metadata store: the whole map lives in memory and is written
 * to one JSON file on every change (write a temp file, fsync, rename, fsync the dir),
 * so a crash leaves either the old or the new state, never a torn one.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { pxdError } from '../errors'
import { Mutex } from '../util/mutex'
import type { Kvdb, KvEntry, KvTxn } from './kvdb'

const FORMAT_VERSION = 1

interface Stored { value: unknown; modRevision: number }
interface FileFormat { version: number; revision: number; entries: Record<string, Stored> }

export class EmbeddedKvdb implements Kvdb {
  readonly #file: string
  readonly #mutex = new Mutex()
  #entries = new Map<string, Stored>()
  #revision = 0
  #closed = false

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
      db.#entries = new Map(Object.entries(parsed.entries))
    }
    return db
  }

  async get<T>(key: string): Promise<KvEntry<T> | undefined> {
    this.#checkOpen()
    const stored = this.#entries.get(key)
    return stored ? { key, value: structuredClone(stored.value) as T, modRevision: stored.modRevision } : undefined
  }

  async list<T>(prefix: string): Promise<Array<KvEntry<T>>> {
    this.#checkOpen()
    const out: Array<KvEntry<T>> = []
    for (const [key, stored] of this.#entries) {
      if (key.startsWith(prefix)) out.push({ key, value: structuredClone(stored.value) as T, modRevision: stored.modRevision })
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  }

  txn(txn: KvTxn): Promise<boolean> {
    return this.#mutex.run(async () => {
      this.#checkOpen()
      for (const c of txn.compares ?? []) {
        if ((this.#entries.get(c.key)?.modRevision ?? 0) !== c.modRevision) return false
      }
      const next = new Map(this.#entries)
      const revision = this.#revision + 1
      for (const { key, value } of txn.puts ?? []) next.set(key, { value: structuredClone(value), modRevision: revision })
      for (const key of txn.deletes ?? []) next.delete(key)
      await this.#persist(next, revision)
      this.#entries = next
      this.#revision = revision
      return true
    })
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.txn({ puts: [{ key, value }] })
  }

  async delete(key: string): Promise<void> {
    await this.txn({ deletes: [key] })
  }

  async close(): Promise<void> {
    await this.#mutex.run(async () => {
      this.#closed = true
    })
  }

  async #persist(entries: Map<string, Stored>, revision: number): Promise<void> {
    const doc: FileFormat = { version: FORMAT_VERSION, revision, entries: Object.fromEntries(entries) }
    const tmp = `${this.#file}.tmp`
    const handle = await fs.open(tmp, 'w', 0o600)
    try {
      await handle.writeFile(JSON.stringify(doc))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(tmp, this.#file)
    const dir = await fs.open(path.dirname(this.#file), 'r')
    try {
      await dir.sync()
    } finally {
      await dir.close()
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw pxdError('KVDB_UNAVAILABLE', 'metadata store is closed')
  }
}
