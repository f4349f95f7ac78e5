/**
 * A client node's mount of a shared volume: the addon's FUSE file system
 * (native/share_client.h) at the volume's mountpoint, whose wire requests this module
 * carries to whichever node serves the volume now (a Route), and whose replies it hands
 * back. JavaScript moves the bytes only; it never parses a request beyond its opcode.
 *
 * When the server goes (link lost, timeout, NOT_SERVING), the request is not failed: the
 * route is looked up again (the serving node may change, or this node may take the volume
 * over) and the request is sent there. The file handles in requests are the file
 * system's own, so they mean the same to the new server. An operation that must apply
 * once (wire.ts appliesOnce) and was sent without an answer is sent again only to the
 * same server, whose reply cache answers it (a live restart hands the cache on); to another
 * server, or to the same one back from a crash (SERVER_RECOVERED: the cache went with the
 * process), it fails EIO rather than risk applying it twice. Requests wait at most NO_SERVER_MS for a server.
 */
import { promises as fs } from 'node:fs'
import type { Logger } from 'pino'
import { codeOf, pxdError } from '../errors'
import { setReadahead } from '../frontend/filesystem'
import { native } from '../native/binding'
import { ShareClientEvent, type ShareClientHandle } from '../native/share-client-binding'
import { HeldLocks } from './held-locks'
import type { HandedMount } from './share-handoff'
import { NO_ANSWER, REROUTE, rootRequest, type Route, type RouteResolver } from './share-routes'
import { parseWrite, UnstableWrites } from './unstable-writes'
import { appliesOnce, errorReply, firstHandle, opcodeOf, Op, replyError, WIRE_REPLY_BYTES } from './wire'

const READAHEAD_KB = 1024
/** A request waits this long for a server before the kernel gets EIO. */
export const NO_SERVER_MS = 120_000
/** One attempt of a request: a server that does not answer in this time counts as gone. */
const REQUEST_TIMEOUT_MS = 30_000
/** A blocking lock waits at the server as long as it takes. */
const LOCK_WAIT_TIMEOUT_MS = 2 ** 31 - 1
/** Waits between attempts while no server answers, doubling: a server restarting in place is back within a second. */
const RETRY_MIN_MS = 50
const RETRY_MAX_MS = 250
const EIO = 5
const ENOTCONN = 107
const ESTALE = 116

interface Pending {
  xid: number
  opcode: number
  request: Uint8Array
  /** The server it was last sent to without an answer. */
  sentTo: string | undefined
  route: Route | undefined
  /** An attempt got no answer from sentTo: it may have been applied there. */
  unanswered?: boolean
  /** And sentTo came back from a crash since (SERVER_RECOVERED): nothing there remembers whether it was. */
  lost?: boolean
}

export interface ShareMountOptions {
  name: string
  mountpoint: string
  resolve: RouteResolver
  log: Logger
  attrTimeoutMs?: number
}

export class ShareMount {
  readonly name: string
  readonly mountpoint: string
  readonly #resolve: RouteResolver
  readonly #log: Logger
  readonly #attrTimeoutMs: number
  readonly #pending = new Map<number, Pending>()
  readonly #unstable = new UnstableWrites()
  readonly #locks = new HeldLocks()
  #commits: NodeJS.Timeout | undefined
  /** The server of the last route, whose unstable writes the next one may have to take. */
  #lastServer: string | undefined
  #ticking = false
  /** The code of the last failed route lookup, logged once until a route is found. */
  #routeFailure: string | undefined
  /** The server restarted in place (SERVER_RESTARTED): the locks are taken again before the next request. */
  #reclaimDue = false
  #handle: ShareClientHandle | undefined
  #memory: ArrayBuffer | undefined
  #route: Route | undefined
  #resolving: Promise<Route> | undefined
  #nextXid = Date.now() * 1000
  #closed = false
  ops = 0
  bytes = 0

  constructor(o: ShareMountOptions) {
    this.name = o.name
    this.mountpoint = o.mountpoint
    this.#resolve = o.resolve
    this.#log = o.log
    this.#attrTimeoutMs = o.attrTimeoutMs ?? 1000
  }

