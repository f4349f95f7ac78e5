/**
 * The replica protocol, spoken between a coordinator (ReplicaClient) and the node that
 * holds a copy (ReplicaService). The frames themselves are the transport's
 * (src/replication/frames.ts: their shapes and validation); this file is the only place
 * that builds replica requests, decodes replica replies and turns a peer's refusal into
 * this node's error type.
 *
 * Requests and what their ack carries:
 *   create {vol, size}                 -> nothing      make an empty replica (the kvdb must list this node, and grant the peer it: grants.ts)
 *   open   {vol, epoch, size}          -> epoch (8 B)  accept a coordinator; replies the epoch it was at before
 *   write  {vol, epoch, seq, offset, data} -> nothing
 *   discard {vol, epoch, seq, offset, length} -> nothing  the range reads as zeros (its space goes back)
 *   read   {vol, epoch, offset, length} -> the bytes
 *   digest {vol, epoch, offset, length} -> the stored crc32c of each block (scrub)
 *   hashes {vol, epoch, offset, length} -> a hash of each block's data (resync compares them)
 *   flush  {vol, epoch}                -> nothing
 *   close  {vol, epoch}                -> nothing      the coordinator lets go (a flush)
 *   drop   {vol}                       -> nothing      delete a replica (or a snapshot's layer) the kvdb no longer lists here (granted, as create)
 *   snapshot {vol, epoch, snap}        -> nothing      freeze the contents as snapshot layer `snap` (writes held and flushed first)
 *   restore {vol, epoch, snap}         -> nothing      the contents become snapshot `snap`'s
 *   clone  {vol, size, snap}           -> nothing      make the replica of new volume `vol` as a clone of snapshot `snap` (granted, as create)
 */
import { isErrorCode, isPxdError, PxdError, type ErrorCode } from '../errors'
import type { OutgoingRequest, RequestOptions } from '../replication'

/** What a replica client needs of a peer link: one request, one acknowledgement. */
export interface PeerChannel {
  request(req: OutgoingRequest, opts?: RequestOptions): Promise<Uint8Array | undefined>
}

/** The requests of one volume at one epoch, as frames. */
export const requests = {
  create: (vol: string, size: number): OutgoingRequest => ({ t: 'create', vol, size }),
  open: (vol: string, epoch: number, size: number): OutgoingRequest => ({ t: 'open', vol, epoch, size }),
  write: (vol: string, epoch: number, seq: number, offset: number, data: Uint8Array): OutgoingRequest => ({ t: 'write', vol, epoch, seq, offset, data }),
  discard: (vol: string, epoch: number, seq: number, offset: number, length: number): OutgoingRequest => ({ t: 'discard', vol, epoch, seq, offset, length }),
  read: (vol: string, epoch: number, offset: number, length: number): OutgoingRequest => ({ t: 'read', vol, epoch, offset, length }),
  digest: (vol: string, epoch: number, offset: number, length: number): OutgoingRequest => ({ t: 'digest', vol, epoch, offset, length }),
  hashes: (vol: string, epoch: number, offset: number, length: number): OutgoingRequest => ({ t: 'hashes', vol, epoch, offset, length }),
  flush: (vol: string, epoch: number): OutgoingRequest => ({ t: 'flush', vol, epoch }),
  close: (vol: string, epoch: number): OutgoingRequest => ({ t: 'close', vol, epoch }),
  drop: (vol: string): OutgoingRequest => ({ t: 'drop', vol }),
  snapshot: (vol: string, epoch: number, snap: string): OutgoingRequest => ({ t: 'snapshot', vol, epoch, snap }),
  restore: (vol: string, epoch: number, snap: string): OutgoingRequest => ({ t: 'restore', vol, epoch, snap }),
  clone: (vol: string, size: number, snap: string): OutgoingRequest => ({ t: 'clone', vol, size, snap }),
} as const

const EPOCH_BYTES = 8

/** The previous epoch, as the `open` ack carries it: 8 bytes, big-endian. */
export function encodeEpoch(epoch: number): Buffer {
  const b = Buffer.alloc(EPOCH_BYTES)
  b.writeBigUInt64BE(BigInt(epoch))
  return b
}

/** -1 when the ack carries no epoch. */
export function decodeEpoch(data: Uint8Array | undefined): number {
  if (!data || data.length !== EPOCH_BYTES) return -1
  return Number(Buffer.from(data.buffer, data.byteOffset, EPOCH_BYTES).readBigUInt64BE())
}

/**
 * A failed replica request, as the coordinator sees it. The peer's own code is kept when
 * it is one of ours (STALE_EPOCH must stay STALE_EPOCH, CHECKSUM_MISMATCH keeps its
 * block); anything else means the replica cannot be reached.
 */
export function replicaRequestError(nodeId: string, what: string, err: unknown): PxdError {
  const code: ErrorCode = isPxdError(err) || isErrorCode((err as { code?: unknown }).code)
    ? ((err as { code: ErrorCode }).code)
    : 'PEER_UNAVAILABLE'
  const block = (err as { block?: unknown }).block
  return new PxdError(code, `replica on node ${nodeId}: ${what} failed: ${err instanceof Error ? err.message : String(err)}`, {
    cause: err,
    peer: nodeId,
    ...(typeof block === 'number' ? { block } : {}),
  })
}
