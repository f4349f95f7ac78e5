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

import { firstHandle, Op } from './wire'

const F_UNLCK = 2
const FUSE_LK_FLOCK = 1
const FUSE_RELEASE_FLOCK_UNLOCK = 1
const OFFSET_MAX = 0x7fffffffffffffffn
/** Lock operations kept per owner and file before the oldest are folded away (never the last). */
const MAX_OPS = 1_000

export class HeldLocks {
  /** By `${file}/${owner}/${posix|flock}`: the granted operations, oldest first. */
  readonly #ops = new Map<string, Buffer[]>()

  get size(): number {
    return this.#ops.size
  }

  /** A request the server answered with success. */
  settled(opcode: number, request: Uint8Array): void {
    const first = firstHandle(request)
    if (!first) return
    const { b } = first
    const at = { key: first.key, at: first.end }
    if (opcode === Op.SETLK || opcode === Op.SETLKW) {
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
    } else if (opcode === Op.FLUSH && b.length >= at.at + 24) {
      this.#ops.delete(`${at.key}/${b.readBigUInt64LE(at.at + 16)}/posix`)
    } else if (opcode === Op.RELEASE && b.length >= at.at + 24) {
      if ((b.readUInt32LE(at.at + 12) & FUSE_RELEASE_FLOCK_UNLOCK) !== 0) this.#ops.delete(`${at.key}/${b.readBigUInt64LE(at.at + 16)}/flock`)
    }
  }

  /** Every granted operation as it was sent, for a successor (a live restart): `restore` takes them back. */
  saved(): Buffer[] {
    return [...this.#ops.values()].flat()
  }

  restore(ops: readonly Buffer[]): void {
    for (const op of ops) this.settled(Op.SETLK, op)
  }

  /** The operations to send a new server, in order, each as a non-blocking SETLK. */
  toReclaim(): Buffer[] {
    const out: Buffer[] = []
    for (const ops of this.#ops.values()) {
      for (const op of ops) {
        const copy = Buffer.from(op)
        copy.writeUInt32LE(Op.SETLK, 0)
        out.push(copy)
      }
    }
    return out
  }
}
