/**
 * The peer wire format: one msgpack map per WebSocket binary message, a discriminated
 * union on `t`. Data travels as msgpack bin and decodes as a Buffer that shares the
 * received message (no copy).
 *
 * Every frame is checked field by field against the schema table below before anyone
 * sees it; a frame with a missing, extra or ill-typed field is refused. Adding a request
 * kind (resync, checksum map) means adding its interface, its schema row and, if it
 * carries bulk data, its payload size in `payloadBytes`: the transport passes every
 * frame whose kind is in `REQUEST_TYPES` to the request handler without knowing it.
 */
import { Packr, Unpackr } from 'msgpackr'
import { BLOCK_SIZE, CHECKSUM_BYTES, HASH_BYTES, MAX_IO_BYTES, NODE_ID_PATTERN } from '../constants'
import { pxdError } from '../errors'
import { replicationError } from './errors'
import { MAX_VERSION_CHARS, VERSION_RE } from './protocol'

/**
 * The `v` of hello and challenge: the layout of the handshake frames, 1 on every release so
 * far. Which protocol the frames after the handshake follow, the two ends settle on in the
 * handshake (protocol.ts).
 */
export const PROTOCOL_VERSION = 1
/** The HTTP path a peer link's WebSocket upgrade asks for. */
export const PEER_PATH = '/pxd/peer'
/** Largest write payload or read result. */
export const MAX_DATA_BYTES = MAX_IO_BYTES
/**
 * Largest shared-volume file operation or its reply (native/share_wire.h kMaxMessageBytes):
 * a 1 MiB READ or WRITE with its headers and handles.
 */
export const MAX_FSOP_BYTES = MAX_DATA_BYTES + 4096
/** Largest WebSocket message: the data (or a file operation) plus room for the other fields. */
export const MAX_FRAME_BYTES = MAX_DATA_BYTES + 16 * 1024
/** Largest message accepted before the handshake completes (handshake frames are ~150 bytes). */
export const MAX_HANDSHAKE_FRAME_BYTES = 1024
export const NONCE_BYTES = 32
export const PROOF_BYTES = 32
export const MAX_MESSAGE_CHARS = 4096

/** A volume id names a directory on the peer: "." and ".." would name its parents. */
const VOLUME_RE = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,128}$/
/** A cluster id (it prefixes the cluster's keys in etcd): up to 128 characters, wider than a node id. */
const CLUSTER_ID_RE = /^[A-Za-z0-9_.:@-]{1,128}$/
/** An error code as a frame carries it: ours, or any other a peer's handler raised. */
export const CODE_RE = /^[A-Z][A-Z0-9_]{0,63}$/

// Handshake. The offer fields (protocol.ts) are absent in frames of releases before them.
/** The offer of one side: its software version and the peer protocols it speaks. */
interface OfferFields { version?: string; protoMin?: number; protoMax?: number }
export interface HelloFrame extends OfferFields { t: 'hello'; v: number; nodeId: string; clusterId: string; nonce: Uint8Array }
/** `proto`: the protocol the server chose, when the hello carried a range. */
export interface ChallengeFrame extends OfferFields { t: 'challenge'; v: number; nodeId: string; nonce: Uint8Array; proof: Uint8Array; proto?: number }
export interface AuthFrame { t: 'auth'; proof: Uint8Array }
export interface ReadyFrame { t: 'ready' }

