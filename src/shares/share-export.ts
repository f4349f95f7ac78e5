/**
 * The serving end of one shared volume on the node that has it attached: the addon's
 * executor (native/share_server.h, run in the share executor process: executor.ts) over
 * the volume's mounted file system, and the policy around it that needs time or memory of
 * requests:
 *
 * - a reply cache of the operations that must apply once (wire.ts appliesOnce), by client
 *   node and xid, so an operation sent again after a lost link gets the first reply;
 * - blocking locks (SETLKW): the executor never waits; a "would block" reply is asked
 *   again with backoff here until the lock is granted, the client cancels, or the client
 *   or the export goes;
 * - per-client counters (operations, bytes) for inspect and /metrics.
 *
 * Clients are numbered per node for the executor, which keys locks and open references by
 * that number; dropClient releases all of them.
 *
 * After a live restart of this node (share-handoff.ts) the export opens again over the same
 * file system, with the last one's reply cache; the locks went with the old executor, so
 * each client it had is answered SERVER_RESTARTED until it has taken its locks again (its
 * reclaims, then a ROOT marked as a reclaim to say it is done), within the grace period;
 * SERVER_RECOVERED after a crash, whose reply cache went with the process.
 */
import type { Logger } from 'pino'
import { pxdError } from '../errors'
import type { ExecutorStats, ExportSlot, ShareExecutor } from './executor'
import { appliesOnce, errorReply, opcodeOf, Op, wouldBlock } from './wire'

/** Replies of applied-once operations are kept this long for a client that sends one again. */
export const REPLY_CACHE_MS = 120_000
const REPLY_CACHE_MAX = 20_000
const LOCK_RETRY_MIN_MS = 5
const LOCK_RETRY_MAX_MS = 200
const EINTR = 4
const ENOTCONN = 107
/** Worker threads of each export's executor. */
const THREADS = 4

export interface ClientCounters { ops: number; bytes: number }

interface Cached { reply: Promise<Uint8Array>; at: number }

/** A reply cache entry for a successor: key (`node/xid`), the reply (base64), when it was made (ms). */
export type SavedReply = [string, string, number]

/** What a live restart hands a new export of the same volume. */
export interface ExportResume {
  replies: readonly SavedReply[]
  /** The predecessor crashed: `replies` is empty because its cache is gone, not because it held nothing. */
  crashed: boolean
  /** Client nodes that must reclaim their locks before anything else. */
  reclaimFrom: Iterable<string>
}

export class ShareExport {
  readonly name: string
  readonly volumeId: string
  readonly root: string
  readonly #log: Logger
  readonly #executor: ShareExecutor
  readonly #slot: ExportSlot
  readonly #clientIds = new Map<string, number>()
  readonly #counters = new Map<string, ClientCounters>()
  readonly #replies = new Map<string, Cached>()
  /** Blocking lock waits by `${node}/${xid}`: cancel resolves them. */
  readonly #waits = new Map<string, () => void>()
  readonly #sweep: NodeJS.Timeout
  #nextClient = 1
  #fenced = false
  #graceUntil = 0
  #closed: Promise<void> | undefined
  readonly #reclaimFrom = new Set<string>()
  #restartCode: 'SERVER_RESTARTED' | 'SERVER_RECOVERED' = 'SERVER_RESTARTED'
  /** The reply cache as close() left it. */
  #saved = new Map<string, Cached>()

  /** `graceMs`: how long only reclaimed locks are granted (a server that took over from another, or restarted: `resume`). */
  static async open(executor: ShareExecutor, name: string, volumeId: string, root: string, log: Logger, graceMs = 0, resume?: ExportResume): Promise<ShareExport> {
    let slot: ExportSlot
    try {
      slot = await executor.open(root, volumeId, THREADS)
    } catch (err) {
      throw pxdError('PRECONDITION', `cannot serve shared volume ${name} from ${root}: ${(err as Error).message}`, err)
    }
    const exp = new ShareExport(executor, slot, name, volumeId, root, log)
    exp.#graceUntil = Date.now() + graceMs
    for (const [key, reply, at] of resume?.replies ?? []) exp.#replies.set(key, { reply: Promise.resolve(Buffer.from(reply, 'base64')), at })
    for (const client of resume?.reclaimFrom ?? []) exp.#reclaimFrom.add(client)
    if (resume?.crashed) exp.#restartCode = 'SERVER_RECOVERED'
    return exp
  }

  private constructor(executor: ShareExecutor, slot: ExportSlot, name: string, volumeId: string, root: string, log: Logger) {
    this.name = name
    this.volumeId = volumeId
    this.root = root
    this.#log = log
    this.#executor = executor
    this.#slot = slot
    this.#sweep = setInterval(() => this.#sweepReplies(), 10_000)
    this.#sweep.unref()
  }

