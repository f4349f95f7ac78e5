/**
 * What the volume modules' unit tests share: the real embedded kvdb in a temp dir, a
 * Kvdb that delegates to it and lets a test step in before a transaction (to change a
 * key concurrently, reject, or hang and time out), and a membership of fixed nodes.
 */
import type { ExecutionContext } from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import type { NodeInfo } from '../../src/cluster/membership'
import { EmbeddedKvdb } from '../../src/kvdb/embedded'
import { keys, type Kvdb, type KvEntry, type KvTxn, type LeasedKey } from '../../src/kvdb/kvdb'
import type { AttachmentRecord, VolumeRecord } from '../../src/volumes/types'

export const silent = pino({ level: 'silent' })
export const GiB = 1024 ** 3

export async function openKvdb(t: ExecutionContext): Promise<EmbeddedKvdb> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pxd-volumes-'))
  const db = await EmbeddedKvdb.open(path.join(dir, 'kvdb.json'))
  t.teardown(async () => {
    await db.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return db
}

/** Runs before each transaction reaches the store; it may change keys, throw, or wait. */
export type TxnHook = (txn: KvTxn, n: number) => Promise<void> | void

export class HookedKvdb implements Kvdb {
  readonly description = 'hooked'
  readonly #inner: Kvdb
  onTxn: TxnHook | undefined
  /** Transactions asked for, including the ones the hook refused. */
  txns = 0

  constructor(inner: Kvdb, onTxn?: TxnHook) {
    this.#inner = inner
    this.onTxn = onTxn
  }

  get<T>(key: string): Promise<KvEntry<T> | undefined> {
    return this.#inner.get<T>(key)
  }

  list<T>(prefix: string): Promise<Array<KvEntry<T>>> {
    return this.#inner.list<T>(prefix)
  }

  async txn(txn: KvTxn): Promise<boolean> {
    const n = this.txns++
    await this.onTxn?.(txn, n)
    return this.#inner.txn(txn)
  }

  put(key: string, value: unknown): Promise<void> {
    return this.#inner.put(key, value)
  }

  delete(key: string): Promise<void> {
    return this.#inner.delete(key)
  }

  putLeased(key: string, value: unknown, ttlSeconds: number): Promise<LeasedKey> {
    return this.#inner.putLeased(key, value, ttlSeconds)
  }

  close(): Promise<void> {
    return this.#inner.close()
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Poll until `ready` holds (background work finished), or give up after `ms`. */
export async function waitFor(ready: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const until = Date.now() + ms
  while (!(await ready())) {
    if (Date.now() > until) throw new Error('timed out waiting')
    await sleep(10)
  }
}

/** A store call that gives up after `ms`, the way a client's request deadline does. */
export async function timesOut(ms: number, error: Error): Promise<never> {
  await sleep(ms)
  throw error
}

export function node(nodeId: string, o: { online?: boolean; free?: number | null } = {}): NodeInfo {
  const free = o.free === undefined ? 100 * GiB : o.free
  return {
    nodeId, peerAddress: null, apiUrl: '', version: 'test', joinedAt: '2024-01-01T00:00:00.000Z',
    online: o.online ?? true,
    capacity: free === null ? null : { total: 200 * GiB, free },
    allocated: null,
  }
}

/** The parts of Membership the volume modules call. */
export class FakeMembership {
  list: NodeInfo[]

  constructor(list: NodeInfo[]) {
    this.list = list
  }

  async nodes(): Promise<NodeInfo[]> {
    return this.list
  }

  async isOnline(nodeId: string): Promise<boolean> {
    return this.list.some((n) => n.nodeId === nodeId && n.online)
  }
}

export function volumeRecord(name: string, o: { replicas: string[]; inSync?: string[]; size?: number; repl?: number }): VolumeRecord {
  return {
    id: `${name.padEnd(16, '0').slice(0, 16)}`,
    name,
    spec: { size: o.size ?? GiB, repl: o.repl ?? o.replicas.length, fs: 'ext4', blockSize: 4096, shared: false, extra: {} },
    createdAt: '2024-01-01T00:00:00.000Z',
    replicas: o.replicas.map((nodeId) => ({ nodeId })),
    inSync: o.inSync ?? o.replicas,
  }
}

export async function putVolume(db: Kvdb, record: VolumeRecord): Promise<void> {
  await db.put(keys.volume(record.name), record)
}

export async function putAttachment(db: Kvdb, name: string, value: AttachmentRecord): Promise<void> {
  await db.put(keys.attachment(name), value)
}

export async function attachmentOf(db: Kvdb, name: string): Promise<AttachmentRecord | undefined> {
  return (await db.get<AttachmentRecord>(keys.attachment(name)))?.value
}

export async function inSyncOf(db: Kvdb, name: string): Promise<string[] | undefined> {
  return (await db.get<VolumeRecord>(keys.volume(name)))?.value.inSync
}