// Requests (client -> server, after ready)
export interface CreateFrame { t: 'create'; id: number; vol: string; size: number }
export interface OpenFrame { t: 'open'; id: number; vol: string; epoch: number; size: number }
export interface WriteFrame { t: 'write'; id: number; vol: string; epoch: number; seq: number; offset: number; data: Uint8Array }
/** [offset, offset+length) reads back as zeros from now on (a discard); numbered like a write. */
export interface DiscardFrame { t: 'discard'; id: number; vol: string; epoch: number; seq: number; offset: number; length: number }
export interface ReadFrame { t: 'read'; id: number; vol: string; epoch: number; offset: number; length: number }
/** The stored crc32c of every block (BLOCK_SIZE) in [offset, offset+length): scrub counts written blocks by them. */
export interface DigestFrame { t: 'digest'; id: number; vol: string; epoch: number; offset: number; length: number }
/** A hash (HASH_BYTES) of every block's data in [offset, offset+length): resync compares them. */
export interface HashesFrame { t: 'hashes'; id: number; vol: string; epoch: number; offset: number; length: number }
export interface FlushFrame { t: 'flush'; id: number; vol: string; epoch: number }
export interface CloseFrame { t: 'close'; id: number; vol: string; epoch: number }
export interface DropFrame { t: 'drop'; id: number; vol: string }
/** Freeze the replica's contents as snapshot layer `snap` (the coordinator holds and flushes its writes first). */
export interface SnapshotFrame { t: 'snapshot'; id: number; vol: string; epoch: number; snap: string }
/** Make this node's replica of new volume `vol` (`size` bytes) as a clone of snapshot `snap`. */
export interface CloneFrame { t: 'clone'; id: number; vol: string; size: number; snap: string }
/** The replica's contents become snapshot `snap`'s. */
export interface RestoreFrame { t: 'restore'; id: number; vol: string; epoch: number; snap: string }
/**
 * A file operation on a shared volume, from a client node to the node serving it: `data` is
 * a wire request of native/share_wire.h, the ack's data its wire reply. `xid` names the
 * operation: sent again (after a lost link) it keeps its xid, so the server answers a
 * repeat of an operation it applied from its reply cache instead of applying it twice.
 * `reclaim`: a lock the client held from the previous server (share-export.ts grace).
 */
export interface FsOpFrame { t: 'fsop'; id: number; vol: string; xid: number; data: Uint8Array; reclaim?: true }
/** The client stopped waiting for operation `xid` (the kernel interrupted a blocking lock). */
export interface FsCancelFrame { t: 'fscancel'; id: number; vol: string; xid: number }

// Replies and link control
export interface AckOkFrame { t: 'ack'; id: number; ok: true; data?: Uint8Array }
/** `block`: the block (BLOCK_SIZE, from the start of the volume) the failure names, e.g. a CHECKSUM_MISMATCH's. */
export interface AckErrorFrame { t: 'ack'; id: number; ok: false; code: string; message: string; block?: number }
export interface ErrorFrame { t: 'error'; code: string; message: string }
export interface PingFrame { t: 'ping'; id: number; sent: number }
export interface PongFrame { t: 'pong'; id: number; sent: number }

export type HandshakeFrame = HelloFrame | ChallengeFrame | AuthFrame | ReadyFrame
export type RequestFrame = CreateFrame | OpenFrame | DigestFrame | HashesFrame | WriteFrame | DiscardFrame | ReadFrame | FlushFrame | CloseFrame | DropFrame | SnapshotFrame | RestoreFrame | CloneFrame | FsOpFrame | FsCancelFrame
export type AckFrame = AckOkFrame | AckErrorFrame
export type Frame = HandshakeFrame | RequestFrame | AckFrame | ErrorFrame | PingFrame | PongFrame
export type FrameType = Frame['t']
export type RequestType = RequestFrame['t']

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never
/** A request as a caller gives it to a link: the link assigns the id. */
export type OutgoingRequest = DistributiveOmit<RequestFrame, 'id'>

type Check = (value: unknown) => boolean
interface FieldSpec { readonly name: string; readonly check: Check; readonly expect: string; readonly optional?: true }

