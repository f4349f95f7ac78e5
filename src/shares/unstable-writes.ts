/**
 * Writes a client sent that its server acknowledged but may not have made durable yet: a
 * WRITE lands in the server's page cache, and only an fsync there makes it survive the
 * server. If the server goes before that, the next server never had those bytes, and an
 * fsync sent to it would report durable what is lost. So, as an NFS client keeps its
 * unstable writes until a COMMIT, the client keeps a copy of each acknowledged WRITE
 * until an fsync of that file succeeds on the same server; when another server takes
 * over, they are written there again, in order, before anything else is sent
 * (share-mount.ts). Appends cannot be written again (they would land twice): a file that
 * had unstable appends on the server that went fails its next fsync with EIO instead.
 *
 * Memory is bounded by committing in the background: a file whose unstable writes are
 * older than COMMIT_AFTER_MS, or all of them together beyond COMMIT_BYTES, gets an fsync
 * of its own (commitRequest).
 */
import { pxdError } from '../errors'
import type { Route } from './share-routes'
import { firstHandle, O_APPEND, Op, replyError, WIRE_REQUEST_BYTES } from './wire'

export const COMMIT_AFTER_MS = 2_000
export const COMMIT_BYTES = 64 * 1024 * 1024

const FSYNC_DATASYNC = 1

interface Kept { server: string; seq: number; request: Buffer; fh: bigint; at: number; bytes: number }

interface FileWrites {
  /** Wire handle (header, bytes, padding) and the fh of the last write: what an fsync names. */
  handle: Buffer
  fh: bigint
  writes: Kept[]
  /** Appends on a server that went: the next fsync fails. */
  lost: boolean
}

/** The file (handle[0]) a wire request names, as a key, and the fh its body starts with. */
export function parseWrite(request: Uint8Array): { key: string; handle: Buffer; fh: bigint } | undefined {
  const first = firstHandle(request)
  if (!first || first.b[18] !== 1 || first.end + 8 > first.b.length) return undefined
  return { key: first.key, handle: first.handle, fh: first.b.readBigUInt64LE(first.end) }
}

/** A datasync FSYNC of a file, as the kernel would send it, with root's credentials. */
export function commitRequest(handle: Buffer, fh: bigint): Buffer {
  const out = Buffer.alloc(WIRE_REQUEST_BYTES + handle.length + 16)
  out.writeUInt32LE(Op.FSYNC, 0)
  out[18] = 1
  out.writeUInt32LE(16, 20)
  handle.copy(out, WIRE_REQUEST_BYTES)
  out.writeBigUInt64LE(fh, WIRE_REQUEST_BYTES + handle.length)
  out.writeUInt32LE(FSYNC_DATASYNC, WIRE_REQUEST_BYTES + handle.length + 8)
  return out
}

export class UnstableWrites {
  readonly #files = new Map<string, FileWrites>()
  #seq = 0
  #bytes = 0

  get bytes(): number {
    return this.#bytes
  }

  /** Sequence number to give commitUpTo: every write kept so far. */
  get seq(): number {
    return this.#seq
  }

