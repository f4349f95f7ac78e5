/**
 * Reading digests (a replica's stored crc32c of each block in a range, CHECKSUM_BYTES
 * each; a crc of 0 marks a block never written, or all zeros) and hashes (HASH_BYTES per
 * block, what replicas compare); see src/constants.ts.
 */
import { BLOCK_SIZE, CHECKSUM_BYTES, HASH_BYTES } from '../constants'

/** Whether the block's stored crc is 0: never written, or zeros. */
export function isUnwritten(digest: Uint8Array, block: number): boolean {
  const at = block * CHECKSUM_BYTES
  for (let i = at; i < at + CHECKSUM_BYTES; i++) if (digest[i] !== 0) return false
  return true
}

/** Whether two replicas' hashes (Replica.hashes) of the same range hold the same hash for the block. */
export function sameHash(a: Uint8Array, b: Uint8Array, block: number): boolean {
  const at = block * HASH_BYTES
  for (let i = at; i < at + HASH_BYTES; i++) if (a[i] !== b[i]) return false
  return true
}

/** How many blocks of the digest were written. */
export function countWritten(digest: Uint8Array): number {
  let n = 0
  for (let block = 0; block * CHECKSUM_BYTES < digest.length; block++) if (!isUnwritten(digest, block)) n++
  return n
}

/** How many blocks a range of `length` bytes touches. */
export function blocksIn(length: number): number {
  return Math.ceil(length / BLOCK_SIZE)
}

/** `[offset, length]` pieces of at most `step` bytes covering `size` bytes. */
export function chunks(size: number, step: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let offset = 0; offset < size; offset += step) out.push([offset, Math.min(step, size - offset)])
  return out
}