const isPositiveId: Check = (v) => Number.isSafeInteger(v) && (v as number) > 0
const isUint: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0
const isVolume: Check = (v) => typeof v === 'string' && VOLUME_RE.test(v)
const isNodeId: Check = (v) => typeof v === 'string' && NODE_ID_PATTERN.test(v)
const isClusterId: Check = (v) => typeof v === 'string' && CLUSTER_ID_RE.test(v)
const isBytes32: Check = (v) => v instanceof Uint8Array && v.length === 32
const isData: Check = (v) => v instanceof Uint8Array && v.length <= MAX_DATA_BYTES
const isFsOp: Check = (v) => v instanceof Uint8Array && v.length <= MAX_FSOP_BYTES
const isLength: Check = (v) => isUint(v) && (v as number) <= MAX_DATA_BYTES
/** One checksum per block, so one reply covers at most MAX_DATA_BYTES / CHECKSUM_BYTES blocks (1 GiB) of volume. */
export const MAX_DIGEST_RANGE = (MAX_DATA_BYTES / CHECKSUM_BYTES) * BLOCK_SIZE
const isDigestLength: Check = (v) => isUint(v) && (v as number) % BLOCK_SIZE === 0 && (v as number) <= MAX_DIGEST_RANGE
/** One hash per block: one reply covers at most MAX_DATA_BYTES / HASH_BYTES blocks (512 MiB) of volume. */
export const MAX_HASH_RANGE = (MAX_DATA_BYTES / HASH_BYTES) * BLOCK_SIZE
const isHashLength: Check = (v) => isUint(v) && (v as number) % BLOCK_SIZE === 0 && (v as number) <= MAX_HASH_RANGE
const isCode: Check = (v) => typeof v === 'string' && CODE_RE.test(v)
const isMessage: Check = (v) => typeof v === 'string' && v.length <= MAX_MESSAGE_CHARS
const isTime: Check = (v) => typeof v === 'number' && Number.isFinite(v) && v >= 0
const isTrue: Check = (v) => v === true
const isFalse: Check = (v) => v === false
const isVersion: Check = (v) => v === PROTOCOL_VERSION

const f = (name: string, check: Check, expect: string, optional?: true): FieldSpec =>
  optional ? { name, check, expect, optional } : { name, check, expect }

const ID = f('id', isPositiveId, 'a positive safe integer')
const VOL = f('vol', isVolume, 'a volume id of 1-128 characters [A-Za-z0-9_.-], not "." or ".."')
const SNAP = f('snap', isVolume, 'a snapshot id of 1-128 characters [A-Za-z0-9_.-], not "." or ".."')
const EPOCH = f('epoch', isUint, 'a non-negative safe integer')
const OFFSET = f('offset', isUint, 'a non-negative safe integer')
const VERSION = f('v', isVersion, `protocol version ${PROTOCOL_VERSION}`)
const NODE_ID = f('nodeId', isNodeId, 'a node id of 1-64 characters [A-Za-z0-9_.-]')
const NONCE = f('nonce', isBytes32, `${NONCE_BYTES} bytes`)
const PROOF = f('proof', isBytes32, `${PROOF_BYTES} bytes`)
const CODE = f('code', isCode, 'an error code [A-Z][A-Z0-9_]{0,63}')
const MESSAGE = f('message', isMessage, `a string of at most ${MAX_MESSAGE_CHARS} characters`)
const SENT = f('sent', isTime, 'a non-negative finite number')
const isSoftware: Check = (v) => typeof v === 'string' && VERSION_RE.test(v)
const isProtocol: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 1
const OFFER = [
  f('version', isSoftware, `a software version of 1-${MAX_VERSION_CHARS} printable characters`, true),
  f('protoMin', isProtocol, 'a positive safe integer', true),
  f('protoMax', isProtocol, 'a positive safe integer', true),
]

