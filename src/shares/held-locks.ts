/**
 * The locks a client's processes hold on a shared volume, kept so that a new server can be
 * told of them: the server is the lock manager, and one that took over knows no locks. As
 * NFS clients reclaim their locks in a new server's grace period, the client sends every
 * lock operation the old server granted (locks and unlocks, in order, per file and lock
 * owner) to the new one first, marked as reclaims; the new server refuses other lock
 * requests for a grace period (share-export.ts), so nobody takes a lock that a reclaim
 * is about to hold again.
 *
 * What ends a record: an unlock of the whole file (POSIX) or of the flock; a FLUSH of its
 * owner (a close releases that process's POSIX locks); a RELEASE that unlocks flocks.
 */

const OP_SETLK = 32
const OP_SETLKW = 33
const OP_RELEASE = 18
const OP_FLUSH = 25
const F_UNLCK = 2
const FUSE_LK_FLOCK = 1
const FUSE_RELEASE_FLOCK_UNLOCK = 1
const OFFSET_MAX = 0x7fffffffffffffffn
const HEADER = 32
const HANDLE_HEADER = 16
/** Lock operations kept per owner and file before the oldest are folded away (never the last). */
const MAX_OPS = 1_000

/** Where a request's body starts, and the key of the file (handle[0]) it names. */
function bodyOf(b: Buffer): { key: string; at: number } | undefined {
  if (b.length < HEADER + HANDLE_HEADER || b[18]! < 1) return undefined
  const at = HEADER + ((b.readUInt16LE(16) * 4 + 7) & ~7)
  const end = at + HANDLE_HEADER + ((b.readUInt32LE(at + 12) + 7) & ~7)
  if (end > b.length) return undefined
  return { key: b.subarray(at, end).toString('hex'), at: end }
}

export class HeldLocks {
  /** By `${file}/${owner}/${posix|flock}`: the granted operations, oldest first. */
  readonly #ops = new Map<string, Buffer[]>()

  get size(): number {
    return this.#ops.size
  }

  /** A request the server answered with success. */
  settled(opcode: number, request: Uint8Array): void {
    const b = Buffer.from(request.buffer, request.byteOffset, request.byteLength)
    const at = bodyOf(b)
    if (!at) return
    if (opcode === OP_SETLK || opcode === OP_SETLKW) {
      if (b.length < at.at + 44) return
      const owner = b.readBigUInt64LE(at.at + 8)
      const start = b.readBigUInt64LE(at.at + 16)
      const end = b.readBigUInt64LE(at.at + 24)
      const type = b.readUInt32LE(at.at + 32)
      const flock = (b.readUInt32LE(at.at + 40) & FUSE_LK_FLOCK) !== 0
      const key = `${at.key}/${owner}/${flock ? 'flock' : 'posix'}`
      if (type === F_UNLCK && (flock || (start === 0n && end >= OFFSET_MAX))) {
        this.#ops.delete(key)
        return
      }
      const ops = this.#ops.get(key) ?? []
      ops.push(Buffer.from(b))
      if (ops.length > MAX_OPS) ops.splice(0, ops.length - MAX_OPS)
      this.#ops.set(key, ops)
    } else if (opcode === OP_FLUSH && b.length >= at.at + 24) {
      this.#ops.delete(`${at.key}/${b.readBigUInt64LE(at.at + 16)}/posix`)
    } else if (opcode === OP_RELEASE && b.length >= at.at + 24) {
      if ((b.readUInt32LE(at.at + 12) & FUSE_RELEASE_FLOCK_UNLOCK) !== 0) this.#ops.delete(`${at.key}/${b.readBigUInt64LE(at.at + 16)}/flock`)
    }
  }

  /** The operations to send a new server, in order, each as a non-blocking SETLK. */
  toReclaim(): Buffer[] {
    const out: Buffer[] = []
    for (const ops of this.#ops.values()) {
      for (const op of ops) {
        const copy = Buffer.from(op)
        copy.writeUInt32LE(OP_SETLK, 0)
        out.push(copy)
      }
    }
    return out
  }
}
