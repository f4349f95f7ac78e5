/**
 * What JavaScript needs to know of the file-operation wire format (native/share_wire.h):
 * the opcode of a request, whether a reply says "would block", and which operations may be
 * applied twice without harm. The bytes themselves are built and read in the addon.
 */

/** FUSE opcodes pxd's shares treat specially (linux/fuse.h). */
export const Op = {
  SYMLINK: 6, MKNOD: 8, MKDIR: 9, UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13,
  RELEASE: 18, WRITE: 16, FSYNC: 20, SETXATTR: 21, REMOVEXATTR: 24, FLUSH: 25, SETLK: 32, SETLKW: 33, CREATE: 35, RENAME2: 45,
  /** native/share_wire.h kOpRoot: the root directory's handle and attributes. */
  ROOT: 0x10001,
} as const

const CHANGES_NAMESPACE: ReadonlySet<number> = new Set([
  Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.LINK, Op.CREATE, Op.RENAME2, Op.SETXATTR, Op.REMOVEXATTR,
])

/** The open flag a write's fh carries for a file opened to append. */
export const O_APPEND = 0o2000

/**
 * Requests that must not run twice: a create, link, rename or unlink applied once and
 * sent again would fail (EEXIST, ENOENT) or do something else, and a write to a file
 * opened O_APPEND would land twice. A server answers a repeat from its reply cache; a new
 * server, or one that restarted without its cache, never sees one (the client fails it
 * instead).
 */
export function appliesOnce(request: Uint8Array): boolean {
  const opcode = opcodeOf(request)
  if (CHANGES_NAMESPACE.has(opcode)) return true
  if (opcode !== Op.WRITE) return false
  // The fh the write's body starts with carries the file's open flags.
  const first = firstHandle(request)
  return first !== undefined && first.b[18] === 1 && first.end + 8 <= first.b.length && (first.b.readBigUInt64LE(first.end) & BigInt(O_APPEND)) !== 0n
}

export const WIRE_REQUEST_BYTES = 32
export const WIRE_REPLY_BYTES = 16
const HANDLE_HEADER_BYTES = 16
const REPLY_WOULD_BLOCK = 1

export function opcodeOf(request: Uint8Array): number {
  if (request.length < WIRE_REQUEST_BYTES) return 0
  return new DataView(request.buffer, request.byteOffset, request.byteLength).getUint32(0, true)
}

/** A SETLKW reply that says: not now, ask again. */
export function wouldBlock(reply: Uint8Array): boolean {
  return reply.length >= WIRE_REPLY_BYTES && (reply[9]! & REPLY_WOULD_BLOCK) !== 0
}

/** A reply with no body: -errno. */
export function errorReply(errno: number): Buffer {
  const out = Buffer.alloc(WIRE_REPLY_BYTES)
  out.writeInt32LE(-Math.abs(errno), 0)
  return out
}

/** The error of a reply (0 or -errno). */
export function replyError(reply: Uint8Array): number {
  if (reply.length < WIRE_REPLY_BYTES) return -5
  return new DataView(reply.buffer, reply.byteOffset, reply.byteLength).getInt32(0, true)
}

/**
 * handle[0] of a wire request (WireHandle header, bytes and padding, as sent), as a key,
 * and the offset of what follows it: the body, for the one-handle requests this is used on.
 */
export function firstHandle(request: Uint8Array): { key: string; handle: Buffer; end: number; b: Buffer } | undefined {
  const b = Buffer.from(request.buffer, request.byteOffset, request.byteLength)
  if (b.length < WIRE_REQUEST_BYTES + HANDLE_HEADER_BYTES || b[18]! < 1) return undefined
  const at = WIRE_REQUEST_BYTES + ((b.readUInt16LE(16) * 4 + 7) & ~7)
  if (at + HANDLE_HEADER_BYTES > b.length) return undefined
  const end = at + HANDLE_HEADER_BYTES + ((b.readUInt32LE(at + 12) + 7) & ~7)
  if (end > b.length) return undefined
  const handle = b.subarray(at, end)
  return { key: handle.toString('hex'), handle, end, b }
}