  get server(): string | undefined {
    return this.#route?.server
  }

  /** Asks the server for the root, then mounts. */
  async mount(): Promise<void> {
    const reply = await this.#call(rootRequest(), Date.now() + REQUEST_TIMEOUT_MS)
    const error = replyError(reply)
    if (error !== 0) throw pxdError('IO_ERROR', `the server of shared volume ${this.name} refused its root: errno ${-error}`)
    const view = Buffer.from(reply.buffer, reply.byteOffset, reply.byteLength)
    if (view.length < WIRE_REPLY_BYTES + 16 || view[8] !== 1) throw pxdError('IO_ERROR', `the server of shared volume ${this.name} sent a malformed root`)
    const handleEnd = WIRE_REPLY_BYTES + 16 + ((view.readUInt32LE(WIRE_REPLY_BYTES + 12) + 7) & ~7)
    const rootHandle = view.subarray(WIRE_REPLY_BYTES, handleEnd)
    const rootAttr = view.subarray(handleEnd)
    await fs.mkdir(this.mountpoint, { recursive: true, mode: 0o755 })
    try {
      this.#handle = native.shareClientMount(this.mountpoint, rootHandle, rootAttr, { fsname: `pxd:${this.name}`, attrTimeoutMs: this.#attrTimeoutMs }, this.#onEvent)
    } catch (err) {
      throw pxdError('PRECONDITION', `cannot mount shared volume ${this.name} at ${this.mountpoint}: ${(err as Error).message}`, err)
    }
    this.#memory = native.shareClientLayout(this.#handle).memory
    // Sequential reads ask the server for READAHEAD_KB at a time rather than the kernel's
    // default 128 KiB: one round trip per request is what a client read costs.
    await setReadahead(this.mountpoint, READAHEAD_KB).catch((err) => this.#log.warn({ err, volume: this.name }, 'could not raise the shared mount\'s readahead; sequential reads will be slower'))
    this.#commits = setInterval(() => void this.#tick(), 1000)
    this.#commits.unref()
    this.#log.info({ volume: this.name, mountpoint: this.mountpoint, server: this.#route?.server }, 'shared volume mounted as a client')
  }

  /**
   * A live restart: serve the connection a predecessor handed over (`fd`, still mounted),
   * with the locks it held and its server, as if this process had mounted it.
   */
  static adopt(o: ShareMountOptions, handed: HandedMount, fd: number): ShareMount {
    const m = new ShareMount(o)
    try {
      const pending = Buffer.from(handed.pending, 'base64')
      m.#handle = native.shareClientAdopt(fd, o.mountpoint, Buffer.from(handed.table, 'base64'), handed.nextNodeid, { attrTimeoutMs: m.#attrTimeoutMs, pending }, m.#onEvent)
    } catch (err) {
      throw pxdError('HANDOFF_FAILED', `cannot take over the mount of shared volume ${o.name} at ${o.mountpoint}: ${(err as Error).message}`, err)
    }
    m.#memory = native.shareClientLayout(m.#handle).memory
    m.#locks.restore(handed.locks.map((l) => Buffer.from(l, 'base64')))
    for (const key of handed.lost) m.#unstable.markLost(key)
    m.#lastServer = handed.server
    m.#commits = setInterval(() => void m.#tick(), 1000)
    m.#commits.unref()
    return m
  }

  /** A live restart, first step: no new request is read (the kernel queues them); those read are still answered. */
  pause(): void {
    if (this.#handle) native.shareClientPause(this.#handle)
  }

  /**
   * A live restart, after pause(): once every request read was answered (but blocking
   * locks still waiting: the successor sends them again and answers them), every write the
   * server acknowledged is made durable there (the successor keeps no copies), and the
   * connection is given up, still mounted. HANDOFF_FAILED when that cannot be done in time.
   */
  async handOff(timeoutMs: number): Promise<{ handed: HandedMount; fd: number }> {
    const deadline = Date.now() + timeoutMs
    // A blocking lock may wait for ever: it goes to the successor, which asks again.
    for (const [slot, p] of this.#pending) {
      if (p.opcode !== Op.SETLKW) continue
      this.#pending.delete(slot)
      p.route?.cancel(p.xid)
    }
    while (this.#pending.size > 0) {
      if (Date.now() > deadline) throw pxdError('HANDOFF_FAILED', `shared volume ${this.name} still has ${this.#pending.size} requests in flight`)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    clearInterval(this.#commits)
    const route = await this.#currentRoute()
    const failed = await this.#unstable.commitAll(route, () => this.#nextXid++, deadline)
    if (failed !== undefined) throw pxdError('HANDOFF_FAILED', `shared volume ${this.name}: ${failed}`)
    const given = native.shareClientHandOff(this.#handle!)
    this.#closed = true
    this.#handle = undefined
    const handed: HandedMount = {
      table: Buffer.from(given.table).toString('base64'),
      nextNodeid: given.nextNodeid,
      locks: this.#locks.saved().map((l) => l.toString('base64')),
      lost: this.#unstable.lostFiles(),
      server: route.server,
      pending: Buffer.from(given.pending).toString('base64'),
    }
    return { handed, fd: given.fd }
  }

  /** Without lazy, fails with IN_USE while something uses the mount (and keeps serving it). */
  unmount(lazy = false): void {
    const handle = this.#handle
    if (!handle) return
    try {
      native.shareClientUnmount(handle, lazy)
    } catch (err) {
      if ((err as { code?: string }).code === 'EBUSY') throw pxdError('IN_USE', `shared volume ${this.name} is busy at ${this.mountpoint}`, err)
      throw pxdError('IO_ERROR', `cannot unmount shared volume ${this.name}: ${(err as Error).message}`, err)
    }
    this.#closed = true
    this.#handle = undefined
    this.#pending.clear()
    clearInterval(this.#commits)
    void fs.rmdir(this.mountpoint).catch(() => undefined)
    this.#log.info({ volume: this.name, mountpoint: this.mountpoint }, 'shared volume client unmounted')
  }

  stats(): { requests: number; bytesRead: number; bytesWritten: number; nodes: number } | undefined {
    return this.#handle ? native.shareClientStats(this.#handle) : undefined
  }

  readonly #onEvent = (event: ShareClientEvent, slot: number, offset: number, length: number): void => {
    if (event === ShareClientEvent.Request) {
      const request = new Uint8Array(this.#memory!, offset, length)
      const pending: Pending = { xid: this.#nextXid++, opcode: opcodeOf(request), request, sentTo: undefined, route: undefined }
      this.#pending.set(slot, pending)
      void this.#forward(slot, pending)
    } else if (event === ShareClientEvent.Interrupt) {
      const p = this.#pending.get(slot)
      if (p && p.opcode === Op.SETLKW) p.route?.cancel(p.xid)
    } else if (event === ShareClientEvent.Stopped) {
      if (!this.#closed) this.#log.error({ volume: this.name, errno: length }, 'the shared volume\'s FUSE mount stopped on its own')
      this.#closed = true
    }
  }

  async #forward(slot: number, p: Pending): Promise<void> {
    let reply: Uint8Array | undefined
    let errno = EIO
    try {
      reply = p.opcode === Op.FSYNC ? await this.#fsync(p) : await this.#send(p, Date.now() + NO_SERVER_MS)
      if (replyError(reply) === 0 && p.route) {
        if (p.opcode === Op.WRITE) this.#unstable.wrote(p.route.server, p.request)
        else if (p.opcode === Op.SETLK || p.opcode === Op.SETLKW || p.opcode === Op.FLUSH || p.opcode === Op.RELEASE) this.#locks.settled(p.opcode, p.request)
      }
    } catch (err) {
      errno = codeOf(err) === 'ABORTED' ? ENOTCONN : (err as { errno?: number }).errno ?? EIO
      if (!this.#closed) this.#log.warn({ volume: this.name, opcode: p.opcode, err }, 'shared volume operation failed')
    }
    const handle = this.#handle
    if (this.#pending.get(slot) !== p || !handle) return
    this.#pending.delete(slot)
    this.ops++
    this.bytes += p.request.length + (reply?.length ?? 0)
    if (reply) native.shareClientReply(handle, slot, reply)
    else native.shareClientFail(handle, slot, errno)
  }

  /** An fsync: fails EIO if writes of the file were lost with a server; else what it made durable is let go. */
  async #fsync(p: Pending): Promise<Uint8Array> {
    const file = parseWrite(p.request)
    if (file && this.#unstable.takeLost(file.key)) return errorReply(EIO)
    const upTo = this.#unstable.seq
    const reply = await this.#send(p, Date.now() + NO_SERVER_MS)
    if (file && replyError(reply) === 0 && p.route) this.#unstable.committed(p.route.server, file.key, upTo)
    return reply
  }

  /**
   * Once a second: while this client holds locks or unstable writes, check that its server
   * is still the volume's server, and find the new one while it has none (a takeover is acted
   * on at once, not at the next request: the new server's grace for reclaims is short), or,
   * holding locks, ask the same server for the root, which one that restarted in place
   * answers SERVER_RESTARTED (the locks go again then); then the background commits.
   */
  async #tick(): Promise<void> {
    if (this.#ticking || this.#closed) return
    this.#ticking = true
    try {
      const route = this.#route
      if (this.#locks.size > 0 || this.#unstable.bytes > 0) {
        if (!route) {
          // The last attempt found no server ready (a takeover still starting): try again now,
          // not at the next request; an idle lock holder may send none within the grace.
          await this.#currentRoute().catch(() => undefined)
        } else {
          const now = await this.#resolve(route).catch(() => undefined)
          if (now && now.server !== route.server && this.#route === route) {
            this.#route = undefined
            await this.#currentRoute().catch(() => undefined)
          } else if (this.#locks.size > 0) {
            // The same server may have restarted in place: it says so (SERVER_RESTARTED), and the locks go again.
            await this.#call(rootRequest(), Date.now() + REQUEST_TIMEOUT_MS).catch(() => undefined)
          }
        }
      }
      await this.#commitDue()
    } finally {
      this.#ticking = false
    }
  }

  /** Background commits of files with old or too many unstable writes. */
  async #commitDue(): Promise<void> {
    const route = this.#route
    if (!route || this.#closed) return
    for (const { key, request, upTo } of this.#unstable.due()) {
      try {
        const reply = await route.send(this.#nextXid++, request, REQUEST_TIMEOUT_MS)
        if (replyError(reply) === 0) this.#unstable.committed(route.server, key, upTo)
      } catch {
        return // the route failed: the next one takes the writes over
      }
    }
  }

  /**
   * A new server: first the locks this client held (reclaims, in the new server's grace),
   * then the writes the last one may have lost, in order, then a commit of each file.
   */
  async #replay(route: Route): Promise<void> {
    await this.#reclaimLocks(route)
    const writes = await this.#unstable.replay(route, () => this.#nextXid++, REQUEST_TIMEOUT_MS)
    if (writes > 0) this.#log.warn({ volume: this.name, server: route.server, writes }, 'wrote again what the last server acknowledged but may not have made durable')
  }

  /** The locks this client holds, sent again as reclaims, then a ROOT reclaim that says it is done. */
  async #reclaimLocks(route: Route): Promise<void> {
    const locks = this.#locks.toReclaim()
    const errnos: number[] = []
    const handles: string[] = []
    for (const op of locks) {
      const reply = await route.send(this.#nextXid++, op, REQUEST_TIMEOUT_MS, true)
      if (replyError(reply) !== 0) {
        errnos.push(-replyError(reply))
        // Which file: its handle (for ext4, the inode number and generation), to compare with the server's.
        handles.push(firstHandle(op)?.handle.toString('hex') ?? '?')
      }
    }
    if (locks.length > 0) {
      if (errnos.length > 0) this.#log.error({ volume: this.name, server: route.server, lost: errnos.length, errnos, handles, reclaimed: locks.length - errnos.length }, 'locks held from the last server could not all be taken again on the new one')
      else this.#log.info({ volume: this.name, server: route.server, reclaimed: locks.length }, 'locks held from the last server taken again on the new one')
    }
    // Done: a server that restarted in place answers this client again (share-export.ts).
    await route.send(this.#nextXid++, rootRequest(), REQUEST_TIMEOUT_MS, true)
  }

  /** The root request, before there is a mount. */
  #call(request: Uint8Array, deadline: number): Promise<Uint8Array> {
    return this.#send({ xid: this.#nextXid++, opcode: opcodeOf(request), request, sentTo: undefined, route: undefined }, deadline)
  }

  async #send(p: Pending, deadline: number): Promise<Uint8Array> {
    for (let delay = RETRY_MIN_MS; ; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      if (this.#closed) throw Object.assign(pxdError('ABORTED', `shared volume ${this.name} was unmounted`), { errno: ENOTCONN })
      let route: Route | undefined
      try {
        route = await this.#currentRoute()
        if (p.sentTo !== undefined && (p.sentTo !== route.server || p.lost === true) && appliesOnce(p.request)) {
          // It may have been applied by the server that went or restarted: never apply it twice.
          throw Object.assign(pxdError('IO_ERROR', `operation ${p.opcode} on ${this.name} was in flight when server ${p.sentTo} went or restarted`), { errno: EIO })
        }
        p.route = route
        p.sentTo = route.server
        const reply = await route.send(p.xid, p.request, p.opcode === Op.SETLKW ? LOCK_WAIT_TIMEOUT_MS : REQUEST_TIMEOUT_MS)
        if (replyError(reply) === -ESTALE && p.opcode === Op.ROOT) throw pxdError('NOT_SERVING', 'root not available')
        return reply
      } catch (err) {
        if (!REROUTE.some((code) => codeOf(err) === code)) throw err
        if (codeOf(err) === 'SERVER_RESTARTED' || codeOf(err) === 'SERVER_RECOVERED') {
          this.#reclaimDue = true
          if (codeOf(err) === 'SERVER_RECOVERED') this.#lostWith(route?.server, p)
        } else if (route !== undefined && p.sentTo === route.server && NO_ANSWER.has(codeOf(err) ?? '')) {
          p.unanswered = true
        }
        if (route !== undefined && this.#route === route) this.#route = undefined
        if (Date.now() > deadline) throw Object.assign(pxdError('PEER_UNAVAILABLE', `no node serves shared volume ${this.name}`, err), { errno: EIO })
        await new Promise((resolve) => setTimeout(resolve, delay))
      }
    }
  }

  /** `server` crashed: what was sent to it without an answer may have been applied, and nothing there remembers it. */
  #lostWith(server: string | undefined, p: Pending): void {
    for (const q of [...this.#pending.values(), p]) if (q.unanswered === true && q.sentTo === server) q.lost = true
  }

  #currentRoute(): Promise<Route> {
    if (this.#route) return Promise.resolve(this.#route)
    this.#resolving ??= (async () => {
      try {
        const route = await this.#resolve(undefined)
        if (this.#lastServer !== undefined && route.server !== this.#lastServer) await this.#replay(route)
        else if (this.#reclaimDue) await this.#reclaimLocks(route)
        this.#reclaimDue = false
        if (route.server !== this.#lastServer) this.#log.info({ volume: this.name, server: route.server }, 'shared volume served by')
        this.#lastServer = route.server
        this.#routeFailure = undefined
        this.#route = route
        return route
      } catch (err) {
        const why = codeOf(err) ?? String(err)
        if (why !== this.#routeFailure) this.#log.warn({ err, volume: this.name }, 'no route to the shared volume\'s server yet; retrying')
        this.#routeFailure = why
        throw err
      } finally {
        this.#resolving = undefined
      }
    })()
    return this.#resolving
  }
}