  /** An acknowledged WRITE: keep a copy (the request's memory is the kernel's slot). */
  wrote(server: string, request: Uint8Array): void {
    const w = parseWrite(request)
    if (!w) return
    let file = this.#files.get(w.key)
    if (!file) {
      file = { handle: Buffer.from(w.handle), fh: w.fh, writes: [], lost: false }
      this.#files.set(w.key, file)
    }
    file.fh = w.fh
    file.writes.push({ server, seq: ++this.#seq, request: Buffer.from(request), fh: w.fh, at: Date.now(), bytes: request.length })
    this.#bytes += request.length
  }

  /** An fsync of the file succeeded on `server`: what that server had before it is durable. */
  committed(server: string, key: string, upTo: number): void {
    const file = this.#files.get(key)
    if (!file) return
    const keep: Kept[] = []
    for (const w of file.writes) {
      if (w.server !== server || w.seq > upTo) keep.push(w)
      else this.#bytes -= w.bytes
    }
    file.writes = keep
    if (keep.length === 0 && !file.lost) this.#files.delete(key)
  }

  /** Whether an fsync of the file must fail (appends were lost with a server); clears it. */
  takeLost(key: string): boolean {
    const file = this.#files.get(key)
    if (!file?.lost) return false
    file.lost = false
    if (file.writes.length === 0) this.#files.delete(key)
    return true
  }

  /** Files whose next fsync must fail, for a successor (a live restart). */
  lostFiles(): string[] {
    return [...this.#files].filter(([, f]) => f.lost).map(([key]) => key)
  }

  markLost(key: string): void {
    const file = this.#files.get(key)
    if (file) file.lost = true
    else this.#files.set(key, { handle: Buffer.alloc(0), fh: 0n, writes: [], lost: true })
  }

  /**
   * Another server (`server`) took over: the writes the others held, oldest first, to send
   * it again. Appends among them are dropped and their file marked lost.
   */
  toReplay(server: string): Array<{ key: string; request: Buffer }> {
    const out: Array<{ key: string; seq: number; request: Buffer }> = []
    for (const [key, file] of this.#files) {
      for (const w of [...file.writes]) {
        if (w.server === server) continue
        if ((w.fh & BigInt(O_APPEND)) !== 0n) {
          file.lost = true
          this.#drop(file, w)
          continue
        }
        out.push({ key, seq: w.seq, request: w.request })
      }
    }
    return out.sort((x, y) => x.seq - y.seq)
  }

  /**
   * Another server took over (`route`): toReplay()'s writes sent to it in order, then a
   * commit of each file they touched. Returns how many were written again.
   */
  async replay(route: Route, xid: () => number, timeoutMs: number): Promise<number> {
    const writes = this.toReplay(route.server)
    const files = new Set<string>()
    for (const { key, request } of writes) {
      const reply = await route.send(xid(), request, timeoutMs)
      if (replyError(reply) !== 0) throw pxdError('IO_ERROR', `writing again on a new server failed: errno ${-replyError(reply)}`)
      this.moved(key, request, route.server)
      files.add(key)
    }
    for (const due of this.due(Number.POSITIVE_INFINITY)) {
      if (!files.has(due.key)) continue
      const reply = await route.send(xid(), due.request, timeoutMs)
      if (replyError(reply) === 0) this.committed(route.server, due.key, due.upTo)
    }
    return writes.length
  }

  /**
   * Every file with unstable writes committed on `route` by `deadline` (a live restart hands
   * over no copies). Returns what failed, or undefined when nothing is left unstable.
   */
  async commitAll(route: Route, xid: () => number, deadline: number): Promise<string | undefined> {
    for (const { key, request, upTo } of this.due(Number.POSITIVE_INFINITY)) {
      const reply = await route.send(xid(), request, Math.max(1, deadline - Date.now()))
      if (replyError(reply) !== 0) return `committing its writes failed: errno ${-replyError(reply)}`
      this.committed(route.server, key, upTo)
    }
    return this.#bytes > 0 ? 'writes its server acknowledged are not durable there yet' : undefined
  }

  /** A replayed write is now held by `server`. */
  moved(key: string, request: Buffer, server: string): void {
    const w = this.#files.get(key)?.writes.find((x) => x.request === request)
    if (w) w.server = server
  }

  /** Files due for a background commit: old writes, or too many bytes kept. */
  due(now = Date.now()): Array<{ key: string; request: Buffer; upTo: number }> {
    const all = this.#bytes > COMMIT_BYTES
    const out: Array<{ key: string; request: Buffer; upTo: number }> = []
    for (const [key, file] of this.#files) {
      if (file.writes.length === 0) continue
      if (all || now - file.writes[0]!.at >= COMMIT_AFTER_MS) out.push({ key, request: commitRequest(file.handle, file.fh), upTo: this.#seq })
    }
    return out
  }

  #drop(file: FileWrites, w: Kept): void {
    file.writes = file.writes.filter((x) => x !== w)
    this.#bytes -= w.bytes
  }
}