const REQUEST_SCHEMAS = {
  create: [ID, VOL, f('size', isUint, 'a non-negative safe integer')],
  open: [ID, VOL, EPOCH, f('size', isUint, 'a non-negative safe integer')],
  write: [ID, VOL, EPOCH, f('seq', isUint, 'a non-negative safe integer'), OFFSET, f('data', isData, `bytes, at most ${MAX_DATA_BYTES}`)],
  discard: [ID, VOL, EPOCH, f('seq', isUint, 'a non-negative safe integer'), OFFSET, f('length', isUint, 'a non-negative safe integer')],
  read: [ID, VOL, EPOCH, OFFSET, f('length', isLength, `a non-negative safe integer of at most ${MAX_DATA_BYTES}`)],
  digest: [ID, VOL, EPOCH, OFFSET, f('length', isDigestLength, `a multiple of ${BLOCK_SIZE} of at most ${MAX_DIGEST_RANGE}`)],
  hashes: [ID, VOL, EPOCH, OFFSET, f('length', isHashLength, `a multiple of ${BLOCK_SIZE} of at most ${MAX_HASH_RANGE}`)],
  flush: [ID, VOL, EPOCH],
  close: [ID, VOL, EPOCH],
  drop: [ID, VOL],
  snapshot: [ID, VOL, EPOCH, SNAP],
  restore: [ID, VOL, EPOCH, SNAP],
  clone: [ID, VOL, f('size', isUint, 'a non-negative safe integer'), SNAP],
  fsop: [ID, VOL, f('xid', isPositiveId, 'a positive safe integer'), f('data', isFsOp, `bytes, at most ${MAX_FSOP_BYTES}`), f('reclaim', isTrue, 'true', true)],
  fscancel: [ID, VOL, f('xid', isPositiveId, 'a positive safe integer')],
} as const satisfies Record<RequestType, readonly FieldSpec[]>

const ACK_OK = [ID, f('ok', isTrue, 'true'), f('data', isFsOp, `bytes, at most ${MAX_FSOP_BYTES}`, true)]
const ACK_ERROR = [ID, f('ok', isFalse, 'false'), CODE, MESSAGE, f('block', isUint, 'a non-negative safe integer', true)]

const SCHEMAS: Record<Exclude<FrameType, 'ack'>, readonly FieldSpec[]> = {
  hello: [VERSION, NODE_ID, f('clusterId', isClusterId, 'a cluster id of 1-128 characters [A-Za-z0-9_.:@-]'), NONCE, ...OFFER],
  challenge: [VERSION, NODE_ID, NONCE, PROOF, ...OFFER, f('proto', isProtocol, 'a positive safe integer', true)],
  auth: [PROOF],
  ready: [],
  ...REQUEST_SCHEMAS,
  error: [CODE, MESSAGE],
  ping: [ID, SENT],
  pong: [ID, SENT],
}

/** Frame kinds the server hands to its request handler. */
export const REQUEST_TYPES: ReadonlySet<string> = new Set(Object.keys(REQUEST_SCHEMAS))

export function isRequest(frame: Frame): frame is RequestFrame {
  return REQUEST_TYPES.has(frame.t)
}

/** Bytes a request makes the two ends hold until its ack: the data written or read. */
export function payloadBytes(req: RequestFrame | OutgoingRequest): number {
  switch (req.t) {
    case 'write': return req.data.length
    case 'fsop': return req.data.length
    case 'read': return req.length
    case 'digest': return req.length / BLOCK_SIZE * CHECKSUM_BYTES
    case 'hashes': return req.length / BLOCK_SIZE * HASH_BYTES
    default: return 0
  }
}

const badFrame = (message: string) => replicationError('BAD_FRAME', message)