  /**
   * One wire request from `client` (a node id); resolves with the wire reply. Rejects with
   * NOT_SERVING once the export was fenced (another node attached the volume): what this
   * node's file system answers then is no answer, the client asks the new server.
   */
  exec(client: string, xid: number, request: Uint8Array, reclaim = false, canReclaim = true): Promise<Uint8Array> {
    if (this.#reclaimFrom.has(client)) {
      if (!canReclaim) {
        // A client of an older release cannot be asked: served as it is, its locks are gone.
        this.#reclaimFrom.delete(client)
        this.#log.warn({ volume: this.name, client }, 'a client of an older release cannot take its locks again after this server\'s restart')
      } else if (!reclaim) return Promise.reject(pxdError(this.#restartCode, `the server of shared volume ${this.name} restarted: take your locks again first`))
      else if (opcodeOf(request) === Op.ROOT) this.#reclaimFrom.delete(client)
    }
    if (!reclaim && Date.now() < this.#graceUntil) {
      const op = opcodeOf(request)
      if (op === Op.SETLK || op === Op.SETLKW) return Promise.reject(pxdError('IN_GRACE', `shared volume ${this.name} takes only reclaimed locks for a moment`))
    }
    return this.#exec(client, xid, request).then((reply) => {
      if (this.#fenced) throw pxdError('NOT_SERVING', `shared volume ${this.name} was taken over by another node`)
      return reply
    })
  }

  /** Another node attached the volume: no reply from here counts any more. */
  fence(): void {
    this.#fenced = true
  }

  #exec(client: string, xid: number, request: Uint8Array): Promise<Uint8Array> {
    if (this.#closed) return Promise.resolve(errorReply(ENOTCONN))
    const counters = this.#countersOf(client)
    counters.ops++
    counters.bytes += request.length
    const opcode = opcodeOf(request)
    const counted = (reply: Uint8Array) => {
      counters.bytes += reply.length
      return reply
    }
    if (!appliesOnce(request)) return this.#run(client, xid, opcode, request).then(counted)
    const key = `${client}/${xid}`
    const cached = this.#replies.get(key)
    if (cached) return cached.reply
    if (this.#replies.size >= REPLY_CACHE_MAX) this.#sweepReplies(true)
    const reply = this.#run(client, xid, opcode, request).then(counted)
    this.#replies.set(key, { reply, at: Date.now() })
    return reply
  }

  /** The client stopped waiting for `xid` (a blocking lock): it is answered EINTR. */
  cancel(client: string, xid: number): void {
    this.#waits.get(`${client}/${xid}`)?.()
  }

  /** A client unmounted or its lease expired: its locks and open files are let go. */
  dropClient(client: string): void {
    this.#reclaimFrom.delete(client)
    const id = this.#clientIds.get(client)
    if (id === undefined) return
    this.#clientIds.delete(client)
    for (const [key, cancel] of this.#waits) if (key.startsWith(`${client}/`)) cancel()
    void this.#executor.drop(this.#slot, id)
    this.#log.info({ volume: this.name, client }, 'shared volume client dropped: its locks are released')
  }

  clients(): string[] {
    return [...this.#clientIds.keys()]
  }

  counters(): ReadonlyMap<string, ClientCounters> {
    return this.#counters
  }

  stats(): Promise<ExecutorStats> {
    return this.#executor.stats(this.#slot)
  }

  /** After close(): the replies of applied-once operations still kept, for a successor. */
  async savedReplies(): Promise<SavedReply[]> {
    const out: SavedReply[] = []
    for (const [key, cached] of this.#saved) out.push([key, Buffer.from(await cached.reply).toString('base64'), cached.at])
    return out
  }

  /** Waits for the requests in flight, then closes every descriptor. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#sweep)
      for (const cancel of [...this.#waits.values()]) cancel()
      await this.#executor.close(this.#slot)
      this.#saved = new Map(this.#replies)
      this.#replies.clear()
    })()
    return this.#closed
  }

  get closed(): boolean {
    return this.#closed !== undefined
  }

  async #run(client: string, xid: number, opcode: number, request: Uint8Array): Promise<Uint8Array> {
    const id = this.#clientId(client)
    let reply = await this.#execOnce(id, request)
    if (opcode !== Op.SETLKW || !wouldBlock(reply)) return reply
    const key = `${client}/${xid}`
    let cancelled = false
    let wake: (() => void) | undefined
    this.#waits.set(key, () => {
      cancelled = true
      wake?.()
    })
    try {
      for (let delay = LOCK_RETRY_MIN_MS; ; delay = Math.min(delay * 2, LOCK_RETRY_MAX_MS)) {
        await new Promise<void>((resolve) => {
          wake = resolve
          setTimeout(resolve, delay)
        })
        // Closed (a restart, a fence): the client asks the next server; an EINTR without a signal would reach the application.
        if (this.#closed) throw pxdError('NOT_SERVING', `shared volume ${this.name} is no longer served here`)
        if (cancelled || this.#clientIds.get(client) !== id) return errorReply(EINTR)
        reply = await this.#execOnce(id, request)
        if (!wouldBlock(reply)) return reply
      }
    } finally {
      this.#waits.delete(key)
    }
  }

  #execOnce(client: number, request: Uint8Array): Promise<Uint8Array> {
    return this.#executor.exec(this.#slot, client, request)
  }

  #clientId(client: string): number {
    let id = this.#clientIds.get(client)
    if (id === undefined) {
      id = this.#nextClient++
      this.#clientIds.set(client, id)
    }
    return id
  }

  #countersOf(client: string): ClientCounters {
    let c = this.#counters.get(client)
    if (c === undefined) {
      c = { ops: 0, bytes: 0 }
      this.#counters.set(client, c)
    }
    return c
  }

  #sweepReplies(force = false): void {
    const cutoff = Date.now() - (force ? REPLY_CACHE_MS / 4 : REPLY_CACHE_MS)
    for (const [key, cached] of this.#replies) if (cached.at < cutoff) this.#replies.delete(key)
  }
}
