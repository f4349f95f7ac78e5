/**
 * Scrub reads every block of every in-sync replica and checks it against its crc32c, a
 * chunk at a time; a chunk that fails is gone through block by block, and each bad block
 * is rewritten from a replica where it is good (see repair.ts). A block whose stored crc is
 * 0 was never written (or holds zeros) and is not counted as checked, but it is read all
 * the same (chunks never written are holes: cheap to read): one whose bytes are not all
 * zero is a torn write, which the store reports as a checksum mismatch, and is bad.
 * `bytesPerSecond` paces it; it stops when aborted or when the engine closes.
 */
import { BLOCK_SIZE } from '../constants'
import { isPxdError, pxdError } from '../errors'
import type { Replica } from '../replicas/replica'
import type { EngineCore } from './core'
import { blocksIn, countWritten, isUnwritten } from './digest'
import { repair } from './repair'

/** Scrub reads this much of a replica at a time. */
export const SCRUB_CHUNK_BYTES = 1024 * 1024

export interface ScrubResult {
  checkedBlocks: number
  badBlocks: number
  repairedBlocks: number
  unrecoverableBlocks: number
}

export interface ScrubOptions {
  bytesPerSecond?: number
  signal?: AbortSignal
}

export async function scrub(core: EngineCore, options: ScrubOptions): Promise<ScrubResult> {
  const result: ScrubResult = { checkedBlocks: 0, badBlocks: 0, repairedBlocks: 0, unrecoverableBlocks: 0 }
  const started = Date.now()
  let bytes = 0
  for (const replica of [...core.members.inSync]) {
    for (let offset = 0; offset < core.size; offset += SCRUB_CHUNK_BYTES) {
      if (options.signal?.aborted || core.closing) return result
      const length = Math.min(SCRUB_CHUNK_BYTES, core.size - offset)
      const digest = await replica.digest(offset, length)
      const written = countWritten(digest)
      const buf = Buffer.allocUnsafe(length)
      try {
        await replica.read(offset, buf)
        result.checkedBlocks += written
      } catch (err) {
        if (!isPxdError(err, 'CHECKSUM_MISMATCH')) throw err
        await scrubBlocks(core, replica, offset, length, digest, result)
      }
      bytes += length
      if (options.bytesPerSecond) {
        const due = started + (bytes / options.bytesPerSecond) * 1000
        if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()))
      }
    }
  }
  return result
}

/** Block by block through a chunk that failed: find each bad block and repair it if another replica has it right. */
async function scrubBlocks(core: EngineCore, replica: Replica, offset: number, length: number, digest: Uint8Array, result: ScrubResult): Promise<void> {
  const one = Buffer.allocUnsafe(BLOCK_SIZE)
  for (let block = 0; block < blocksIn(length); block++) {
    const at = offset + block * BLOCK_SIZE
    const unwritten = isUnwritten(digest, block)
    if (!unwritten) result.checkedBlocks++
    try {
      await replica.read(at, one)
      continue
    } catch (err) {
      if (!isPxdError(err, 'CHECKSUM_MISMATCH')) throw err
    }
    // A crc of 0 over bytes that are not all zero: a torn write.
    if (unwritten) result.checkedBlocks++
    result.badBlocks++
    core.events?.checksumFailure()
    if (core.members.inSync.length < 2) {
      result.unrecoverableBlocks++
      core.onRepair?.(replica.nodeId, at, BLOCK_SIZE, pxdError('CHECKSUM_MISMATCH', 'no other replica to repair from'))
      continue
    }
    if (await repair(core, replica, at, BLOCK_SIZE)) result.repairedBlocks++
    else result.unrecoverableBlocks++
  }
}