/** Checks that a value is a frame of the protocol; throws BAD_FRAME / UNSUPPORTED_VERSION. */
export function validateFrame(value: unknown): Frame {
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== Object.prototype) {
    throw badFrame('frame is not a map')
  }
  const o = value as Record<string, unknown>
  const t = o['t']
  if (typeof t !== 'string') throw badFrame('frame has no type')
  let schema: readonly FieldSpec[] | undefined
  if (t === 'ack') schema = o['ok'] === false ? ACK_ERROR : ACK_OK
  else if (Object.prototype.hasOwnProperty.call(SCHEMAS, t)) schema = SCHEMAS[t as keyof typeof SCHEMAS]
  if (schema === undefined) throw badFrame(`unknown frame type ${JSON.stringify(t.slice(0, 32))}`)
  // A newer peer's handshake is refused as such, whatever its other fields look like.
  if ('v' in o && o['v'] !== PROTOCOL_VERSION && schema[0] === VERSION) {
    throw replicationError('UNSUPPORTED_VERSION', `${t} frame of protocol version ${String(o['v']).slice(0, 16)}, this node speaks ${PROTOCOL_VERSION}`)
  }
  let present = 1
  for (const spec of schema) {
    const v = o[spec.name]
    if (v === undefined && spec.optional) continue
    if (!spec.check(v)) throw badFrame(`${t} frame: ${spec.name} must be ${spec.expect}`)
    present++
  }
  let keys = 0
  for (const _ in o) keys++
  if (keys !== present) throw badFrame(`${t} frame has ${keys - present} unexpected field(s)`)
  return o as unknown as Frame
}

const packr = new Packr({ useRecords: false, moreTypes: false })
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, structuredClone: false })

/** One frame as one message, bin fields copied into msgpackr's output buffer: for small frames. */
export function encodeFrame(frame: Frame): Buffer {
  return packr.pack(frame)
}

/** Payloads at least this large are sent where they lie instead of being packed. */
const SPLIT_BYTES = 4096
const EMPTY = new Uint8Array(0)

/**
 * The same bytes as encodeFrame, in two parts when the frame carries a large `data`: the
 * msgpack of every other field with `data` last, ending in the bin header, then the
 * payload itself, which is not copied (the caller sends both parts as one message).
 */
export function encodeFrameParts(frame: Frame): [Buffer] | [Buffer, Uint8Array] {
  const data = (frame as { data?: Uint8Array }).data
  if (data === undefined || data.length < SPLIT_BYTES) return [packr.pack(frame)]
  const rest: Record<string, unknown> = { ...frame }
  delete rest.data
  rest.data = EMPTY // now the last key: the encoding ends with its bin8 of length 0
  const packed = packr.pack(rest)
  const n = packed.length - 2
  if (packed[n] !== 0xc4 || packed[n + 1] !== 0) throw pxdError('INTERNAL', 'msgpack encoder did not put data last')
  // The bin header msgpack itself would use (data.length >= SPLIT_BYTES > 255).
  const wide = data.length > 0xffff
  const head = Buffer.allocUnsafe(n + (wide ? 5 : 3))
  packed.copy(head, 0, 0, n)
  if (wide) {
    head[n] = 0xc6 // bin32
    head.writeUInt32BE(data.length, n + 1)
  } else {
    head[n] = 0xc5 // bin16
    head.writeUInt16BE(data.length, n + 1)
  }
  return [head, data]
}

/** What sendFrame needs of a WebSocket (ws): fragments of one message, sent in order. */
export interface FrameSocket { send(data: Uint8Array, options: { binary: boolean; fin: boolean }): void }

/** Sends one frame as one WebSocket message; a large payload goes as its own fragment, uncopied. */
export function sendFrame(ws: FrameSocket, frame: Frame): void {
  const parts = encodeFrameParts(frame)
  if (parts.length === 1) return ws.send(parts[0], WHOLE)
  ws.send(parts[0], FIRST)
  ws.send(parts[1], WHOLE)
}

const WHOLE = { binary: true, fin: true }
const FIRST = { binary: true, fin: false }

/** Decodes and validates one message. Bin fields of the result share `buf`. */
export function decodeFrame(buf: Uint8Array): Frame {
  if (buf.length > MAX_FRAME_BYTES) throw replicationError('FRAME_TOO_LARGE', `frame of ${buf.length} bytes, the limit is ${MAX_FRAME_BYTES}`)
  let value: unknown
  try {
    value = unpackr.unpack(buf)
  } catch (err) {
    throw replicationError('BAD_FRAME', `frame does not decode as msgpack: ${err instanceof Error ? err.message : String(err)}`, err)
  }
  return validateFrame(value)
}
